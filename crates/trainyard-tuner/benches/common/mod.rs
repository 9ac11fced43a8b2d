//! What the tuner benchmarks share (and `optuna_compare.py` mirrors): standard test functions,
//! a mixed-space "network" problem, ranges, the problem set, the noise both sides draw, the two
//! ways of running trials four at a time, and the figures. The system bench (`trainyard-bench
//! --suites tuner`) runs the same problems through a real coordinator and agent and includes
//! this file.

// Each benchmark uses part of it.
#![allow(dead_code)]

use std::collections::BTreeMap;

use trainyard_tuner::{Finished, SearchSpace, Strategy};

pub type Params = BTreeMap<String, String>;

pub fn num(h: &Params, k: &str) -> f64 {
    h[k].parse().expect("numeric hyperparameter")
}

pub fn xs(h: &Params, d: usize) -> Vec<f64> {
    (1..=d).map(|i| num(h, &format!("x{i:02}"))).collect()
}

/// Continuous ranges `x01..`, one per (lo, hi).
pub fn bounds(b: &[(f64, f64)]) -> String {
    let ranges: Vec<String> = b
        .iter()
        .enumerate()
        .map(|(i, (lo, hi))| {
            format!(r#"{{"Name": "x{:02}", "MinValue": "{lo}", "MaxValue": "{hi}", "ScalingType": "Linear"}}"#, i + 1)
        })
        .collect();
    format!(r#"{{"ContinuousParameterRanges": [{}]}}"#, ranges.join(", "))
}

/// `d` continuous ranges `x01..` on [lo, hi].
pub fn boxed(d: usize, lo: f64, hi: f64) -> String {
    bounds(&vec![(lo, hi); d])
}

pub fn branin(h: &Params) -> f64 {
    let x = xs(h, 2);
    let pi = std::f64::consts::PI;
    let b = 5.1 / (4.0 * pi * pi);
    let c = 5.0 / pi;
    (x[1] - b * x[0] * x[0] + c * x[0] - 6.0).powi(2) + 10.0 * (1.0 - 1.0 / (8.0 * pi)) * x[0].cos() + 10.0
}

pub fn six_hump_camel(h: &Params) -> f64 {
    let x = xs(h, 2);
    (4.0 - 2.1 * x[0].powi(2) + x[0].powi(4) / 3.0) * x[0].powi(2)
        + x[0] * x[1]
        + (-4.0 + 4.0 * x[1].powi(2)) * x[1].powi(2)
}

pub fn goldstein_price(h: &Params) -> f64 {
    let x = xs(h, 2);
    let (a, b) = (x[0], x[1]);
    let first = 1.0 + (a + b + 1.0).powi(2) * (19.0 - 14.0 * a + 3.0 * a * a - 14.0 * b + 6.0 * a * b + 3.0 * b * b);
    let second =
        30.0 + (2.0 * a - 3.0 * b).powi(2) * (18.0 - 32.0 * a + 12.0 * a * a + 48.0 * b - 36.0 * a * b + 27.0 * b * b);
    first * second
}

pub fn hartmann(x: &[f64], a: &[[f64; 6]; 4], p: &[[f64; 6]; 4]) -> f64 {
    const ALPHA: [f64; 4] = [1.0, 1.2, 3.0, 3.2];
    -(0..4)
        .map(|i| ALPHA[i] * (-(0..x.len()).map(|j| a[i][j] * (x[j] - p[i][j]).powi(2)).sum::<f64>()).exp())
        .sum::<f64>()
}

pub fn hartmann3(h: &Params) -> f64 {
    const A: [[f64; 6]; 4] = [
        [3.0, 10.0, 30.0, 0.0, 0.0, 0.0],
        [0.1, 10.0, 35.0, 0.0, 0.0, 0.0],
        [3.0, 10.0, 30.0, 0.0, 0.0, 0.0],
        [0.1, 10.0, 35.0, 0.0, 0.0, 0.0],
    ];
    const P: [[f64; 6]; 4] = [
        [0.3689, 0.1170, 0.2673, 0.0, 0.0, 0.0],
        [0.4699, 0.4387, 0.7470, 0.0, 0.0, 0.0],
        [0.1091, 0.8732, 0.5547, 0.0, 0.0, 0.0],
        [0.03815, 0.5743, 0.8828, 0.0, 0.0, 0.0],
    ];
    hartmann(&xs(h, 3), &A, &P)
}

pub fn hartmann6(h: &Params) -> f64 {
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
    hartmann(&xs(h, 6), &A, &P)
}

pub fn styblinski_tang(x: &[f64]) -> f64 {
    0.5 * x.iter().map(|v| v.powi(4) - 16.0 * v * v + 5.0 * v).sum::<f64>()
}

pub fn styblinski6(h: &Params) -> f64 {
    styblinski_tang(&xs(h, 6))
}

pub fn rosenbrock10(h: &Params) -> f64 {
    xs(h, 10).windows(2).map(|w| 100.0 * (w[1] - w[0] * w[0]).powi(2) + (1.0 - w[0]).powi(2)).sum()
}

pub fn rastrigin(x: &[f64]) -> f64 {
    10.0 * x.len() as f64 + x.iter().map(|v| v * v - 10.0 * (2.0 * std::f64::consts::PI * v).cos()).sum::<f64>()
}

pub fn rastrigin10(h: &Params) -> f64 {
    rastrigin(&xs(h, 10))
}

pub fn ackley(x: &[f64]) -> f64 {
    let d = x.len() as f64;
    let pi2 = 2.0 * std::f64::consts::PI;
    -20.0 * (-0.2 * (x.iter().map(|v| v * v).sum::<f64>() / d).sqrt()).exp()
        - (x.iter().map(|v| (pi2 * v).cos()).sum::<f64>() / d).exp()
        + 20.0
        + std::f64::consts::E
}

pub fn ackley10(h: &Params) -> f64 {
    ackley(&xs(h, 10))
}

pub fn ackley20(h: &Params) -> f64 {
    ackley(&xs(h, 20))
}

pub fn levy10(h: &Params) -> f64 {
    let pi = std::f64::consts::PI;
    let w: Vec<f64> = xs(h, 10).iter().map(|v| 1.0 + (v - 1.0) / 4.0).collect();
    let last = w[w.len() - 1];
    (pi * w[0]).sin().powi(2)
        + w[..w.len() - 1].iter().map(|v| (v - 1.0).powi(2) * (1.0 + 10.0 * (pi * v + 1.0).sin().powi(2))).sum::<f64>()
        + (last - 1.0).powi(2) * (1.0 + (2.0 * pi * last).sin().powi(2))
}

/// Continuous + integer + categorical: the earlier benchmark's mixed problem.
pub fn mixed(h: &Params) -> f64 {
    let penalty = match h["kind"].as_str() {
        "a" => 0.5,
        "b" => 0.0,
        _ => 1.0,
    };
    (num(h, "n") - 7.0).powi(2) / 10.0 + (num(h, "y") - 0.3).powi(2) * 4.0 + penalty
}

pub const MIXED_RANGES: &str = r#"{"IntegerParameterRanges": [{"Name": "n", "MinValue": "0", "MaxValue": "10", "ScalingType": "Linear"}],
    "ContinuousParameterRanges": [{"Name": "y", "MinValue": "0", "MaxValue": "1", "ScalingType": "Linear"}],
    "CategoricalParameterRanges": [{"Name": "kind", "Values": ["a", "b", "c"]}]}"#;

/// A network's validation loss as a function of its training set-up: the best learning rate
/// depends on the optimiser (an interaction a model must learn per category).
pub fn network(h: &Params) -> f64 {
    let (best_lr, optimiser) = match h["optimizer"].as_str() {
        "sgd" => (-1.0, 0.15),
        "adam" => (-3.0, 0.0),
        "rmsprop" => (-2.5, 0.05),
        _ => (-1.5, 0.3),
    };
    let activation = match h["activation"].as_str() {
        "relu" => 0.0,
        "tanh" => 0.1,
        _ => 0.4,
    };
    (num(h, "lr").log10() - best_lr).powi(2) * 0.25
        + (num(h, "layers") - 4.0).powi(2) * 0.05
        + (num(h, "units").log2() - 7.0).powi(2) * 0.08
        + optimiser
        + activation
}

pub const NETWORK_RANGES: &str = r#"{"ContinuousParameterRanges": [{"Name": "lr", "MinValue": "0.0001", "MaxValue": "1", "ScalingType": "Logarithmic"}],
    "IntegerParameterRanges": [{"Name": "layers", "MinValue": "1", "MaxValue": "8", "ScalingType": "Linear"},
                               {"Name": "units", "MinValue": "16", "MaxValue": "512", "ScalingType": "Logarithmic"}],
    "CategoricalParameterRanges": [{"Name": "optimizer", "Values": ["sgd", "adam", "rmsprop", "adagrad"]},
                                   {"Name": "activation", "Values": ["relu", "tanh", "sigmoid"]}]}"#;

