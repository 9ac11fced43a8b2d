"""Runs Optuna's samplers on the same problems, noise and protocol as the tuner's Rust benchmark
(benches/strategies.rs), then prints both side by side with a summary per kind of problem.

Usage (scripts/bench-tuner does this): python optuna_compare.py OURS.json [--gp] [--cache DIR]

Samplers: TPE (defaults; constant liar when trials run in parallel, as Optuna recommends for
batches), random, and with --gp Optuna's GP sampler (needs torch; slow: about 5 s a run). Results
of a sampler (every seed's regret) are cached per problem in DIR (they do not change unless Optuna
does). Each cell is compared by medians and by a Mann-Whitney U test of the two sets of regrets.
"""
import json
import math
import os
import statistics
import sys
import time

import optuna
from scipy.stats import mannwhitneyu

optuna.logging.set_verbosity(optuna.logging.WARNING)
SEEDS, TRIALS, CHECKPOINTS = 40, 50, (10, 25, 50)
# Ten trials again over many more seeds: there TPE is still in its random start and ours mostly in
# its design, both near random search, and a median over 40 seeds changes side with the seeds drawn.
WIDE_SEEDS, WIDE_TRIALS = 400, 10
SIGNIFICANCE = 0.05
PI = math.pi


def xs(t, bounds):
    return [t.suggest_float(f"x{i + 1:02}", lo, hi) for i, (lo, hi) in enumerate(bounds)]


def branin(x):
    b, c = 5.1 / (4 * PI ** 2), 5 / PI
    return (x[1] - b * x[0] ** 2 + c * x[0] - 6) ** 2 + 10 * (1 - 1 / (8 * PI)) * math.cos(x[0]) + 10


def camel6(x):
    return (4 - 2.1 * x[0] ** 2 + x[0] ** 4 / 3) * x[0] ** 2 + x[0] * x[1] + (-4 + 4 * x[1] ** 2) * x[1] ** 2


def goldstein(x):
    a, b = x
    first = 1 + (a + b + 1) ** 2 * (19 - 14 * a + 3 * a * a - 14 * b + 6 * a * b + 3 * b * b)
    second = 30 + (2 * a - 3 * b) ** 2 * (18 - 32 * a + 12 * a * a + 48 * b - 36 * a * b + 27 * b * b)
    return first * second


ALPHA = [1.0, 1.2, 3.0, 3.2]
A3 = [[3, 10, 30], [0.1, 10, 35], [3, 10, 30], [0.1, 10, 35]]
P3 = [[0.3689, 0.1170, 0.2673], [0.4699, 0.4387, 0.7470], [0.1091, 0.8732, 0.5547], [0.03815, 0.5743, 0.8828]]
A6 = [[10, 3, 17, 3.5, 1.7, 8], [0.05, 10, 17, 0.1, 8, 14], [3, 3.5, 1.7, 10, 17, 8], [17, 8, 0.05, 10, 0.1, 14]]
P6 = [[0.1312, 0.1696, 0.5569, 0.0124, 0.8283, 0.5886], [0.2329, 0.4135, 0.8307, 0.3736, 0.1004, 0.9991],
      [0.2348, 0.1451, 0.3522, 0.2883, 0.3047, 0.6650], [0.4047, 0.8828, 0.8732, 0.5743, 0.1091, 0.0381]]


def hartmann(x, a, p):
    return -sum(ALPHA[i] * math.exp(-sum(a[i][j] * (x[j] - p[i][j]) ** 2 for j in range(len(x)))) for i in range(4))


def styblinski(x):
    return 0.5 * sum(v ** 4 - 16 * v * v + 5 * v for v in x)


def rosenbrock(x):
    return sum(100 * (x[i + 1] - x[i] ** 2) ** 2 + (1 - x[i]) ** 2 for i in range(len(x) - 1))


def rastrigin(x):
    return 10 * len(x) + sum(v * v - 10 * math.cos(2 * PI * v) for v in x)


