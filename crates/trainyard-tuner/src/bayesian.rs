//! Bayesian optimisation: a Gaussian-process surrogate over the unit cube and expected improvement.
//!
//! * Kernel: Matérn 5/2 on numeric coordinates, and an overlap kernel on categorical ones (same
//!   value or not), so categories have no false order.
//! * The length scale is chosen by marginal likelihood from a small grid; outputs are standardised.
//! * Cost is bounded: the model keeps the best and the most recent [`MAX_POINTS`] observations, and
//!   scores [`CANDIDATES`] candidates (random, plus perturbations of the best points), so a
//!   suggestion costs the same at 1,000 finished trials as at 100.
//! * Trials running in parallel are taken into account with the "constant liar": each pending
//!   point is added as if it had returned the best value so far, which pushes new suggestions away.
//! * Deterministic: the candidates come from a generator seeded with (seed, trial index).

use rand::RngExt;
use rand_chacha::ChaCha8Rng;

/// Observations the surrogate is fitted on, at most.
pub const MAX_POINTS: usize = 100;
/// Candidates scored per suggestion.
pub const CANDIDATES: usize = 320;

/// The observations the model keeps when there are more than [`MAX_POINTS`]: the most recent half
/// and the best half of the rest. Linear in the number of observations.
pub fn keep<T: Copy>(items: &[T], value: impl Fn(&T) -> f64) -> Vec<T> {
    if items.len() <= MAX_POINTS {
        return items.to_vec();
    }
    let split = items.len() - MAX_POINTS / 2;
    let mut older: Vec<T> = items[..split].to_vec();
    let k = MAX_POINTS / 2;
    older.select_nth_unstable_by(k - 1, |a, b| value(b).total_cmp(&value(a)));
    older.truncate(k);
    older.extend_from_slice(&items[split..]);
    older
}

/// A finished trial: where it was (unit cube) and its objective, larger is better.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub point: Vec<f64>,
    pub value: f64,
}

/// Which coordinates are categorical (how many values) and which are numeric.
#[derive(Debug, Clone, PartialEq)]
pub enum Dim {
    Numeric,
    Categorical(usize),
}

fn category(u: f64, n: usize) -> usize {
    ((u * n as f64) as usize).min(n.saturating_sub(1))
}

fn kernel(a: &[f64], b: &[f64], dims: &[Dim], length: f64) -> f64 {
    let mut r2 = 0.0;
    let mut mismatches = 0.0;
    for ((x, y), d) in a.iter().zip(b).zip(dims) {
        match d {
            Dim::Numeric => r2 += ((x - y) / length).powi(2),
            Dim::Categorical(n) => {
                if category(*x, *n) != category(*y, *n) {
                    mismatches += 1.0;
                }
            }
        }
    }
    let r = r2.sqrt() * 5f64.sqrt();
    let matern = (1.0 + r + r * r / 3.0) * (-r).exp();
    matern * (-mismatches / dims.len().max(1) as f64 * 2.0).exp()
}

/// Lower-triangular Cholesky factor of a symmetric positive-definite matrix (row-major n×n).
fn cholesky(a: &[f64], n: usize) -> Option<Vec<f64>> {
    let mut l = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..=i {
            let mut sum = a[i * n + j];
            for k in 0..j {
                sum -= l[i * n + k] * l[j * n + k];
            }
            if i == j {
                if sum <= 0.0 {
                    return None;
                }
                l[i * n + i] = sum.sqrt();
            } else {
                l[i * n + j] = sum / l[j * n + j];
            }
        }
    }
    Some(l)
}

/// Solves L x = b (forward substitution).
fn forward(l: &[f64], n: usize, b: &[f64]) -> Vec<f64> {
    let mut x = vec![0.0; n];
    for i in 0..n {
        let mut s = b[i];
        for k in 0..i {
            s -= l[i * n + k] * x[k];
        }
        x[i] = s / l[i * n + i];
    }
    x
}

/// Solves Lᵀ x = b (back substitution).
fn backward(l: &[f64], n: usize, b: &[f64]) -> Vec<f64> {
    let mut x = vec![0.0; n];
    for i in (0..n).rev() {
        let mut s = b[i];
        for k in i + 1..n {
            s -= l[k * n + i] * x[k];
        }
        x[i] = s / l[i * n + i];
    }
    x
}

struct Model {
    points: Vec<Vec<f64>>,
    l: Vec<f64>,
    alpha: Vec<f64>,
    length: f64,
    mean: f64,
    scale: f64,
}

const NOISE: f64 = 1e-4;