/// Integers and categoricals only: four integer counts whose best values depend on a
/// five-valued categorical, and a three-valued one.
pub fn counts(h: &Params) -> f64 {
    let (centre, family) = match h["family"].as_str() {
        "p" => (3.0, 0.3),
        "q" => (7.0, 0.0),
        "r" => (12.0, 0.6),
        "s" => (16.0, 0.2),
        _ => (10.0, 0.9),
    };
    let style = match h["style"].as_str() {
        "u" => 0.5,
        "v" => 0.0,
        _ => 1.0,
    };
    ["a", "b", "c", "d"]
        .iter()
        .enumerate()
        .map(|(k, name)| (num(h, name) - centre - k as f64).powi(2) / 20.0)
        .sum::<f64>()
        + family
        + style
}

pub const COUNTS_RANGES: &str = r#"{"IntegerParameterRanges": [{"Name": "a", "MinValue": "0", "MaxValue": "20", "ScalingType": "Linear"},
                               {"Name": "b", "MinValue": "0", "MaxValue": "20", "ScalingType": "Linear"},
                               {"Name": "c", "MinValue": "0", "MaxValue": "20", "ScalingType": "Linear"},
                               {"Name": "d", "MinValue": "0", "MaxValue": "20", "ScalingType": "Linear"}],
    "CategoricalParameterRanges": [{"Name": "family", "Values": ["p", "q", "r", "s", "t"]},
                                   {"Name": "style", "Values": ["u", "v", "w"]}]}"#;

