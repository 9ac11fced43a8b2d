//! Early stopping measured: Hyperband (configurations from the Bayesian model, as the Hyperband
//! strategy picks them, and at random) and the median rule against running every trial to the end,
//! on learning-curve problems (each trial reports its objective after every epoch; the value
//! after the last epoch is its result), with the total epochs spent as the budget. Prints regret
//! against budget; with `TRAINYARD_TUNER_STOPPING_JSON=FILE` also writes it as JSON, which
//! `scripts/bench-tuner` puts beside Optuna's pruners (`optuna_stopping.py`: the same curves,
//! noise and protocol).
//!
//! Protocol: 20 seeds per problem; trials one at a time; a trial runs epoch by epoch up to
//! MaxResource = 27 unless its policy stops it; the regret after a budget of B epochs is
//! f(best completed trial) − f* (only trials that ran to the end count, as SageMaker's
//! BestTrainingJob counts completed trials), reported at B = 10, 25 and 50 × MaxResource.

mod common;

use common::{Params, gaussian, num, quartiles};
use trainyard_model::api;
use trainyard_tuner::hyperband::Hyperband;
use trainyard_tuner::stopping::median_rule;
use trainyard_tuner::{Finished, SearchSpace, Strategy};

/// Epochs of a trial that is not stopped (SageMaker's MaxResource).
const EPOCHS: u64 = 27;
const SEEDS: u64 = 20;
/// Budgets, in trials' worth of epochs.
const BUDGETS: [u64; 3] = [10, 25, 50];

struct Problem {
    name: &'static str,
    ranges: String,
    optimum: f64,
    /// The final value, the curve's amplitude (how much worse it starts) and its speed.
    f: fn(&Params) -> (f64, f64, f64),
}

/// The value after `epoch` of a curve that starts `amplitude` above `last` and reaches it at
/// [`EPOCHS`], faster for a larger `speed` (a power law, as training losses fall), plus noise.
pub fn curve(last: f64, amplitude: f64, speed: f64, epoch: u64, noise: f64) -> f64 {
    let r = EPOCHS as f64;
    let shape = ((r / epoch as f64).powf(speed) - 1.0) / (r.powf(speed) - 1.0);
    last + amplitude * shape + 0.02 * amplitude * noise
}

fn problems() -> Vec<Problem> {
    vec![
        Problem {
            name: "lc-branin",
            ranges: common::bounds(&[(-5.0, 10.0), (0.0, 15.0)]),
            optimum: 0.397_887,
            f: |h| {
                let (x1, x2) = (num(h, "x01"), num(h, "x02"));
                (common::branin(h), 10.0 + 40.0 * (1.0 + (x1 + x2).sin()), 0.5 + x2 / 15.0)
            },
        },
        Problem {
            name: "lc-hartmann6",
            ranges: common::boxed(6, 0.0, 1.0),
            optimum: -3.322_37,
            f: |h| (common::hartmann6(h), 0.5 + 1.5 * num(h, "x01") * num(h, "x06"), 0.3 + num(h, "x03")),
        },
        Problem {
            name: "lc-network",
            ranges: common::NETWORK_RANGES.to_string(),
            optimum: 0.0,
            f: |h| {
                let lr = num(h, "lr").log10();
                (common::network(h), 0.3 - 0.3 * lr, 0.5 + 0.25 * (lr + 4.0))
            },
        },
    ]
}

/// What stops trials early.
#[derive(Clone, Copy)]
enum Policy {
    None,
    Hyperband,
    MedianRule,
}

/// Regret after each budget of [`BUDGETS`], for one run.
fn run(strategy: &Strategy, policy: Policy, space: &SearchSpace, p: &Problem, seed: u64) -> Vec<f64> {
    let mut hyperband = Hyperband::new(1, EPOCHS);
    let mut finished: Vec<Finished> = Vec::new();
    let mut curves: Vec<Vec<f64>> = Vec::new();
    let mut best = f64::INFINITY;
    let mut spent = 0;
    let mut regrets = Vec::new();
    let mut index = 0;
    while regrets.len() < BUDGETS.len() {
        let h = strategy.suggest(space, seed, index, None, &finished, &[]).expect("a suggestion");
        let (last, amplitude, speed) = (p.f)(&h);
        let bracket = hyperband.bracket_of(index);
        let mut curve_so_far = Vec::new();
        let mut value = f64::NAN;
        for epoch in 1..=EPOCHS {
            value = curve(last, amplitude, speed, epoch, gaussian(seed.wrapping_mul(7_919).wrapping_add(index), epoch));
            spent += 1;
            curve_so_far.push(-value);
            let stop = match policy {
                Policy::None => false,
                Policy::Hyperband => hyperband.report(bracket, epoch, -value),
                Policy::MedianRule => median_rule(&curve_so_far, &curves),
            };
            if epoch == EPOCHS {
                best = best.min(last);
            }
            while regrets.len() < BUDGETS.len() && spent == BUDGETS[regrets.len()] * EPOCHS {
                regrets.push(best - p.optimum);
            }
            if stop {
                break;
            }
        }
        finished.push(Finished { hyper_parameters: h, value: -value });
        curves.push(curve_so_far);
        index += 1;
    }
    regrets
}

fn main() {
    let mut json = Vec::new();
    println!("regret of the best completed trial after a budget of epochs: median [q1, q3] over {SEEDS} seeds");
    println!(
        "{:<14} {:<18} {:>26} {:>26} {:>26}",
        "problem", "policy", "10 × 27 epochs", "25 × 27 epochs", "50 × 27 epochs"
    );
    let policies = [
        ("random", Strategy::Random, Policy::None),
        ("random+hyperband", Strategy::Random, Policy::Hyperband),
        ("bayesian", Strategy::Bayesian, Policy::None),
        ("bayesian+median", Strategy::Bayesian, Policy::MedianRule),
        ("hyperband", Strategy::Bayesian, Policy::Hyperband),
    ];
    for p in problems() {
        let ranges: api::ParameterRanges = trainyard_model::api_json(&p.ranges).expect("ranges");
        let space = SearchSpace::from_ranges(&ranges).expect("space");
        for (label, strategy, policy) in &policies {
            let runs: Vec<Vec<f64>> = (0..SEEDS).map(|seed| run(strategy, *policy, &space, &p, seed)).collect();
            let mut cells = Vec::new();
            for (i, budget) in BUDGETS.iter().enumerate() {
                let at_budget: Vec<f64> = runs.iter().map(|r| r[i]).collect();
                let (q1, median, q3) = quartiles(at_budget.clone());
                cells.push(format!("{median:.4} [{q1:.4}, {q3:.4}]"));
                json.push(serde_json::json!({"problem": p.name, "policy": label, "budget": budget,
                                             "regrets": at_budget}));
            }
            println!("{:<14} {:<18} {:>26} {:>26} {:>26}", p.name, label, cells[0], cells[1], cells[2]);
        }
    }
    if let Ok(path) = std::env::var("TRAINYARD_TUNER_STOPPING_JSON") {
        std::fs::write(&path, serde_json::to_vec_pretty(&json).expect("json")).expect("write the results");
    }
}
