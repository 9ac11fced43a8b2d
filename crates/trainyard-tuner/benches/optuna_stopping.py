"""Optuna's pruners on the learning-curve problems of the tuner's early-stopping benchmark
(benches/stopping.rs): the same curves, noise and protocol, printed beside ours.

Usage (scripts/bench-tuner does this): python optuna_stopping.py OURS.json [--cache DIR]

After the table, the best of ours against the best of Optuna's at each budget (each by median),
tested as the search comparison tests (Mann-Whitney U on every seed's regret).
"""
import json
import math
import os
import sys
import time

import optuna

from optuna_compare import A6, P6, MASK, branin, compared, gaussian, hartmann, network, quartiles, xs

optuna.logging.set_verbosity(optuna.logging.WARNING)
EPOCHS, SEEDS, BUDGETS = 27, 20, (10, 25, 50)


def curve(last, amplitude, speed, epoch, noise):
    r = float(EPOCHS)
    shape = ((r / epoch) ** speed - 1) / (r ** speed - 1)
    return last + amplitude * shape + 0.02 * amplitude * noise


def lc_branin(t):
    x = xs(t, [(-5, 10), (0, 15)])
    return branin(x), 10 + 40 * (1 + math.sin(x[0] + x[1])), 0.5 + x[1] / 15


def lc_hartmann6(t):
    x = xs(t, [(0, 1)] * 6)
    return hartmann(x, A6, P6), 0.5 + 1.5 * x[0] * x[5], 0.3 + x[2]


def lc_network(t):
    value = network(t)
    lr = math.log10(t.params["lr"])
    return value, 0.3 - 0.3 * lr, 0.5 + 0.25 * (lr + 4)


# The same list, in the same order, as stopping.rs.
PROBLEMS = [("lc-branin", lc_branin, 0.397887), ("lc-hartmann6", lc_hartmann6, -3.32237), ("lc-network", lc_network, 0.0)]


def run(sampler, pruner, f, optimum, seed):
    # Named after the seed: Optuna's Hyperband pruner puts a trial in a bracket by a hash of the
    # study's name, which is random unless given, and the results would change from run to run.
    study = optuna.create_study(sampler=sampler, pruner=pruner, direction="minimize", study_name=f"seed-{seed}")
    best, spent, regrets, index = math.inf, 0, [], 0
    while len(regrets) < len(BUDGETS):
        t = study.ask()
        last, amplitude, speed = f(t)
        pruned, value = False, math.nan
        for epoch in range(1, EPOCHS + 1):
            value = curve(last, amplitude, speed, epoch, gaussian((seed * 7919 + index) & MASK, epoch))
            spent += 1
            t.report(value, epoch)
            if epoch == EPOCHS:
                best = min(best, last)
            while len(regrets) < len(BUDGETS) and spent == BUDGETS[len(regrets)] * EPOCHS:
                regrets.append(best - optimum)
            if epoch < EPOCHS and t.should_prune():
                pruned = True
                break
        if pruned:
            study.tell(t, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(t, value)
        index += 1
    return regrets


POLICIES = {
    "optuna-tpe": (lambda s: optuna.samplers.TPESampler(seed=s), lambda: optuna.pruners.NopPruner()),
    "optuna-random+hyperband": (lambda s: optuna.samplers.RandomSampler(seed=s),
                                lambda: optuna.pruners.HyperbandPruner(min_resource=1, max_resource=EPOCHS, reduction_factor=3)),
    "optuna-tpe+hyperband": (lambda s: optuna.samplers.TPESampler(seed=s),
                             lambda: optuna.pruners.HyperbandPruner(min_resource=1, max_resource=EPOCHS, reduction_factor=3)),
    "optuna-tpe+median": (lambda s: optuna.samplers.TPESampler(seed=s), lambda: optuna.pruners.MedianPruner()),
}


def main():
    ours = json.load(open(sys.argv[1]))
    cache = sys.argv[sys.argv.index("--cache") + 1] if "--cache" in sys.argv else None
    table = {(r["problem"], r["policy"], r["budget"]): r["regrets"] for r in ours}
    path = os.path.join(cache, f"stopping-{optuna.__version__}-runs.json") if cache else None
    known = json.load(open(path)) if path and os.path.exists(path) else {}
    for name, f, optimum in PROBLEMS:
        for label, (sampler, pruner) in POLICIES.items():
            key = f"{name}|{label}"
            if key not in known:
                started = time.perf_counter()
                runs = [run(sampler(seed), pruner(), f, optimum, seed) for seed in range(SEEDS)]
                known[key] = [[r[i] for r in runs] for i in range(len(BUDGETS))]
                print(f"  {label} {name}: {time.perf_counter() - started:.0f} s", file=sys.stderr)
                if path:
                    os.makedirs(cache, exist_ok=True)
                    json.dump(known, open(path, "w"))
            for i, budget in enumerate(BUDGETS):
                table[(name, label, budget)] = known[key][i]
    ours_labels = ["random", "random+hyperband", "hyperband", "bayesian", "bayesian+median"]
    labels = ours_labels + list(POLICIES)
    print(f"regret of the best completed trial after a budget of epochs ({SEEDS} seeds; a trial is {EPOCHS} epochs):")
    print("median (first quartile-third quartile)")
    short = lambda v: "nan" if math.isnan(v) else f"{v:.3g}"
    print(f"{'problem':<14} {'budget':>7} " + " ".join(f"{l[:22]:>22}" for l in labels))
    for name, _, _ in PROBLEMS:
        for budget in BUDGETS:
            cells = [quartiles(table[(name, l, budget)]) if (name, l, budget) in table else (math.nan,) * 3
                     for l in labels]
            text = [f"{short(m)} ({short(q1)}-{short(q3)})" for q1, m, q3 in cells]
            print(f"{name:<14} {budget:>4}×{EPOCHS} " + " ".join(f"{t:>22}" for t in text))
    print()
    print("the best of ours against the best of Optuna's (by median), tested (Mann-Whitney U, p < 0.05)")
    print(f"{'problem':<14} {'budget':>7} {'ours':>24} {'Optuna':>30}  verdict")
    for name, _, _ in PROBLEMS:
        for budget in BUDGETS:
            best = lambda among: min((l for l in among if (name, l, budget) in table),
                                     key=lambda l: quartiles(table[(name, l, budget)])[1])
            mine, theirs = best(["hyperband", "bayesian", "bayesian+median"]), best(list(POLICIES))
            verdict, p = compared(table[(name, mine, budget)], table[(name, theirs, budget)])
            m1, m2 = quartiles(table[(name, mine, budget)])[1], quartiles(table[(name, theirs, budget)])[1]
            print(f"{name:<14} {budget:>4}×{EPOCHS} {f'{mine} {short(m1)}':>24} {f'{theirs} {short(m2)}':>30}"
                  f"  {verdict} ({p:.2g})")

if __name__ == "__main__":
    main()
