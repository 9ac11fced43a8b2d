"""Runs Optuna's TPE and random samplers on the same functions and protocol as the tuner's Rust
benchmark (benches/strategies.rs), then prints both side by side. Usage (scripts/bench-tuner does
this): python optuna_compare.py OURS.json
"""
import json
import math
import statistics
import sys
import time

import optuna

optuna.logging.set_verbosity(optuna.logging.WARNING)
SEEDS, TRIALS, CHECKPOINTS = 20, 50, (10, 25, 50)


def branin(t):
    x1, x2 = t.suggest_float("x1", -5, 10), t.suggest_float("x2", 0, 15)
    b, c = 5.1 / (4 * math.pi ** 2), 5 / math.pi
    return (x2 - b * x1 * x1 + c * x1 - 6) ** 2 + 10 * (1 - 1 / (8 * math.pi)) * math.cos(x1) + 10


A = [[10, 3, 17, 3.5, 1.7, 8], [0.05, 10, 17, 0.1, 8, 14], [3, 3.5, 1.7, 10, 17, 8], [17, 8, 0.05, 10, 0.1, 14]]
P = [[0.1312, 0.1696, 0.5569, 0.0124, 0.8283, 0.5886], [0.2329, 0.4135, 0.8307, 0.3736, 0.1004, 0.9991],
     [0.2348, 0.1451, 0.3522, 0.2883, 0.3047, 0.6650], [0.4047, 0.8828, 0.8732, 0.5743, 0.1091, 0.0381]]
ALPHA = [1.0, 1.2, 3.0, 3.2]


def hartmann6(t):
    x = [t.suggest_float(f"x{i}", 0, 1) for i in range(1, 7)]
    return -sum(ALPHA[i] * math.exp(-sum(A[i][j] * (x[j] - P[i][j]) ** 2 for j in range(6))) for i in range(4))


def rosenbrock10(t):
    x = [t.suggest_float(f"x{i:02}", -2, 2) for i in range(1, 11)]
    return sum(100 * (x[i + 1] - x[i] ** 2) ** 2 + (1 - x[i]) ** 2 for i in range(9))


def mixed(t):
    n, y, kind = t.suggest_int("n", 0, 10), t.suggest_float("y", 0, 1), t.suggest_categorical("kind", ["a", "b", "c"])
    return (n - 7) ** 2 / 10 + (y - 0.3) ** 2 * 4 + {"a": 0.5, "b": 0.0, "c": 1.0}[kind]


PROBLEMS = [("branin", branin, 0.397887), ("hartmann6", hartmann6, -3.32237), ("rosenbrock10", rosenbrock10, 0.0), ("mixed", mixed, 0.0)]


def run(sampler, f, optimum, batch):
    study = optuna.create_study(sampler=sampler, direction="minimize")
    best, regrets, done = math.inf, [], 0
    while done < TRIALS:
        trials = [study.ask() for _ in range(min(batch, TRIALS - done))]
        # Optuna samples when a parameter is first asked for: evaluate the whole batch before
        # telling any result, so that the batch is suggested blind, as ours is.
        values = [f(t) for t in trials]
        for t, y in zip(trials, values):
            study.tell(t, y)
            best = min(best, y)
            regrets.append(best - optimum)
        done += len(trials)
    return regrets


def quartiles(v):
    v = sorted(v)
    at = lambda q: v[round((len(v) - 1) * q)]
    return at(0.25), at(0.5), at(0.75)


def main():
    ours = json.load(open(sys.argv[1]))
    table = {(r["function"], r["strategy"], r["batch"], r["trials"]): r for r in ours}
    samplers = {"optuna-tpe": lambda s: optuna.samplers.TPESampler(seed=s), "optuna-random": lambda s: optuna.samplers.RandomSampler(seed=s)}
    for (name, f, optimum) in PROBLEMS:
        for label, make in samplers.items():
            for batch in (1, 4):
                runs = [run(make(seed), f, optimum, batch) for seed in range(SEEDS)]
                for c in CHECKPOINTS:
                    q1, med, q3 = quartiles([r[c - 1] for r in runs])
                    table[(name, label, batch, c)] = {"q1": q1, "median": med, "q3": q3}
    labels = ["bayesian", "random", "optuna-tpe", "optuna-random"]
    print(f"median best-so-far regret over {SEEDS} seeds (lower is better; [q1, q3] in the JSON)")
    print(f"{'function':<13} {'batch':>5} {'trials':>6} " + " ".join(f"{l:>14}" for l in labels) + "  winner")
    for (name, _, _) in PROBLEMS:
        for batch in (1, 4):
            for c in CHECKPOINTS:
                row = [table[(name, l, batch, c)]["median"] for l in labels]
                winner = labels[min(range(len(row)), key=row.__getitem__)]
                print(f"{name:<13} {batch:>5} {c:>6} " + " ".join(f"{v:>14.4f}" for v in row) + f"  {winner}")
    # TPE's own suggestion latency, for comparison with ours.
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    for n in (100, 1000):
        while len(study.trials) < n:
            t = study.ask()
            study.tell(t, hartmann6(t))
        started = time.perf_counter()
        for _ in range(5):
            t = study.ask()
            hartmann6(t)
            study.tell(t, 0.0)
        print(f"optuna TPE suggestion latency at {n} finished trials: {(time.perf_counter() - started) / 5 * 1000:.1f} ms")


if __name__ == "__main__":
    main()