impl Model {
    fn fit(obs: &[Observation], dims: &[Dim]) -> Option<Model> {
        let n = obs.len();
        let mean = obs.iter().map(|o| o.value).sum::<f64>() / n as f64;
        let var = obs.iter().map(|o| (o.value - mean).powi(2)).sum::<f64>() / n as f64;
        let scale = if var > 1e-18 { var.sqrt() } else { 1.0 };
        let y: Vec<f64> = obs.iter().map(|o| (o.value - mean) / scale).collect();
        let mut best: Option<(f64, Model)> = None;
        for length in [0.08, 0.15, 0.3, 0.6] {
            let mut k = vec![0.0; n * n];
            for i in 0..n {
                for j in 0..=i {
                    let v = kernel(&obs[i].point, &obs[j].point, dims, length);
                    k[i * n + j] = v;
                    k[j * n + i] = v;
                }
                k[i * n + i] += NOISE;
            }
            let Some(l) = cholesky(&k, n) else { continue };
            let alpha = backward(&l, n, &forward(&l, n, &y));
            // log marginal likelihood (up to a constant): -½ yᵀα - Σ log L_ii
            let fit = -0.5 * y.iter().zip(&alpha).map(|(a, b)| a * b).sum::<f64>()
                - (0..n).map(|i| l[i * n + i].ln()).sum::<f64>();
            if best.as_ref().is_none_or(|(f, _)| fit > *f) {
                let points = obs.iter().map(|o| o.point.clone()).collect();
                best = Some((fit, Model { points, l, alpha, length, mean, scale }));
            }
        }
        best.map(|(_, m)| m)
    }

    /// Posterior mean and standard deviation (standardised units).
    fn predict(&self, x: &[f64], dims: &[Dim]) -> (f64, f64) {
        let n = self.points.len();
        let k: Vec<f64> = self.points.iter().map(|p| kernel(p, x, dims, self.length)).collect();
        let mu = k.iter().zip(&self.alpha).map(|(a, b)| a * b).sum::<f64>();
        let v = forward(&self.l, n, &k);
        let var = (1.0 + NOISE - v.iter().map(|x| x * x).sum::<f64>()).max(1e-12);
        (mu, var.sqrt())
    }
}

fn normal_pdf(z: f64) -> f64 {
    (-0.5 * z * z).exp() / (2.0 * std::f64::consts::PI).sqrt()
}