/// A test problem: its ranges, the optimum a best-so-far regret is measured from, the noise the
/// strategy sees.
pub struct Problem {
    pub name: &'static str,
    /// What kind of problem it stands for (rows of the summary).
    pub kind: &'static str,
    pub ranges: String,
    pub optimum: f64,
    /// Standard deviation of the noise the strategy sees (0: none).
    pub noise: f64,
    pub f: fn(&Params) -> f64,
}

pub fn problems() -> Vec<Problem> {
    let p = |name, kind, ranges: String, optimum, noise, f| Problem { name, kind, ranges, optimum, noise, f };
    vec![
        p("branin", "2-3 D smooth", bounds(&[(-5.0, 10.0), (0.0, 15.0)]), 0.397_887, 0.0, branin as fn(&Params) -> f64),
        p("camel6", "2-3 D smooth", bounds(&[(-3.0, 3.0), (-2.0, 2.0)]), -1.031_628_453_489_877, 0.0, six_hump_camel),
        p("goldstein", "2-3 D smooth", boxed(2, -2.0, 2.0), 3.0, 0.0, goldstein_price),
        p("hartmann3", "2-3 D smooth", boxed(3, 0.0, 1.0), -3.862_78, 0.0, hartmann3),
        p("hartmann6", "6 D smooth", boxed(6, 0.0, 1.0), -3.322_37, 0.0, hartmann6),
        p("styblinski6", "6 D smooth", boxed(6, -5.0, 5.0), -39.166_165_703_771_42 * 6.0, 0.0, styblinski6),
        p("rosenbrock10", "10-20 D", boxed(10, -2.0, 2.0), 0.0, 0.0, rosenbrock10),
        p("rastrigin10", "10-20 D", boxed(10, -5.12, 5.12), 0.0, 0.0, rastrigin10),
        p("ackley10", "10-20 D", boxed(10, -32.768, 32.768), 0.0, 0.0, ackley10),
        p("levy10", "10-20 D", boxed(10, -10.0, 10.0), 0.0, 0.0, levy10),
        p("ackley20", "10-20 D", boxed(20, -32.768, 32.768), 0.0, 0.0, ackley20),
        p("mixed", "mixed", MIXED_RANGES.to_string(), 0.0, 0.0, mixed),
        p("network", "mixed", NETWORK_RANGES.to_string(), 0.0, 0.0, network),
        p("counts", "mixed", COUNTS_RANGES.to_string(), 0.0, 0.0, counts),
        p("hartmann6-noisy", "noisy", boxed(6, 0.0, 1.0), -3.322_37, 0.1, hartmann6),
        p("network-noisy", "noisy", NETWORK_RANGES.to_string(), 0.0, 0.1, network),
    ]
}

