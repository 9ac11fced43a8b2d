//! The tuner's benchmark: best-so-far regret of our strategies on standard test functions, and the
//! latency of one Bayesian suggestion as finished trials grow. Prints tables; with
//! `TRAINYARD_TUNER_BENCH_JSON=FILE` also writes the regrets as JSON, which
//! `scripts/bench-tuner` puts side by side with Optuna's samplers.
//!
//! Protocol (the same in the Optuna script): 20 seeds per function; 50 trials one at a time, and
//! 50 trials 4 at a time (each batch suggested before any of its results is known); the regret is
//! f(best so far) − f*, reported as median and quartiles over seeds after 10, 25 and 50 trials.

use std::collections::BTreeMap;
use std::time::Instant;

use trainyard_model::api;
use trainyard_tuner::{Finished, SearchSpace, Strategy};

struct Problem {
    name: &'static str,
    ranges: &'static str,
    optimum: f64,
    f: fn(&BTreeMap<String, String>) -> f64,
}

fn num(h: &BTreeMap<String, String>, k: &str) -> f64 {
    h[k].parse().expect("numeric hyperparameter")
}

fn branin(h: &BTreeMap<String, String>) -> f64 {
    let (x1, x2) = (num(h, "x1"), num(h, "x2"));
    let pi = std::f64::consts::PI;
    let b = 5.1 / (4.0 * pi * pi);
    let c = 5.0 / pi;
    (x2 - b * x1 * x1 + c * x1 - 6.0).powi(2) + 10.0 * (1.0 - 1.0 / (8.0 * pi)) * x1.cos() + 10.0
}

fn hartmann6(h: &BTreeMap<String, String>) -> f64 {
    const A: [[f64; 6]; 4] = [
        [10.0, 3.0, 17.0, 3.5, 1.7, 8.0],
        [0.05, 10.0, 17.0, 0.1, 8.0, 14.0],
        [3.0, 3.5, 1.7, 10.0, 17.0, 8.0],
        [17.0, 8.0, 0.05, 10.0, 0.1, 14.0],
    ];
    const P: [[f64; 6]; 4] = [
        [0.1312, 0.1696, 0.5569, 0.0124, 0.8283, 0.5886],
        [0.2329, 0.4135, 0.8307, 0.3736, 0.1004, 0.9991],
        [0.2348, 0.1451, 0.3522, 0.2883, 0.3047, 0.6650],
        [0.4047, 0.8828, 0.8732, 0.5743, 0.1091, 0.0381],
    ];
    const ALPHA: [f64; 4] = [1.0, 1.2, 3.0, 3.2];
    let x: Vec<f64> = (1..=6).map(|i| num(h, &format!("x{i}"))).collect();
    -(0..4).map(|i| ALPHA[i] * (-(0..6).map(|j| A[i][j] * (x[j] - P[i][j]).powi(2)).sum::<f64>()).exp()).sum::<f64>()
}

fn rosenbrock10(h: &BTreeMap<String, String>) -> f64 {
    let x: Vec<f64> = (1..=10).map(|i| num(h, &format!("x{i:02}"))).collect();
    x.windows(2).map(|w| 100.0 * (w[1] - w[0] * w[0]).powi(2) + (1.0 - w[0]).powi(2)).sum()
}

fn mixed(h: &BTreeMap<String, String>) -> f64 {
    let penalty = match h["kind"].as_str() {
        "a" => 0.5,
        "b" => 0.0,
        _ => 1.0,
    };
    (num(h, "n") - 7.0).powi(2) / 10.0 + (num(h, "y") - 0.3).powi(2) * 4.0 + penalty
}

fn problems() -> Vec<Problem> {
    vec![
        Problem {
            name: "branin",
            ranges: r#"{"ContinuousParameterRanges": [{"Name": "x1", "MinValue": "-5", "MaxValue": "10", "ScalingType": "Linear"},
                                                      {"Name": "x2", "MinValue": "0", "MaxValue": "15", "ScalingType": "Linear"}]}"#,
            optimum: 0.397_887,
            f: branin,
        },
        Problem {
            name: "hartmann6",
            ranges: r#"{"ContinuousParameterRanges": [
                {"Name": "x1", "MinValue": "0", "MaxValue": "1", "ScalingType": "Linear"}, {"Name": "x2", "MinValue": "0", "MaxValue": "1", "ScalingType": "Linear"},
                {"Name": "x3", "MinValue": "0", "MaxValue": "1", "ScalingType": "Linear"}, {"Name": "x4", "MinValue": "0", "MaxValue": "1", "ScalingType": "Linear"},
                {"Name": "x5", "MinValue": "0", "MaxValue": "1", "ScalingType": "Linear"}, {"Name": "x6", "MinValue": "0", "MaxValue": "1", "ScalingType": "Linear"}]}"#,
            optimum: -3.322_37,
            f: hartmann6,
        },
        Problem {
            name: "rosenbrock10",
            ranges: r#"{"ContinuousParameterRanges": [
                {"Name": "x01", "MinValue": "-2", "MaxValue": "2", "ScalingType": "Linear"}, {"Name": "x02", "MinValue": "-2", "MaxValue": "2", "ScalingType": "Linear"},
                {"Name": "x03", "MinValue": "-2", "MaxValue": "2", "ScalingType": "Linear"}, {"Name": "x04", "MinValue": "-2", "MaxValue": "2", "ScalingType": "Linear"},
                {"Name": "x05", "MinValue": "-2", "MaxValue": "2", "ScalingType": "Linear"}, {"Name": "x06", "MinValue": "-2", "MaxValue": "2", "ScalingType": "Linear"},
                {"Name": "x07", "MinValue": "-2", "MaxValue": "2", "ScalingType": "Linear"}, {"Name": "x08", "MinValue": "-2", "MaxValue": "2", "ScalingType": "Linear"},
                {"Name": "x09", "MinValue": "-2", "MaxValue": "2", "ScalingType": "Linear"}, {"Name": "x10", "MinValue": "-2", "MaxValue": "2", "ScalingType": "Linear"}]}"#,
            optimum: 0.0,
            f: rosenbrock10,
        },
        Problem {
            name: "mixed",
            ranges: r#"{"IntegerParameterRanges": [{"Name": "n", "MinValue": "0", "MaxValue": "10", "ScalingType": "Linear"}],
                        "ContinuousParameterRanges": [{"Name": "y", "MinValue": "0", "MaxValue": "1", "ScalingType": "Linear"}],
                        "CategoricalParameterRanges": [{"Name": "kind", "Values": ["a", "b", "c"]}]}"#,
            optimum: 0.0,
            f: mixed,
        },
    ]
}