def ackley(x):
    d = len(x)
    return (-20 * math.exp(-0.2 * math.sqrt(sum(v * v for v in x) / d)) - math.exp(sum(math.cos(2 * PI * v) for v in x) / d)
            + 20 + math.e)


def levy(x):
    w = [1 + (v - 1) / 4 for v in x]
    return (math.sin(PI * w[0]) ** 2
            + sum((v - 1) ** 2 * (1 + 10 * math.sin(PI * v + 1) ** 2) for v in w[:-1])
            + (w[-1] - 1) ** 2 * (1 + math.sin(2 * PI * w[-1]) ** 2))


def mixed(t):
    n, y, kind = t.suggest_int("n", 0, 10), t.suggest_float("y", 0, 1), t.suggest_categorical("kind", ["a", "b", "c"])
    return (n - 7) ** 2 / 10 + (y - 0.3) ** 2 * 4 + {"a": 0.5, "b": 0.0, "c": 1.0}[kind]


def network(t):
    lr = t.suggest_float("lr", 1e-4, 1, log=True)
    layers = t.suggest_int("layers", 1, 8)
    units = t.suggest_int("units", 16, 512, log=True)
    optimizer = t.suggest_categorical("optimizer", ["sgd", "adam", "rmsprop", "adagrad"])
    activation = t.suggest_categorical("activation", ["relu", "tanh", "sigmoid"])
    best_lr, penalty = {"sgd": (-1.0, 0.15), "adam": (-3.0, 0.0), "rmsprop": (-2.5, 0.05), "adagrad": (-1.5, 0.3)}[optimizer]
    return ((math.log10(lr) - best_lr) ** 2 * 0.25 + (layers - 4) ** 2 * 0.05 + (math.log2(units) - 7) ** 2 * 0.08
            + penalty + {"relu": 0.0, "tanh": 0.1, "sigmoid": 0.4}[activation])


def counts(t):
    values = [t.suggest_int(name, 0, 20) for name in "abcd"]
    family = t.suggest_categorical("family", ["p", "q", "r", "s", "t"])
    style = t.suggest_categorical("style", ["u", "v", "w"])
    centre, penalty = {"p": (3, 0.3), "q": (7, 0.0), "r": (12, 0.6), "s": (16, 0.2), "t": (10, 0.9)}[family]
    return sum((v - centre - k) ** 2 / 20 for k, v in enumerate(values)) + penalty + {"u": 0.5, "v": 0.0, "w": 1.0}[style]


def box(f, bounds):
    return lambda t: f(xs(t, bounds))


# (name, kind, objective of a trial, f*, noise) — the same list, in the same order, as strategies.rs.
PROBLEMS = [
    ("branin", "2-3 D smooth", box(branin, [(-5, 10), (0, 15)]), 0.397887, 0.0),
    ("camel6", "2-3 D smooth", box(camel6, [(-3, 3), (-2, 2)]), -1.031628453489877, 0.0),
    ("goldstein", "2-3 D smooth", box(goldstein, [(-2, 2)] * 2), 3.0, 0.0),
    ("hartmann3", "2-3 D smooth", box(lambda x: hartmann(x, A3, P3), [(0, 1)] * 3), -3.86278, 0.0),
    ("hartmann6", "6 D smooth", box(lambda x: hartmann(x, A6, P6), [(0, 1)] * 6), -3.32237, 0.0),
    ("styblinski6", "6 D smooth", box(styblinski, [(-5, 5)] * 6), -39.16616570377142 * 6, 0.0),
    ("rosenbrock10", "10-20 D", box(rosenbrock, [(-2, 2)] * 10), 0.0, 0.0),
    ("rastrigin10", "10-20 D", box(rastrigin, [(-5.12, 5.12)] * 10), 0.0, 0.0),
    ("ackley10", "10-20 D", box(ackley, [(-32.768, 32.768)] * 10), 0.0, 0.0),
    ("levy10", "10-20 D", box(levy, [(-10, 10)] * 10), 0.0, 0.0),
    ("ackley20", "10-20 D", box(ackley, [(-32.768, 32.768)] * 20), 0.0, 0.0),
    ("mixed", "mixed", mixed, 0.0, 0.0),
    ("network", "mixed", network, 0.0, 0.0),
    ("counts", "mixed", counts, 0.0, 0.0),
    ("hartmann6-noisy", "noisy", box(lambda x: hartmann(x, A6, P6), [(0, 1)] * 6), -3.32237, 0.1),
    ("network-noisy", "noisy", network, 0.0, 0.1),
]