/// SplitMix64: the noise generator both this benchmark and the Optuna script implement, so that
/// trial `i` of seed `s` sees the same noise in both.
pub fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A standard normal draw for trial `index` of `seed` (Box–Muller on two SplitMix64 outputs).
pub fn gaussian(seed: u64, index: u64) -> f64 {
    let a = splitmix(seed.wrapping_mul(1_000_003).wrapping_add(2 * index));
    let b = splitmix(seed.wrapping_mul(1_000_003).wrapping_add(2 * index + 1));
    let u1 = ((a >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    let u2 = (b >> 11) as f64 / (1u64 << 53) as f64;
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// A trial of a run: what was tried, the value the strategy saw (with the problem's noise), and
/// the true value.
pub struct Trial {
    pub hyperparameters: Params,
    pub seen: f64,
    pub truth: f64,
}

fn evaluated(p: &Problem, seed: u64, index: u64, hyperparameters: Params) -> Trial {
    let truth = (p.f)(&hyperparameters);
    Trial { seen: truth + p.noise * gaussian(seed, index), truth, hyperparameters }
}

fn finished(trials: &[Trial]) -> Vec<Finished> {
    trials.iter().map(|t| Finished { hyper_parameters: t.hyperparameters.clone(), value: -t.seen }).collect()
}

/// `trials` trials in batches of `batch`, each batch suggested before any of its results is
/// known (as Optuna's TPE is run).
pub fn in_batches(
    strategy: &Strategy,
    space: &SearchSpace,
    p: &Problem,
    seed: u64,
    batch: u64,
    trials: u64,
) -> Vec<Trial> {
    let mut done: Vec<Trial> = Vec::new();
    while (done.len() as u64) < trials {
        let first = done.len() as u64;
        let known = finished(&done);
        let mut pending: Vec<Params> = Vec::new();
        for index in first..(first + batch).min(trials) {
            pending.push(strategy.suggest(space, seed, index, Some(trials), &known, &pending).expect("a suggestion"));
        }
        done.extend(pending.into_iter().zip(first..).map(|(h, index)| evaluated(p, seed, index, h)));
    }
    done
}

/// `trials` trials, `parallel` at a time as the coordinator runs them: a trial is suggested when a
/// slot frees, beside the others still running; trials of equal length end in the order they
/// started. So trial `i` is suggested with trials `0..=i - parallel` finished and the rest since
/// running.
pub fn as_the_coordinator_runs(
    strategy: &Strategy,
    space: &SearchSpace,
    p: &Problem,
    seed: u64,
    parallel: u64,
    trials: u64,
) -> Vec<Trial> {
    let mut done: Vec<Trial> = Vec::new();
    for index in 0..trials {
        let ended = (index + 1).saturating_sub(parallel) as usize;
        let pending: Vec<Params> = done[ended..].iter().map(|t| t.hyperparameters.clone()).collect();
        let h = strategy
            .suggest(space, seed, index, Some(trials), &finished(&done[..ended]), &pending)
            .expect("a suggestion");
        done.push(evaluated(p, seed, index, h));
    }
    done
}

/// Best-so-far regret after each trial: the true value of the trial that looked best so far
/// (what a user who picks the best-looking trial gets), less the optimum.
pub fn regrets(trials: &[Trial], optimum: f64) -> Vec<f64> {
    let mut best = (f64::INFINITY, f64::INFINITY);
    trials
        .iter()
        .map(|t| {
            if t.seen < best.0 {
                best = (t.seen, t.truth);
            }
            best.1 - optimum
        })
        .collect()
}

/// (first quartile, median, third quartile).
pub fn quartiles(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    (at(0.25), at(0.5), at(0.75))
}

/// Beyond chance, by this two-sided p-value.
pub const SIGNIFICANCE: f64 = 0.05;

/// Two-sided p-value of the Mann–Whitney U test that `a` and `b` come from the same distribution
/// (normal approximation with tie and continuity corrections, as scipy's `mannwhitneyu` computes
/// it for samples this size). Two strategies that draw from the same distribution — both still in
/// their start, say — have different medians over 40 seeds every time; this says when a
/// difference is more than that.
pub fn mann_whitney_p(a: &[f64], b: &[f64]) -> f64 {
    let (n1, n2) = (a.len() as f64, b.len() as f64);
    let mut all: Vec<(f64, bool)> = a.iter().map(|v| (*v, true)).chain(b.iter().map(|v| (*v, false))).collect();
    all.sort_by(|x, y| x.0.total_cmp(&y.0));
    let n = all.len();
    let (mut rank_sum_a, mut ties, mut i) = (0.0, 0.0, 0);
    while i < n {
        let mut j = i;
        while j + 1 < n && all[j + 1].0 == all[i].0 {
            j += 1;
        }
        // Tied values share the mean of their ranks (1-based).
        let rank = (i + j) as f64 / 2.0 + 1.0;
        rank_sum_a += all[i..=j].iter().filter(|(_, from_a)| *from_a).count() as f64 * rank;
        let t = (j - i + 1) as f64;
        ties += t * t * t - t;
        i = j + 1;
    }
    let u = rank_sum_a - n1 * (n1 + 1.0) / 2.0;
    let total = n1 + n2;
    let sigma = (n1 * n2 / 12.0 * ((total + 1.0) - ties / (total * (total - 1.0)))).sqrt();
    if sigma == 0.0 {
        return 1.0;
    }
    let z = ((u - n1 * n2 / 2.0).abs() - 0.5).max(0.0) / sigma;
    erfc(z / std::f64::consts::SQRT_2).min(1.0)
}

/// The complementary error function (Numerical Recipes' Chebyshev fit, relative error < 1.2e-7).
fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98 + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let r = t * poly.exp();
    if x >= 0.0 { r } else { 2.0 - r }
}

/// Ours against theirs, lower being better: "ahead", "behind" or "even" (not beyond chance), and
/// the test's p-value.
pub fn versus(ours: &[f64], theirs: &[f64]) -> (&'static str, f64) {
    let p = mann_whitney_p(ours, theirs);
    if p >= SIGNIFICANCE {
        return ("even", p);
    }
    let median = |v: &[f64]| quartiles(v.to_vec()).1;
    (if median(ours) < median(theirs) { "ahead" } else { "behind" }, p)
}