const SEEDS: u64 = 20;
const TRIALS: u64 = 50;
const CHECKPOINTS: [usize; 3] = [10, 25, 50];

/// Best-so-far regret after each trial, for one run.
fn run(strategy: &Strategy, space: &SearchSpace, p: &Problem, seed: u64, batch: u64) -> Vec<f64> {
    let mut finished: Vec<Finished> = Vec::new();
    let mut best = f64::INFINITY;
    let mut regrets = Vec::new();
    let mut index = 0;
    while index < TRIALS {
        let mut pending: Vec<BTreeMap<String, String>> = Vec::new();
        for _ in 0..batch.min(TRIALS - index) {
            let h = strategy.suggest(space, seed, index, &finished, &pending).expect("a suggestion");
            pending.push(h);
            index += 1;
        }
        for h in pending {
            let y = (p.f)(&h);
            best = best.min(y);
            regrets.push(best - p.optimum);
            finished.push(Finished { hyper_parameters: h, value: -y });
        }
    }
    regrets
}

fn quartiles(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    (at(0.25), at(0.5), at(0.75))
}

fn main() {
    let mut json = Vec::new();
    println!("best-so-far regret: median [q1, q3] over {SEEDS} seeds");
    println!(
        "{:<13} {:<10} {:<6} {:>26} {:>26} {:>26}",
        "function", "strategy", "batch", "10 trials", "25 trials", "50 trials"
    );
    for p in problems() {
        let ranges: api::ParameterRanges = trainyard_model::api_json(p.ranges).expect("ranges");
        let space = SearchSpace::from_ranges(&ranges).expect("space");
        for (label, strategy) in [("random", Strategy::Random), ("bayesian", Strategy::Bayesian)] {
            for batch in [1, 4] {
                let runs: Vec<Vec<f64>> = (0..SEEDS).map(|seed| run(&strategy, &space, &p, seed, batch)).collect();
                let mut cells = Vec::new();
                for c in CHECKPOINTS {
                    let (q1, median, q3) = quartiles(runs.iter().map(|r| r[c - 1]).collect());
                    cells.push(format!("{median:.4} [{q1:.4}, {q3:.4}]"));
                    json.push(serde_json::json!({"function": p.name, "strategy": label, "batch": batch, "trials": c,
                                                 "q1": q1, "median": median, "q3": q3}));
                }
                println!(
                    "{:<13} {:<10} {:<6} {:>26} {:>26} {:>26}",
                    p.name, label, batch, cells[0], cells[1], cells[2]
                );
            }
        }
    }

    println!();
    println!("{:<40} {:>12}", "Bayesian suggestion latency (6 dims)", "ms (median)");
    let ranges: api::ParameterRanges = trainyard_model::api_json(problems()[1].ranges).expect("ranges");
    let space = SearchSpace::from_ranges(&ranges).expect("space");
    for n in [100u64, 1_000, 10_000] {
        let finished: Vec<Finished> = (0..n)
            .map(|i| {
                let h = Strategy::Random.suggest(&space, 99, i, &[], &[]).expect("a point");
                Finished { value: -hartmann6(&h), hyper_parameters: h }
            })
            .collect();
        let mut times: Vec<f64> = (0..9)
            .map(|i| {
                let started = Instant::now();
                Strategy::Bayesian.suggest(&space, 7, n + i, &finished, &[]).expect("a suggestion");
                started.elapsed().as_secs_f64() * 1000.0
            })
            .collect();
        times.sort_by(f64::total_cmp);
        println!("{:<40} {:>12.2}", format!("{n} finished trials"), times[times.len() / 2]);
    }
    if let Ok(path) = std::env::var("TRAINYARD_TUNER_BENCH_JSON") {
        std::fs::write(&path, serde_json::to_vec_pretty(&json).expect("json")).expect("write the results");
    }
}