MASK = (1 << 64) - 1


def splitmix(z):
    z = (z + 0x9E3779B97F4A7C15) & MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def gaussian(seed, index):
    """The standard normal draw of trial `index` of `seed`, as strategies.rs makes it."""
    base = (seed * 1_000_003) & MASK
    a, b = splitmix((base + 2 * index) & MASK), splitmix((base + 2 * index + 1) & MASK)
    u1 = ((a >> 11) + 0.5) / (1 << 53)
    u2 = (b >> 11) / (1 << 53)
    return math.sqrt(-2 * math.log(u1)) * math.cos(2 * PI * u2)


def run(sampler, f, optimum, noise, seed, batch, count=TRIALS):
    study = optuna.create_study(sampler=sampler, direction="minimize")
    best, regrets, done = (math.inf, math.inf), [], 0
    while done < count:
        trials = [study.ask() for _ in range(min(batch, count - done))]
        # Optuna samples when a parameter is first asked for: evaluate the whole batch before
        # telling any result, so that the batch is suggested blind, as ours is.
        truths = [f(t) for t in trials]
        for k, (t, truth) in enumerate(zip(trials, truths)):
            seen = truth + noise * gaussian(seed, done + k)
            study.tell(t, seen)
            if seen < best[0]:
                best = (seen, truth)
            regrets.append(best[1] - optimum)
        done += len(trials)
    return regrets


def quartiles(v):
    v = sorted(v)
    at = lambda q: v[round((len(v) - 1) * q)]
    return at(0.25), at(0.5), at(0.75)


def samplers(with_gp):
    made = {
        "optuna-tpe": lambda seed, batch: optuna.samplers.TPESampler(seed=seed, constant_liar=batch > 1),
        "optuna-random": lambda seed, batch: optuna.samplers.RandomSampler(seed=seed),
    }
    if with_gp:
        made["optuna-gp"] = lambda seed, batch: optuna.samplers.GPSampler(seed=seed)
    return made


def measure(label, make, cache):
    """{(problem, batch, trials): [regret of each seed]} of one sampler, from the cache when there."""
    path = os.path.join(cache, f"{label}-{optuna.__version__}-{SEEDS}-seeds-runs.json") if cache else None
    known = {}
    if path and os.path.exists(path):
        known = {tuple(k.split("|")): v for k, v in json.load(open(path)).items()}
    table = {}
    for name, _, f, optimum, noise in PROBLEMS:
        for batch in (1, 4):
            if all((name, str(batch), str(c)) in known for c in CHECKPOINTS):
                for c in CHECKPOINTS:
                    table[(name, batch, c)] = known[(name, str(batch), str(c))]
                continue
            started = time.perf_counter()
            runs = [run(make(seed, batch), f, optimum, noise, seed, batch) for seed in range(SEEDS)]
            for c in CHECKPOINTS:
                table[(name, batch, c)] = [r[c - 1] for r in runs]
                known[(name, str(batch), str(c))] = table[(name, batch, c)]
            print(f"  {label} {name} batch {batch}: {time.perf_counter() - started:.0f} s", file=sys.stderr)
            if path:
                os.makedirs(cache, exist_ok=True)
                json.dump({"|".join(k): v for k, v in known.items()}, open(path, "w"))
    return table