/// Φ(z) from erf via Abramowitz–Stegun 7.1.26 (error < 1.5e-7: plenty for ranking candidates).
fn normal_cdf(z: f64) -> f64 {
    let x = z.abs() / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * x);
    let poly =
        t * (0.254_829_592 + t * (-0.284_496_736 + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let erf = 1.0 - poly * (-x * x).exp();
    if z >= 0.0 { 0.5 * (1.0 + erf) } else { 0.5 * (1.0 - erf) }
}

fn expected_improvement(mu: f64, sigma: f64, best: f64) -> f64 {
    let z = (mu - best) / sigma;
    (mu - best) * normal_cdf(z) + sigma * normal_pdf(z)
}

/// The next point to try, given finished observations (larger is better) and points still
/// running. `rng` must be seeded by the caller for determinism.
pub fn suggest(dims: &[Dim], observations: &[Observation], pending: &[Vec<f64>], rng: &mut ChaCha8Rng) -> Vec<f64> {
    let d = dims.len();
    let random_point = |rng: &mut ChaCha8Rng| (0..d).map(|_| rng.random::<f64>()).collect::<Vec<f64>>();
    if observations.len() < 2 || d == 0 {
        return random_point(rng);
    }
    // Bounded model: the best half and the most recent half of MAX_POINTS.
    let refs: Vec<&Observation> = observations.iter().collect();
    let mut kept: Vec<Observation> = keep(&refs, |o| o.value).into_iter().cloned().collect();
    let best = kept.iter().map(|o| o.value).fold(f64::MIN, f64::max);
    // Constant liar: running trials count as having returned the best value.
    for p in pending.iter().take(MAX_POINTS / 4) {
        kept.push(Observation { point: p.clone(), value: best });
    }
    let Some(model) = Model::fit(&kept, dims) else { return random_point(rng) };
    let best_z = (best - model.mean) / model.scale;

    let mut anchors: Vec<&Observation> = observations.iter().collect();
    anchors.sort_by(|a, b| b.value.total_cmp(&a.value));
    anchors.truncate(5);
    let mut best_candidate = (f64::MIN, random_point(rng));
    for i in 0..CANDIDATES {
        let candidate: Vec<f64> = if i % 2 == 0 || anchors.is_empty() {
            random_point(rng)
        } else {
            // Local search around a good point.
            let anchor = anchors[i % anchors.len()];
            anchor
                .point
                .iter()
                .zip(dims)
                .map(|(x, dim)| match dim {
                    Dim::Numeric => (x + (rng.random::<f64>() - 0.5) * 0.2).clamp(0.0, 0.999_999),
                    Dim::Categorical(_) if rng.random::<f64>() < 0.2 => rng.random::<f64>(),
                    Dim::Categorical(_) => *x,
                })
                .collect()
        };
        let (mu, sigma) = model.predict(&candidate, dims);
        let ei = expected_improvement(mu, sigma, best_z);
        if ei > best_candidate.0 {
            best_candidate = (ei, candidate);
        }
    }
    best_candidate.1
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn the_model_keeps_the_best_and_the_most_recent() {
        let values: Vec<f64> = (0..1000).map(|i| f64::from((i * 7919) % 1000)).collect();
        let kept = keep(&values, |v| *v);
        assert_eq!(kept.len(), MAX_POINTS);
        let mut older: Vec<f64> = values[..1000 - MAX_POINTS / 2].to_vec();
        older.sort_by(|a, b| b.total_cmp(a));
        let mut best: Vec<f64> = kept[..MAX_POINTS / 2].to_vec();
        best.sort_by(|a, b| b.total_cmp(a));
        assert_eq!(best, older[..MAX_POINTS / 2], "the best half of the older ones");
        assert_eq!(&kept[MAX_POINTS / 2..], &values[1000 - MAX_POINTS / 2..], "and the most recent");
        assert_eq!(keep(&values[..10], |v| *v), values[..10].to_vec());
    }

    #[test]
    fn cholesky_solves_a_known_system() {
        // A = [[4, 2], [2, 3]] → L = [[2, 0], [1, √2]]
        let l = cholesky(&[4.0, 2.0, 2.0, 3.0], 2).expect("spd");
        assert!((l[0] - 2.0).abs() < 1e-12 && (l[2] - 1.0).abs() < 1e-12 && (l[3] - 2f64.sqrt()).abs() < 1e-12);
        let x = backward(&l, 2, &forward(&l, 2, &[2.0, 5.0]));
        // A x = b → x = [-0.5, 2]
        assert!((x[0] + 0.5).abs() < 1e-12 && (x[1] - 2.0).abs() < 1e-12, "{x:?}");
        assert!(cholesky(&[1.0, 2.0, 2.0, 1.0], 2).is_none(), "not positive definite");
    }

    #[test]
    fn the_posterior_interpolates_what_it_saw() {
        let dims = [Dim::Numeric];
        let obs: Vec<Observation> = [0.1, 0.4, 0.7, 0.9]
            .iter()
            .map(|&x: &f64| Observation { point: vec![x], value: (6.0 * x).sin() })
            .collect();
        let m = Model::fit(&obs, &dims).expect("fits");
        for o in &obs {
            let (mu, sigma) = m.predict(&o.point, &dims);
            assert!((mu * m.scale + m.mean - o.value).abs() < 1e-2, "mean at an observation");
            assert!(sigma < 0.05, "little uncertainty where it has seen data: {sigma}");
        }
        let (_, far) = m.predict(&[0.25], &dims);
        assert!(far > 0.01);
    }

    #[test]
    fn normal_cdf_is_accurate() {
        for (z, want) in [(0.0, 0.5), (1.0, 0.841_344_746), (-1.96, 0.024_997_895)] {
            assert!((normal_cdf(z) - want).abs() < 1e-6, "{z}");
        }
    }

    #[test]
    fn it_finds_the_peak_of_a_smooth_function_faster_than_chance() {
        // f(x, y) = -(x - 0.73)^2 - (y - 0.21)^2, 20 trials, averaged over seeds.
        let f = |p: &[f64]| -(p[0] - 0.73).powi(2) - (p[1] - 0.21).powi(2);
        let dims = [Dim::Numeric, Dim::Numeric];
        let (mut bayes, mut random) = (0.0, 0.0);
        for seed in 0..5 {
            let mut obs = Vec::new();
            let mut rnd_best = f64::MIN;
            let mut rng_random = ChaCha8Rng::seed_from_u64(1000 + seed);
            for i in 0..20 {
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                rng.set_stream(i);
                let p = suggest(&dims, &obs, &[], &mut rng);
                obs.push(Observation { value: f(&p), point: p });
                let q = [rng_random.random::<f64>(), rng_random.random::<f64>()];
                rnd_best = rnd_best.max(f(&q));
            }
            bayes += obs.iter().map(|o| o.value).fold(f64::MIN, f64::max);
            random += rnd_best;
        }
        assert!(bayes / 5.0 > -0.002, "Bayesian gets within ~0.045 of the peak: {}", bayes / 5.0);
        assert!(bayes > random, "and beats random search: {bayes} vs {random}");
    }

    #[test]
    fn pending_points_push_suggestions_apart_and_categories_are_not_ordered() {
        let dims = [Dim::Numeric, Dim::Categorical(3)];
        let obs = vec![
            Observation { point: vec![0.2, 0.1], value: 0.0 },
            Observation { point: vec![0.8, 0.5], value: 1.0 },
            Observation { point: vec![0.5, 0.9], value: 0.2 },
        ];
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let first = suggest(&dims, &obs, &[], &mut rng);
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let second = suggest(&dims, &obs, std::slice::from_ref(&first), &mut rng);
        assert_ne!(first, second, "a running trial is not suggested again");
        assert!(first.iter().chain(&second).all(|x| (0.0..1.0).contains(x)));
    }
}