def measure_wide(cache):
    """{(problem, batch): [regret of each of WIDE_SEEDS seeds after WIDE_TRIALS]} of TPE, cached."""
    path = os.path.join(cache, f"optuna-tpe-{optuna.__version__}-{WIDE_SEEDS}-seeds-{WIDE_TRIALS}-trials.json") if cache else None
    if path and os.path.exists(path):
        return {(k.split("|")[0], int(k.split("|")[1])): v for k, v in json.load(open(path)).items()}
    make = samplers(False)["optuna-tpe"]
    table = {}
    for name, _, f, optimum, noise in PROBLEMS:
        for batch in (1, 4):
            started = time.perf_counter()
            table[(name, batch)] = [run(make(seed, batch), f, optimum, noise, seed, batch, WIDE_TRIALS)[-1]
                                    for seed in range(WIDE_SEEDS)]
            print(f"  optuna-tpe {name} batch {batch}, {WIDE_SEEDS} seeds: {time.perf_counter() - started:.0f} s",
                  file=sys.stderr)
    if path:
        os.makedirs(cache, exist_ok=True)
        json.dump({f"{n}|{b}": v for (n, b), v in table.items()}, open(path, "w"))
    return table


def wide_comparison(ours, cache):
    """Ours against TPE after ten trials over WIDE_SEEDS seeds: four at a time both in synchronous
    batches (as TPE runs) and as the coordinator runs ours (a slot filled as a trial ends)."""
    tpe = measure_wide(cache)
    wide = {(r["function"], r["strategy"], r["batch"]): r["regrets"] for r in ours if r.get("seeds") == WIDE_SEEDS}
    if not wide:
        return
    print()
    print(f"after {WIDE_TRIALS} trials over {WIDE_SEEDS} seeds (0-{WIDE_SEEDS - 1}), median; ours vs TPE tested")
    print(f"{'problem':<16} {'batch':>5} {'bayesian':>10} {'as run':>10} {'optuna-tpe':>10}  in batches      as run")
    counts = {}
    for name, _, _, _, _ in PROBLEMS:
        for batch in (1, 4):
            theirs = tpe[(name, batch)]
            batches = wide.get((name, "bayesian", batch))
            slots = wide.get((name, "bayesian-async", batch), batches)
            verdicts = []
            for label, runs in (("in batches", batches), ("as run", slots)):
                verdict, p = compared(runs, theirs)
                counts.setdefault(label, []).append(verdict)
                verdicts.append(f"{verdict:<6} ({p:.2g})")
            print(f"{name:<16} {batch:>5} {statistics.median(batches):>10.4g} {statistics.median(slots):>10.4g} "
                  f"{statistics.median(theirs):>10.4g}  " + "  ".join(verdicts))
    for label, verdicts in counts.items():
        print(f"{label}: ahead / even / behind of {len(verdicts)} cells: "
              + "/".join(str(verdicts.count(v)) for v in ("ahead", "even", "behind")))


def compared(ours, theirs):
    """'ahead', 'even' or 'behind': whether our regrets are lower than theirs beyond chance
    (Mann-Whitney U, two-sided, p < 0.05). With 40 seeds two samplers that draw from the same
    distribution (both still in their start, say) have different medians every time."""
    if ours == theirs:
        return "even", 1.0
    p = mannwhitneyu(ours, theirs, alternative="two-sided").pvalue
    if p >= SIGNIFICANCE:
        return "even", p
    return ("ahead" if statistics.median(ours) < statistics.median(theirs) else "behind"), p


def main():
    ours = json.load(open(sys.argv[1]))
    with_gp = "--gp" in sys.argv
    cache = sys.argv[sys.argv.index("--cache") + 1] if "--cache" in sys.argv else None
    table = {(r["function"], r["strategy"], r["batch"], r["trials"]): r["regrets"] for r in ours
             if r.get("seeds", SEEDS) == SEEDS}
    for label, make in samplers(with_gp).items():
        for (name, batch, c), runs in measure(label, make, cache).items():
            table[(name, label, batch, c)] = runs
    labels = ["bayesian", "random", "optuna-tpe", "optuna-random"] + (["optuna-gp"] if with_gp else [])
    print(f"best-so-far regret over {SEEDS} seeds, median (first quartile-third quartile); lower is better")
    print(f"{'problem':<16} {'batch':>5} {'trials':>6} " + " ".join(f"{l:>24}" for l in labels)
          + "  ours vs TPE: medians, test (p)")
    by_median, by_test = {}, {}
    short = lambda v: "nan" if math.isnan(v) else f"{v:.3g}"
    for name, kind, _, _, _ in PROBLEMS:
        for batch in (1, 4):
            for c in CHECKPOINTS:
                runs = [table.get((name, l, batch, c)) for l in labels]
                cells = [quartiles(r) if r else (math.nan,) * 3 for r in runs]
                ours_v, tpe = cells[0][1], cells[2][1]
                verdict = "ahead" if ours_v < tpe else ("even" if ours_v == tpe else "behind")
                by_median.setdefault((kind, batch, c), []).append(verdict)
                tested, p = compared(runs[0], runs[2])
                by_test.setdefault((kind, batch, c), []).append(tested)
                text = [f"{short(m)} ({short(q1)}-{short(q3)})" for q1, m, q3 in cells]
                print(f"{name:<16} {batch:>5} {c:>6} " + " ".join(f"{t:>24}" for t in text)
                      + f"  {verdict:<6} {tested:<6} ({p:.2g})")
    print()
    print("problems where our Bayesian strategy's median regret is below TPE's (ahead / all), and beside it")
    print(f"the same against TPE tested (Mann-Whitney U, p < {SIGNIFICANCE}): ahead / even / behind")
    print(f"{'kind':<14} {'batch':>5} " + " ".join(f"{f'{c} trials':>10}" for c in CHECKPOINTS)
          + "  " + " ".join(f"{f'{c} trials':>10}" for c in CHECKPOINTS))
    for kind in dict.fromkeys(k for _, k, _, _, _ in PROBLEMS):
        for batch in (1, 4):
            medians = [f"{by_median[(kind, batch, c)].count('ahead')}/{len(by_median[(kind, batch, c)])}"
                       for c in CHECKPOINTS]
            tests = ["/".join(str(by_test[(kind, batch, c)].count(v)) for v in ("ahead", "even", "behind"))
                     for c in CHECKPOINTS]
            print(f"{kind:<14} {batch:>5} " + " ".join(f"{x:>10}" for x in medians)
                  + "  " + " ".join(f"{x:>10}" for x in tests))
    # Until TPE has n_startup_trials (10) results it samples at random: where its regrets are
    # Optuna's random sampler's, seed for seed, "against TPE" means against random points.
    for c in CHECKPOINTS:
        cells = [(name, batch) for name, _, _, _, _ in PROBLEMS for batch in (1, 4)]
        same = sum(table.get((n, "optuna-tpe", b, c)) == table.get((n, "optuna-random", b, c)) for n, b in cells)
        if same:
            print(f"at {c} trials TPE's regrets are Optuna random sampling's, seed for seed, in {same} of "
                  f"{len(cells)} cells (TPE is still in its random start)")
    wide_comparison(ours, cache)
    # TPE's own suggestion latency, for comparison with ours.
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    f = PROBLEMS[4][2]
    for n in (100, 1000):
        while len(study.trials) < n:
            t = study.ask()
            study.tell(t, f(t))
        started = time.perf_counter()
        for _ in range(5):
            t = study.ask()
            f(t)
            study.tell(t, 0.0)
        print(f"optuna TPE suggestion latency at {n} finished trials: {(time.perf_counter() - started) / 5 * 1000:.1f} ms")


if __name__ == "__main__":
    main()
