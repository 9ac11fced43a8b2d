//! Bayesian optimisation: a Gaussian-process surrogate over the unit cube and expected improvement.
//!
//! * Outputs are warped: half the normal score of their rank (a Gaussian copula: a function
//!   spanning orders of magnitude, or a few disastrous trials, do not flatten the model), half
//!   their log-distance from the best (so that the model still sees small improvements near the
//!   top, where a search ends).
//! * Kernel: Matérn 5/2 with a length scale per dimension (ARD), fitted by maximising the marginal
//!   likelihood (Adam on log scales, analytic gradients) with the dimension-scaled log-normal prior
//!   on length scales (Hvarfner et al., 2024) and a learned noise level. Integers are snapped to
//!   their values and categoricals compared by value (same or not, with a length scale of their
//!   own), so neither has a false continuum between values.
//! * Trials still running count as returning what the model predicts for them (the "Kriging
//!   believer"): the model becomes certain there, so parallel suggestions spread out instead of
//!   piling onto one spot.
//! * The acquisition is optimised: random candidates, perturbations of the best points in a few
//!   coordinates at a time (what works in high dimensions), then a local search from the best:
//!   gradient ascent (analytic gradient of the expected improvement) from 6-D on when no trial is
//!   running, and random steps.
//! * Cost is bounded: the model keeps the best and the most recent [`MAX_POINTS`] observations and
//!   fits its hyperparameters on at most [`FIT_POINTS`] of them, so a suggestion costs the same at
//!   1,000 finished trials as at 100.
//! * Deterministic: every random draw comes from the generator the caller seeded.

use rand::RngExt;
use rand_chacha::ChaCha8Rng;

/// Observations the surrogate is conditioned on, at most.
pub const MAX_POINTS: usize = 100;
/// Observations its hyperparameters are fitted on, at most (the best and the most recent).
pub const FIT_POINTS: usize = 48;
/// Random candidates scored per suggestion (then as many around the best points, then a local search).
pub const CANDIDATES: usize = 256;
/// Gradient steps of the acquisition's local search, at most.
const ASCENT_STEPS: usize = 30;
/// A perturbation of a good point moves about this many coordinates (all of them up to 20-D).
const PERTURBED_COORDINATES: f64 = 20.0;
/// From this many dimensions on, random candidates and the local search stay in a trust region
/// around the incumbent...
const TRUST_REGION_DIMENSIONS: usize = 6;
/// ... whose side is this fraction of the unit cube (for the geometric mean length scale).
const TRUST_REGION_SIDE: f64 = 0.4;
/// From this many dimensions on, the acquisition is refined by gradient beside running trials
/// too (from [`TRUST_REGION_DIMENSIONS`] on when none runs).
const REFINED_BESIDE_RUNNING_DIMENSIONS: usize = 10;

/// The observations the model keeps when there are more than `limit`: the most recent half and
/// the best half of the rest. Linear in the number of observations.
pub fn keep_at_most<T: Clone>(items: &[T], limit: usize, value: impl Fn(&T) -> f64) -> Vec<T> {
    if items.len() <= limit {
        return items.to_vec();
    }
    let split = items.len() - limit / 2;
    let mut older: Vec<T> = items[..split].to_vec();
    let k = limit - limit / 2;
    older.select_nth_unstable_by(k - 1, |a, b| value(b).total_cmp(&value(a)));
    older.truncate(k);
    older.extend_from_slice(&items[split..]);
    older
}

/// [`keep_at_most`] with [`MAX_POINTS`].
pub fn keep<T: Clone>(items: &[T], value: impl Fn(&T) -> f64) -> Vec<T> {
    keep_at_most(items, MAX_POINTS, value)
}

/// A finished trial: where it was (unit cube) and its objective, larger is better.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub point: Vec<f64>,
    pub value: f64,
}

/// What a coordinate of the unit cube stands for.
#[derive(Debug, Clone, PartialEq)]
pub enum Dim {
    /// A continuous range.
    Numeric,
    /// An integer range: where each of its values sits in [0, 1), in order. A suggestion lands on
    /// one of them.
    Integer(Vec<f64>),
    /// A categorical range of this many values, each an equal share of [0, 1).
    Categorical(usize),
}

fn category(u: f64, n: usize) -> usize {
    ((u * n as f64) as usize).min(n.saturating_sub(1))
}

impl Dim {
    /// The coordinate `u` as the model sees it: an integer's nearest value, a category's centre.
    pub fn snap(&self, u: f64) -> f64 {
        let u = u.clamp(0.0, 0.999_999);
        match self {
            Dim::Numeric => u,
            Dim::Integer(levels) if levels.is_empty() => u,
            Dim::Integer(levels) => {
                let at = levels.partition_point(|l| *l < u);
                let below = at.checked_sub(1).map(|i| levels[i]);
                let above = levels.get(at).copied();
                match (below, above) {
                    (Some(b), Some(a)) => {
                        if u - b <= a - u {
                            b
                        } else {
                            a
                        }
                    }
                    (Some(b), None) => b,
                    (None, Some(a)) => a,
                    (None, None) => u,
                }
            }
            Dim::Categorical(n) => (category(u, *n) as f64 + 0.5) / *n as f64,
        }
    }

    /// A unit of "distance" along this coordinate between two points (before the length scale).
    fn gap(&self, a: f64, b: f64) -> f64 {
        match self {
            Dim::Categorical(n) => {
                if category(a, *n) == category(b, *n) {
                    0.0
                } else {
                    1.0
                }
            }
            _ => (a - b) * (a - b),
        }
    }
}

/// Lower-triangular Cholesky factor of a symmetric positive-definite matrix (row-major n×n).
fn cholesky(a: &[f64], n: usize) -> Option<Vec<f64>> {
    let mut l = vec![0.0; n * n];
    cholesky_rows(a, n, &mut l, 0)?;
    Some(l)
}

/// Rows `from..n` of the Cholesky factor `l` of `a` (both row-major n×n), rows before `from`
/// already in `l`: a factor grows by the rows of points added to its matrix, each row computed
/// exactly as a factorisation from scratch would. None when `a` is not positive definite.
fn cholesky_rows(a: &[f64], n: usize, l: &mut [f64], from: usize) -> Option<()> {
    for i in from..n {
        for j in 0..=i {
            let sum = a[i * n + j] - dot(&l[i * n..i * n + j], &l[j * n..j * n + j]);
            if i == j {
                if sum <= 0.0 || !sum.is_finite() {
                    return None;
                }
                l[i * n + i] = sum.sqrt();
            } else {
                l[i * n + j] = sum / l[j * n + j];
            }
        }
    }
    Some(())
}

/// Σ aᵢbᵢ in four independent sums, which the compiler can keep in vector registers (one running
/// sum cannot be: floating-point addition is not reassociated). Most of a suggestion's time is
/// spent here, in triangular solves.
fn dot(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut sums = [0.0; 4];
    let (a4, b4) = (a.chunks_exact(4), b.chunks_exact(4));
    let (a_rest, b_rest) = (a4.remainder(), b4.remainder());
    for (x, y) in a4.zip(b4) {
        for lane in 0..4 {
            sums[lane] += x[lane] * y[lane];
        }
    }
    let rest: f64 = a_rest.iter().zip(b_rest).map(|(x, y)| x * y).sum();
    (sums[0] + sums[1]) + (sums[2] + sums[3]) + rest
}

/// Solves L x = b (forward substitution).
fn forward(l: &[f64], n: usize, b: &[f64]) -> Vec<f64> {
    let mut x = vec![0.0; n];
    for i in 0..n {
        let s = b[i] - dot(&l[i * n..i * n + i], &x[..i]);
        x[i] = s / l[i * n + i];
    }
    x
}

/// [`forward`] for four right-hand sides at once, each to the bit as [`forward`] solves it alone
/// (the same four-lane sums as [`dot`], in the same order). One right-hand side's sums form a
/// chain of dependent additions; four of them side by side keep the floating-point units busy,
/// and each row of `l` is read once for all four.
fn forward4(l: &[f64], n: usize, b: [&[f64]; 4]) -> [Vec<f64>; 4] {
    let mut x: [Vec<f64>; 4] = std::array::from_fn(|_| vec![0.0; n]);
    for i in 0..n {
        let row = &l[i * n..i * n + i];
        let whole = i / 4 * 4;
        let mut sums = [[0.0; 4]; 4];
        for (c, l4) in row[..whole].chunks_exact(4).enumerate() {
            for (r, sum) in sums.iter_mut().enumerate() {
                let x4 = &x[r][c * 4..c * 4 + 4];
                for lane in 0..4 {
                    sum[lane] += l4[lane] * x4[lane];
                }
            }
        }
        for (r, sum) in sums.iter().enumerate() {
            let rest: f64 = row[whole..].iter().zip(&x[r][whole..i]).map(|(a, b)| a * b).sum();
            let dot = (sum[0] + sum[1]) + (sum[2] + sum[3]) + rest;
            x[r][i] = (b[r][i] - dot) / l[i * n + i];
        }
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

/// The inverse of L Lᵀ from L (row-major n×n): L⁻¹ by forward substitution, then L⁻ᵀ L⁻¹
/// (about n³/3 multiplications, a third of solving for each column).
fn inverse_from_cholesky(l: &[f64], n: usize) -> Vec<f64> {
    // L⁻¹ is lower triangular; kept transposed (`t[j*n + i]` = L⁻¹_ij) so that both sums below
    // run along rows.
    let mut t = vec![0.0; n * n];
    for i in 0..n {
        t[i * n + i] = 1.0 / l[i * n + i];
        for j in 0..i {
            // L⁻¹_ij = −(Σ_{j≤k<i} L_ik L⁻¹_kj) / L_ii
            t[j * n + i] = -dot(&l[i * n + j..i * n + i], &t[j * n + j..j * n + i]) / l[i * n + i];
        }
    }
    // (L⁻ᵀ L⁻¹)_ij = Σ_k≥max(i,j) L⁻¹_ki L⁻¹_kj
    let mut inverse = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..=i {
            let s = dot(&t[i * n + i..i * n + n], &t[j * n + i..j * n + n]);
            inverse[i * n + j] = s;
            inverse[j * n + i] = s;
        }
    }
    inverse
}

const SQRT5: f64 = 2.236_067_977_499_79;

/// Matérn 5/2 at distance r.
fn matern(r: f64) -> f64 {
    matern_with_decay(r, (-SQRT5 * r).exp())
}

/// Matérn 5/2 at distance r, given e^{−√5 r} (which its derivative needs too).
fn matern_with_decay(r: f64, decay: f64) -> f64 {
    (1.0 + SQRT5 * r + 5.0 * r * r / 3.0) * decay
}

/// The kernel's hyperparameters, in logs: a length scale per dimension, signal and noise variance.
#[derive(Debug, Clone, PartialEq)]
struct Hyper {
    log_length: Vec<f64>,
    log_signal: f64,
    log_noise: f64,
}

/// Noise variance (of standardised outputs) at least this: keeps the Cholesky factor stable.
const MIN_LOG_NOISE: f64 = -13.8;

impl Hyper {
    /// Where fitting starts: the prior's centre for length scales, a clean signal.
    fn start(d: usize) -> Hyper {
        Hyper { log_length: vec![length_prior_mean(d) - 1.0; d], log_signal: 0.0, log_noise: -6.0 }
    }

    fn as_vec(&self) -> Vec<f64> {
        let mut v = self.log_length.clone();
        v.push(self.log_signal);
        v.push(self.log_noise);
        v
    }

    /// 1/ℓ² per dimension: what a squared gap is scaled by.
    fn inverse_sq(&self) -> Vec<f64> {
        self.log_length.iter().map(|l| (-2.0 * l).exp()).collect()
    }

    fn signal(&self) -> f64 {
        self.log_signal.exp()
    }

    fn noise(&self) -> f64 {
        self.log_noise.exp()
    }

    fn from_vec(v: &[f64]) -> Hyper {
        let d = v.len() - 2;
        Hyper {
            log_length: v[..d].iter().map(|l| l.clamp(-4.0, 6.0)).collect(),
            log_signal: v[d].clamp(-4.0, 4.0),
            log_noise: v[d + 1].clamp(MIN_LOG_NOISE, 1.0),
        }
    }
}

/// The centre of the log-normal prior on length scales in `d` dimensions: √2 + ln(d)/2, so that
/// length scales grow like √d and the model stays smooth enough to learn in high dimensions.
fn length_prior_mean(d: usize) -> f64 {
    LENGTH_PRIOR_SHIFT + std::f64::consts::SQRT_2 + (d.max(1) as f64).ln() / 2.0
}

/// Added to the prior's centre: BoTorch's prior (shift 0) assumes smoother functions than
/// hyperparameter searches tend to be; with e^-1.5 ≈ 0.22 times its length scales our benchmark's
/// 2-D and 3-D problems are found several times faster and the 10-D ones no slower.
const LENGTH_PRIOR_SHIFT: f64 = -1.5;

const LENGTH_PRIOR_VARIANCE: f64 = 3.0;

/// Log prior density of the hyperparameters (up to a constant) and its gradient.
fn log_prior(h: &Hyper) -> (f64, Vec<f64>) {
    let d = h.log_length.len();
    let mean = length_prior_mean(d);
    let mut value = 0.0;
    let mut gradient = Vec::with_capacity(d + 2);
    for l in &h.log_length {
        value -= (l - mean).powi(2) / (2.0 * LENGTH_PRIOR_VARIANCE);
        gradient.push(-(l - mean) / LENGTH_PRIOR_VARIANCE);
    }
    // Signal variance near 1 (outputs are standardised); noise small unless the data say otherwise.
    value -= h.log_signal.powi(2) / 2.0;
    gradient.push(-h.log_signal);
    value -= (h.log_noise + 6.0).powi(2) / (2.0 * 4.0);
    gradient.push(-(h.log_noise + 6.0) / 4.0);
    (value, gradient)
}

/// Squared per-dimension gaps of every pair of points, for fitting (the same gaps at each step):
/// the pairs i > j in the order (1, 0), (2, 0), (2, 1), (3, 0), ..., `d` gaps each. Only one
/// triangle: half the memory, which at 48 points in 20-D is still 180 KiB.
fn pair_gaps(points: &[Vec<f64>], dims: &[Dim]) -> Vec<f64> {
    let n = points.len();
    let d = dims.len();
    let mut gaps = Vec::with_capacity(n * n.saturating_sub(1) / 2 * d);
    for i in 0..n {
        for j in 0..i {
            gaps.extend(dims.iter().enumerate().map(|(k, dim)| dim.gap(points[i][k], points[j][k])));
        }
    }
    gaps
}

/// What the likelihood's gradient needs of each pair besides the covariance matrix (in
/// [`pair_gaps`]' order): the scaled distance r and e^{−√5 r}, each computed once a step.
struct PairTerms {
    distance: Vec<f64>,
    decay: Vec<f64>,
}

/// The covariance matrix for `h` from precomputed gaps, and each pair's terms.
fn covariance(gaps: &[f64], n: usize, h: &Hyper) -> (Vec<f64>, PairTerms) {
    let d = h.log_length.len();
    let (inverse_sq, signal, noise) = (h.inverse_sq(), h.signal(), h.noise());
    let mut k = vec![0.0; n * n];
    let pairs = n * n.saturating_sub(1) / 2;
    let mut terms = PairTerms { distance: Vec::with_capacity(pairs), decay: Vec::with_capacity(pairs) };
    let mut r2 = vec![0.0; pairs];
    weighted_sums(&gaps[..pairs * d], &inverse_sq, &mut r2);
    let mut pair = 0;
    for i in 0..n {
        for j in 0..i {
            let dist = r2[pair].sqrt();
            pair += 1;
            let decay = (-SQRT5 * dist).exp();
            let v = signal * matern_with_decay(dist, decay);
            k[i * n + j] = v;
            k[j * n + i] = v;
            terms.distance.push(dist);
            terms.decay.push(decay);
        }
        k[i * n + i] = signal + noise;
    }
    (k, terms)
}

/// `out[p]` = Σ_m `rows[p·d + m]`·`weights[m]` (d = `weights.len()`), each summed in the order of
/// m as a plain sum would, four rows side by side: one row's sum is a chain of dependent
/// additions, and four chains at once keep the floating-point units busy (the distances of a
/// fit's 1,128 pairs in 20-D, at each of its steps).
fn weighted_sums(rows: &[f64], weights: &[f64], out: &mut [f64]) {
    let d = weights.len();
    let whole = out.len() / 4 * 4;
    for (block, sums_out) in rows.chunks_exact(4 * d.max(1)).zip(out[..whole].chunks_exact_mut(4)) {
        let mut sums = [0.0f64; 4];
        for (m, w) in weights.iter().enumerate() {
            for (q, sum) in sums.iter_mut().enumerate() {
                *sum += block[q * d + m] * w;
            }
        }
        sums_out.copy_from_slice(&sums);
    }
    for (p, sum) in out.iter_mut().enumerate().skip(whole) {
        *sum = (0..d).map(|m| rows[p * d + m] * weights[m]).sum();
    }
}

/// A fitted kernel: what a model needs of its hyperparameters.
#[derive(Clone)]
struct Kernel {
    dims: Vec<Dim>,
    inverse_sq: Vec<f64>,
    signal: f64,
    noise: f64,
    /// Some coordinate is categorical (compared by value, not by difference).
    categorical: bool,
}

impl Kernel {
    fn new(dims: &[Dim], h: &Hyper) -> Kernel {
        Kernel {
            dims: dims.to_vec(),
            inverse_sq: h.inverse_sq(),
            signal: h.signal(),
            noise: h.noise(),
            categorical: dims.iter().any(|dim| matches!(dim, Dim::Categorical(_))),
        }
    }

    /// Rows `from..` of the covariance matrix of `points` (row-major, each row up to its
    /// diagonal: what [`cholesky_rows`] reads), a row at a time: conditioning keeps no gaps of
    /// every pair (at 100 points in 20-D they took 1.6 MB a suggestion, twice).
    fn rows(&self, k: &mut [f64], points: &[Vec<f64>], from: usize) {
        let n = points.len();
        // One row's gaps (at most 100 points × 20 dimensions), summed as a fit's are.
        let mut gaps = Vec::with_capacity(n * self.dims.len());
        let mut r2 = vec![0.0; n];
        for i in from..n {
            let p = &points[i];
            gaps.clear();
            for q in &points[..i] {
                gaps.extend(self.dims.iter().enumerate().map(|(m, dim)| dim.gap(p[m], q[m])));
            }
            weighted_sums(&gaps, &self.inverse_sq, &mut r2[..i]);
            for (j, r2) in r2[..i].iter().enumerate() {
                k[i * n + j] = self.signal * matern(r2.sqrt());
            }
            k[i * n + i] = self.signal + self.noise;
        }
    }
}

/// Log marginal likelihood plus log prior, and its gradient in the log hyperparameters.
fn objective(gaps: &[f64], y: &[f64], h: &Hyper) -> Option<(f64, Vec<f64>)> {
    let n = y.len();
    let d = h.log_length.len();
    let (k, terms) = covariance(gaps, n, h);
    let l = cholesky(&k, n)?;
    let alpha = backward(&l, n, &forward(&l, n, y));
    let fit =
        -0.5 * y.iter().zip(&alpha).map(|(a, b)| a * b).sum::<f64>() - (0..n).map(|i| l[i * n + i].ln()).sum::<f64>();
    // dL/dθ = ½ tr((ααᵀ − K⁻¹) ∂K/∂θ)
    let inverse = inverse_from_cholesky(&l, n);
    let (inverse_sq, signal) = (h.inverse_sq(), h.signal());
    let mut gradient = vec![0.0; d + 2];
    let mut pair = 0;
    for i in 0..n {
        for j in 0..i {
            let w = alpha[i] * alpha[j] - inverse[i * n + j];
            let (dist, decay) = (terms.distance[pair], terms.decay[pair]);
            // ∂K/∂log ℓ_m = σ² (5/3)(1 + √5 r) e^{−√5 r} · gap_m / ℓ_m², each pair counted twice.
            let common = w * signal * (5.0 / 3.0) * (1.0 + SQRT5 * dist) * decay;
            let base = pair * d;
            for m in 0..d {
                gradient[m] += common * gaps[base + m] * inverse_sq[m];
            }
            gradient[d] += w * signal * matern_with_decay(dist, decay);
            pair += 1;
        }
        let w = alpha[i] * alpha[i] - inverse[i * n + i];
        gradient[d] += 0.5 * w * signal;
        gradient[d + 1] += 0.5 * w * h.noise();
    }
    let (prior, prior_gradient) = log_prior(h);
    for (g, p) in gradient.iter_mut().zip(prior_gradient) {
        *g += p;
    }
    Some((fit + prior, gradient))
}

/// Maximum a posteriori hyperparameters: Adam on the log hyperparameters from the prior's centre.
fn fit_hyper(points: &[Vec<f64>], y: &[f64], dims: &[Dim]) -> Hyper {
    let gaps = pair_gaps(points, dims);
    let mut theta = Hyper::start(dims.len()).as_vec();
    let mut best: Option<(f64, Vec<f64>)> = None;
    let (mut m, mut v) = (vec![0.0; theta.len()], vec![0.0; theta.len()]);
    const STEPS: i32 = 40;
    const RATE: f64 = 0.1;
    for t in 1..=STEPS {
        let h = Hyper::from_vec(&theta);
        let Some((value, gradient)) = objective(&gaps, y, &h) else {
            // Numerically singular: more noise.
            let last = theta.len() - 1;
            theta[last] += 1.0;
            continue;
        };
        if best.as_ref().is_none_or(|(b, _)| value > *b) {
            best = Some((value, h.as_vec()));
        }
        for i in 0..theta.len() {
            m[i] = 0.9 * m[i] + 0.1 * gradient[i];
            v[i] = 0.999 * v[i] + 0.001 * gradient[i] * gradient[i];
            let m_hat = m[i] / (1.0 - 0.9f64.powi(t));
            let v_hat = v[i] / (1.0 - 0.999f64.powi(t));
            theta[i] += RATE * m_hat / (v_hat.sqrt() + 1e-8);
        }
    }
    best.map_or_else(|| Hyper::from_vec(&theta), |(_, b)| Hyper::from_vec(&b))
}

/// The posterior of a fitted GP.
struct Model {
    kernel: Kernel,
    points: Vec<Vec<f64>>,
    l: Vec<f64>,
    alpha: Vec<f64>,
}

impl Model {
    fn condition(points: Vec<Vec<f64>>, y: &[f64], dims: &[Dim], h: &Hyper) -> Option<Model> {
        let n = points.len();
        let kernel = Kernel::new(dims, h);
        let mut k = vec![0.0; n * n];
        kernel.rows(&mut k, &points, 0);
        let l = cholesky(&k, n)?;
        let alpha = backward(&l, n, &forward(&l, n, y));
        Some(Model { kernel, points, l, alpha })
    }

    /// The model conditioned on `extra` points too, `y` holding the values of all (its own first):
    /// the same as conditioning on all of them from scratch, to the bit, but the factor of the
    /// points it has is kept and only the new points' rows are computed.
    fn with_points(&self, extra: Vec<Vec<f64>>, y: &[f64]) -> Option<Model> {
        let known = self.points.len();
        let mut points = self.points.clone();
        points.extend(extra);
        let n = points.len();
        let mut k = vec![0.0; n * n];
        self.kernel.rows(&mut k, &points, known);
        let mut l = vec![0.0; n * n];
        for i in 0..known {
            l[i * n..=i * n + i].copy_from_slice(&self.l[i * known..=i * known + i]);
        }
        cholesky_rows(&k, n, &mut l, known)?;
        let alpha = backward(&l, n, &forward(&l, n, y));
        Some(Model { kernel: self.kernel.clone(), points, l, alpha })
    }

    /// The squared scaled distance between a point the model was conditioned on and `x`.
    fn distance_sq(&self, p: &[f64], x: &[f64]) -> f64 {
        if !self.kernel.categorical {
            // Four independent sums, as in `dot`: this runs for every candidate and every point.
            let mut sums = [0.0; 4];
            let chunks = p.chunks_exact(4).zip(x.chunks_exact(4)).zip(self.kernel.inverse_sq.chunks_exact(4));
            for ((p, x), w) in chunks {
                for lane in 0..4 {
                    let g = p[lane] - x[lane];
                    sums[lane] += g * g * w[lane];
                }
            }
            let done = p.len() / 4 * 4;
            let rest: f64 = (done..p.len()).map(|m| (p[m] - x[m]).powi(2) * self.kernel.inverse_sq[m]).sum();
            return (sums[0] + sums[1]) + (sums[2] + sums[3]) + rest;
        }
        self.kernel.dims.iter().enumerate().map(|(m, dim)| dim.gap(p[m], x[m]) * self.kernel.inverse_sq[m]).sum()
    }

    fn covariances(&self, x: &[f64]) -> Vec<f64> {
        self.points.iter().map(|p| self.kernel.signal * matern(self.distance_sq(p, x).sqrt())).collect()
    }

    /// Posterior mean and standard deviation of the latent function (warped units).
    fn predict(&self, x: &[f64]) -> (f64, f64) {
        let k = self.covariances(x);
        let v = forward(&self.l, self.points.len(), &k);
        self.moments(&k, &v)
    }

    /// Mean and standard deviation from a point's covariances `k` with the points and L⁻¹k.
    fn moments(&self, k: &[f64], v: &[f64]) -> (f64, f64) {
        let mu = k.iter().zip(&self.alpha).map(|(a, b)| a * b).sum::<f64>();
        let var = (self.kernel.signal - v.iter().map(|x| x * x).sum::<f64>()).max(1e-12);
        (mu, var.sqrt())
    }

    /// [`Model::predict`] at many points, to the bit, four at a time: their triangular solves
    /// run side by side (see [`forward4`]), which is where most of a suggestion's time goes.
    fn predict_all(&self, xs: &[Vec<f64>]) -> Vec<(f64, f64)> {
        let n = self.points.len();
        let mut predictions = Vec::with_capacity(xs.len());
        let groups = xs.chunks_exact(4);
        let rest = groups.remainder();
        for group in groups {
            let k: [Vec<f64>; 4] = std::array::from_fn(|r| self.covariances(&group[r]));
            let v = forward4(&self.l, n, [&k[0], &k[1], &k[2], &k[3]]);
            predictions.extend((0..4).map(|r| self.moments(&k[r], &v[r])));
        }
        predictions.extend(rest.iter().map(|x| self.predict(x)));
        predictions
    }

    /// Expected improvement over `best` at `x`, and its gradient along the coordinates that are
    /// not categorical (zero along those).
    fn expected_improvement_with_gradient(&self, x: &[f64], best: f64) -> (f64, Vec<f64>) {
        let n = self.points.len();
        let d = self.kernel.dims.len();
        let mut k = Vec::with_capacity(n);
        // ∂k_i/∂x_m = −σ² (5/3)(1 + √5 r) e^{−√5 r} (x_m − p_m)/ℓ_m² (Matérn 5/2).
        let mut dk = vec![0.0; n * d];
        for (i, p) in self.points.iter().enumerate() {
            let r = self.distance_sq(p, x).sqrt();
            k.push(self.kernel.signal * matern(r));
            let common = -self.kernel.signal * (5.0 / 3.0) * (1.0 + SQRT5 * r) * (-SQRT5 * r).exp();
            for (m, dim) in self.kernel.dims.iter().enumerate() {
                if !matches!(dim, Dim::Categorical(_)) {
                    dk[i * d + m] = common * (x[m] - p[m]) * self.kernel.inverse_sq[m];
                }
            }
        }
        let mu = k.iter().zip(&self.alpha).map(|(a, b)| a * b).sum::<f64>();
        let v = forward(&self.l, n, &k);
        let variance = self.kernel.signal - v.iter().map(|x| x * x).sum::<f64>();
        let sigma = variance.max(1e-12).sqrt();
        // σ² = s − kᵀK⁻¹k: ∂σ²/∂x = −2 (K⁻¹k)ᵀ ∂k/∂x.
        let w = backward(&self.l, n, &v);
        // ∂EI/∂μ = Φ(z), ∂EI/∂σ = φ(z).
        let z = (mu - best) / sigma;
        let (cdf, pdf) = (normal_cdf(z), normal_pdf(z));
        let gradient = (0..d)
            .map(|m| {
                let dmu: f64 = (0..n).map(|i| self.alpha[i] * dk[i * d + m]).sum();
                let dvariance: f64 = -2.0 * (0..n).map(|i| w[i] * dk[i * d + m]).sum::<f64>();
                let dsigma = if variance > 1e-12 { dvariance / (2.0 * sigma) } else { 0.0 };
                cdf * dmu + pdf * dsigma
            })
            .collect();
        (expected_improvement(mu, sigma, best), gradient)
    }

    /// Posterior means at the points it was conditioned on (without their noise).
    fn fitted(&self, y: &[f64]) -> Vec<f64> {
        y.iter().zip(&self.alpha).map(|(y, a)| y - self.kernel.noise * a).collect()
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

/// Φ⁻¹(p) (Acklam's rational approximation, relative error < 1.2e-9).
fn normal_quantile(p: f64) -> f64 {
    const A: [f64; 6] = [
        -39.696_830_286_653_76,
        220.946_098_424_520_5,
        -275.928_510_446_968_7,
        138.357_751_867_269,
        -30.664_798_066_147_16,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -54.476_098_798_224_06,
        161.585_836_858_040_9,
        -155.698_979_859_886_6,
        66.801_311_887_719_72,
        -13.280_681_552_885_72,
    ];
    const C: [f64; 6] = [
        -0.007_784_894_002_430_293,
        -0.322_396_458_041_136_5,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] =
        [0.007_784_695_709_041_462, 0.322_467_129_070_039_8, 2.445_134_137_142_996, 3.754_408_661_907_416];
    let p = p.clamp(1e-12, 1.0 - 1e-12);
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    if p < 0.024_25 {
        tail((-2.0 * p.ln()).sqrt())
    } else if p > 1.0 - 0.024_25 {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
}

/// Normal scores of `values` by rank (ties share their mean rank): the Gaussian copula.
fn normal_scores(values: &[f64]) -> Vec<f64> {
    let n = values.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|a, b| values[*a].total_cmp(&values[*b]));
    let mut scores = vec![0.0; n];
    let mut i = 0;
    while i < n {
        let mut j = i;
        while j + 1 < n && values[order[j + 1]] == values[order[i]] {
            j += 1;
        }
        let rank = (i + j) as f64 / 2.0;
        let score = normal_quantile((rank + 0.5) / n as f64);
        for &o in &order[i..=j] {
            scores[o] = score;
        }
        i = j + 1;
    }
    scores
}

/// What the model is fitted to: half the normal score of each value's rank (robust to scale and
/// to disastrous trials: a function spanning orders of magnitude does not flatten the model) and
/// half its standardised log-distance from the best, −ln(best − v + δ) with δ a tenth of the range
/// (which keeps magnitudes near the top, where a search ends: ranks alone cannot tell a 0.1 %
/// improvement from a 10 % one). Monotone: the best value stays the best.
fn warped(values: &[f64]) -> Vec<f64> {
    let scores = normal_scores(values);
    let best = values.iter().copied().fold(f64::MIN, f64::max);
    let worst = values.iter().copied().fold(f64::MAX, f64::min);
    let delta = 0.1 * (best - worst) + 1e-12;
    let logs: Vec<f64> = values.iter().map(|v| -(best - v + delta).ln()).collect();
    let mean = logs.iter().sum::<f64>() / logs.len() as f64;
    let sd = (logs.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / logs.len() as f64).sqrt().max(1e-12);
    scores.iter().zip(&logs).map(|(score, log)| 0.5 * score + 0.5 * (log - mean) / sd).collect()
}

fn expected_improvement(mu: f64, sigma: f64, best: f64) -> f64 {
    let z = (mu - best) / sigma;
    (mu - best) * normal_cdf(z) + sigma * normal_pdf(z)
}

fn random_point(dims: &[Dim], rng: &mut ChaCha8Rng) -> Vec<f64> {
    dims.iter().map(|dim| dim.snap(rng.random::<f64>())).collect()
}

/// `x` moved in a few coordinates: each with probability about `moves / d`, by a normal step of
/// `step` (in length-scale-relative units) on numeric ones, a fresh value on categorical ones.
fn perturb(x: &[f64], dims: &[Dim], scales: &[f64], step: f64, moves: f64, rng: &mut ChaCha8Rng) -> Vec<f64> {
    let d = dims.len();
    let p = (moves / d as f64).min(1.0);
    let forced = (rng.random::<f64>() * d as f64) as usize % d;
    x.iter()
        .zip(dims)
        .enumerate()
        .map(|(k, (value, dim))| {
            if k != forced && rng.random::<f64>() >= p {
                return *value;
            }
            match dim {
                Dim::Categorical(_) => dim.snap(rng.random::<f64>()),
                _ => {
                    // A normal step from two uniforms (Box–Muller), at least one integer value wide.
                    let u1: f64 = rng.random::<f64>().max(1e-12);
                    let u2: f64 = rng.random();
                    let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
                    let moved = dim.snap(value + z * step * scales[k]);
                    if moved == *value
                        && let Dim::Integer(levels) = dim
                    {
                        let at = levels.iter().position(|l| *l == *value).unwrap_or(0);
                        let next = if z >= 0.0 { at + 1 } else { at.wrapping_sub(1) };
                        levels.get(next).copied().unwrap_or(*value)
                    } else {
                        moved
                    }
                }
            }
        })
        .collect()
}

/// Gradient ascent of the expected improvement from `x` (worth `value`) along its numeric and
/// integer coordinates, in steps measured in length scales that grow while they succeed and
/// shrink when they fail; integers are snapped at the end. Returns the best point seen.
fn ascend(
    model: &Model,
    dims: &[Dim],
    scales: &[f64],
    bounds: &[(f64, f64)],
    best: f64,
    start: f64,
    from: Vec<f64>,
) -> (f64, Vec<f64>) {
    let (mut value, mut x) = (start, from.clone());
    let mut step = 0.05;
    let mut gradient = model.expected_improvement_with_gradient(&x, best).1;
    for _ in 0..ASCENT_STEPS {
        // Preconditioned by the length scales: a step of 1 moves a length scale along the
        // direction where the model changes fastest.
        let direction: Vec<f64> = gradient.iter().zip(scales).map(|(g, s)| g * s * s).collect();
        let norm = direction.iter().zip(scales).map(|(g, s)| (g / s).powi(2)).sum::<f64>().sqrt();
        if !(norm > 0.0 && norm.is_finite()) {
            break;
        }
        let moved: Vec<f64> = x
            .iter()
            .zip(&direction)
            .zip(dims)
            .zip(bounds)
            .map(|(((u, g), dim), (lo, hi))| match dim {
                Dim::Categorical(_) => *u,
                _ => (u + step * g / norm).clamp(*lo, *hi),
            })
            .collect();
        let (v, g) = model.expected_improvement_with_gradient(&moved, best);
        if v > value {
            (value, x, gradient) = (v, moved, g);
            step *= 1.5;
        } else {
            step *= 0.4;
            if step < 1e-4 {
                break;
            }
        }
    }
    let snapped: Vec<f64> = x.iter().zip(dims).map(|(u, dim)| dim.snap(*u)).collect();
    if snapped != x {
        value = model.expected_improvement_with_gradient(&snapped, best).0;
        x = snapped;
    }
    if value > start { (value, x) } else { (start, from) }
}

/// Half the side of the trust region along each coordinate: in proportion to the length scales,
/// [`TRUST_REGION_SIDE`] of the cube for their geometric mean, at most the whole cube.
fn trust_region_half_sides(scales: &[f64]) -> Vec<f64> {
    let geometric_mean = (scales.iter().map(|s| s.ln()).sum::<f64>() / scales.len() as f64).exp();
    scales.iter().map(|scale| (TRUST_REGION_SIDE * scale / geometric_mean).min(1.0) / 2.0).collect()
}

/// The box around `centre` that the search stays in: in many dimensions (`trusted`) the trust
/// region ([`trust_region_half_sides`]) cut at the cube's edges; otherwise the whole cube.
fn trust_region(centre: &[f64], half_sides: &[f64], trusted: bool) -> Vec<(f64, f64)> {
    centre
        .iter()
        .zip(half_sides)
        .map(
            |(centre, half)| {
                if trusted { ((centre - half).max(0.0), (centre + half).min(0.999_999)) } else { (0.0, 0.999_999) }
            },
        )
        .collect()
}

/// The next point to try, given finished observations (larger is better) and points still
/// running. `rng` must be seeded by the caller for determinism.
pub fn suggest(dims: &[Dim], observations: &[Observation], pending: &[Vec<f64>], rng: &mut ChaCha8Rng) -> Vec<f64> {
    let d = dims.len();
    if observations.len() < 2 || d == 0 {
        return random_point(dims, rng);
    }
    // The model: the best and most recent observations, snapped, outputs as normal scores.
    let kept = keep(observations, |o| o.value);
    let points: Vec<Vec<f64>> =
        kept.iter().map(|o| o.point.iter().zip(dims).map(|(u, dim)| dim.snap(*u)).collect()).collect();
    let y = warped(&kept.iter().map(|o| o.value).collect::<Vec<f64>>());
    // Hyperparameters from a bounded subset: the best and the most recent.
    let indices: Vec<usize> = (0..points.len()).collect();
    let subset = keep_at_most(&indices, FIT_POINTS, |i| y[*i]);
    let fit_points: Vec<Vec<f64>> = subset.iter().map(|i| points[*i].clone()).collect();
    let fit_y: Vec<f64> = subset.iter().map(|i| y[*i]).collect();
    let hyper = fit_hyper(&fit_points, &fit_y, dims);
    let Some(model) = Model::condition(points.clone(), &y, dims, &hyper) else { return random_point(dims, rng) };
    // The incumbent: the best posterior mean at a finished trial (robust to noise).
    let fitted = model.fitted(&y);
    let (best_at, best) = fitted.iter().enumerate().fold((0, f64::MIN), |b, (i, v)| if *v > b.1 { (i, *v) } else { b });
    // Running trials believed to return the model's prediction, as data like the rest (the
    // Kriging believer): a belief above the incumbent is the incumbent. Were it not, the expected
    // improvement would peak on such a running trial itself (certain there, and above the
    // incumbent), and the next trial would go where one runs already.
    let (model, best) = if pending.is_empty() {
        (model, best)
    } else {
        let mut with = Vec::new();
        let mut with_y = y.clone();
        let mut best = best;
        for p in pending.iter().take(MAX_POINTS / 4) {
            let p: Vec<f64> = p.iter().zip(dims).map(|(u, dim)| dim.snap(*u)).collect();
            let believed = model.predict(&p).0;
            best = best.max(believed);
            with_y.push(believed);
            with.push(p);
        }
        match model.with_points(with, &with_y) {
            Some(m) => (m, best),
            None => (model, best),
        }
    };
    let score = |x: &[f64]| {
        let (mu, sigma) = model.predict(x);
        expected_improvement(mu, sigma, best)
    };
    // Length scales relative to the unit cube, for steps that respect what the model learned.
    let scales: Vec<f64> = hyper.log_length.iter().map(|l| l.exp().min(1.0)).collect();
    // Anchors: the best fitted points.
    let mut ranked: Vec<usize> = (0..fitted.len()).collect();
    ranked.sort_by(|a, b| fitted[*b].total_cmp(&fitted[*a]));
    ranked.truncate(3);
    if !ranked.contains(&best_at) {
        ranked.insert(0, best_at);
    }
    let mut candidates: Vec<(f64, Vec<f64>)> = Vec::with_capacity(2 * CANDIDATES);
    // In many dimensions, random candidates come only from a box around the incumbent (a trust
    // region, its sides in proportion to the length scales): a model fitted on a few dozen points
    // in 10-D is too unsure far away, and its expected improvement would send trials to corners.
    let half_sides = trust_region_half_sides(&scales);
    let trusted = d >= TRUST_REGION_DIMENSIONS;
    // The box every candidate and every step of the local search stays in: the trust region in
    // many dimensions, the unit cube otherwise. Local search that left the region was drawn to
    // corners (far from every result, the model unsure there) by the same pull as random
    // candidates would be. Kept in (40 seeds, at 25 trials): Ackley-10 19.1 -> 17.1 one at a
    // time, Rastrigin-10 118 -> 112 and Hartmann-6 0.84 -> 0.74 four at a time (Levy-10 four at
    // a time 30 -> 36); it is what let the model take over after 7 trials, not 10.
    let bounds = trust_region(&points[best_at], &half_sides, trusted);
    let inside = |x: Vec<f64>| -> Vec<f64> {
        x.into_iter()
            .zip(dims)
            .zip(&bounds)
            .map(|((u, dim), (lo, hi))| match dim {
                Dim::Categorical(_) => u,
                _ => dim.snap(u.clamp(*lo, *hi)),
            })
            .collect()
    };
    let mut drawn: Vec<Vec<f64>> = Vec::with_capacity(2 * CANDIDATES);
    for _ in 0..CANDIDATES {
        let x = if trusted {
            points[best_at]
                .iter()
                .zip(dims)
                .enumerate()
                .map(|(k, (centre, dim))| match dim {
                    Dim::Categorical(_) => dim.snap(rng.random::<f64>()),
                    _ => dim.snap(centre + (rng.random::<f64>() * 2.0 - 1.0) * half_sides[k]),
                })
                .collect()
        } else {
            random_point(dims, rng)
        };
        drawn.push(x);
    }
    for i in 0..CANDIDATES {
        let anchor = &points[ranked[i % ranked.len()]];
        let step = [0.05, 0.15, 0.4][i % 3];
        drawn.push(inside(perturb(anchor, dims, &scales, step, PERTURBED_COORDINATES, rng)));
    }
    // Scored together (drawing them takes no score, so the draws are those of scoring each as drawn).
    for ((mu, sigma), x) in model.predict_all(&drawn).into_iter().zip(drawn) {
        candidates.push((expected_improvement(mu, sigma, best), x));
    }
    candidates.sort_by(|a, b| b.0.total_cmp(&a.0));
    candidates.truncate(3);
    // Local search from the best candidates: gradient ascent along the continuous coordinates
    // (from 6-D on, where random candidates come from the trust region), then (1+1) steps that
    // shrink when they fail (integers and categories too). Sampled candidates find the
    // acquisition's peak poorly in many dimensions (refined, 40 seeds, one at a time at 50
    // trials: Ackley-20 20.2 -> 18.1, Rosenbrock-10 99 -> 84, Styblinski-Tang-6 43 -> 33); in two
    // or three they cover it, and refining only made the search greedier (Branin 0.008 -> 0.019).
    // Beside running trials only from 10-D on. There, measured 4 at a time as the coordinator
    // runs trials (each suggested beside three running; 40 seeds, 25/50 trials): Levy-10 34 -> 28
    // / 16.5 -> 14.2, Rastrigin-10 119 -> 113 / 100 -> 98, Rosenbrock-10 706 -> 619 / 198 -> 170,
    // Ackley-20 20.37 -> 20.25 / 20.1 -> 19.0. In 6-D it made Hartmann-6 worse both as the
    // coordinator runs trials and in synchronous batches (0.21 -> 0.25-0.27 at 50 trials).
    let refine = trusted && (pending.is_empty() || d >= REFINED_BESIDE_RUNNING_DIMENSIONS);
    let mut best_candidate = candidates[0].clone();
    for (value, x) in candidates {
        let (value, x) = if refine { ascend(&model, dims, &scales, &bounds, best, value, x) } else { (value, x) };
        let (mut value, mut x, mut step) = (value, x, 0.1);
        for _ in 0..24 {
            let y = inside(perturb(&x, dims, &scales, step, 2.0, rng));
            let v = score(&y);
            if v > value {
                (value, x) = (v, y);
                step *= 1.3;
            } else {
                step *= 0.8;
            }
        }
        if value > best_candidate.0 {
            best_candidate = (value, x);
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
    fn the_gradient_of_expected_improvement_matches_finite_differences() {
        let dims = vec![Dim::Numeric, Dim::Numeric, Dim::Integer(vec![0.1, 0.5, 0.9]), Dim::Categorical(3)];
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let points: Vec<Vec<f64>> = (0..12).map(|_| random_point(&dims, &mut rng)).collect();
        let y: Vec<f64> = points.iter().map(|p| (3.0 * p[0]).sin() - (p[1] - 0.3).powi(2) + p[2]).collect();
        let hyper = fit_hyper(&points, &y, &dims);
        let model = Model::condition(points, &y, &dims, &hyper).expect("a model");
        let best = y.iter().copied().fold(f64::MIN, f64::max);
        for _ in 0..5 {
            let x = random_point(&dims, &mut rng);
            let (value, gradient) = model.expected_improvement_with_gradient(&x, best);
            let (mu, sigma) = model.predict(&x);
            assert!((value - expected_improvement(mu, sigma, best)).abs() < 1e-9, "the same EI as predict gives");
            for m in 0..3 {
                let h = 1e-6;
                let (mut up, mut down) = (x.clone(), x.clone());
                up[m] += h;
                down[m] -= h;
                let numeric = (model.expected_improvement_with_gradient(&up, best).0
                    - model.expected_improvement_with_gradient(&down, best).0)
                    / (2.0 * h);
                assert!(
                    (numeric - gradient[m]).abs() < 1e-5 * (1.0 + numeric.abs()),
                    "coordinate {m}: analytic {} vs numeric {numeric}",
                    gradient[m]
                );
            }
            assert_eq!(gradient[3], 0.0, "no gradient along a categorical coordinate");
        }
    }

    #[test]
    fn the_trust_region_follows_the_length_scales_and_stays_in_the_cube() {
        let centre = [0.5, 0.5, 0.05];
        let scales = [0.1, 0.4, 0.2];
        let geometric_mean = (scales.iter().map(|s: &f64| s.ln()).sum::<f64>() / 3.0).exp();
        let region = trust_region(&centre, &trust_region_half_sides(&scales), true);
        let widths: Vec<f64> = region.iter().map(|(lo, hi)| hi - lo).collect();
        // Sides in proportion to the length scales, TRUST_REGION_SIDE for the geometric mean.
        assert!((widths[0] - TRUST_REGION_SIDE * 0.1 / geometric_mean).abs() < 1e-9, "{region:?}");
        assert!((widths[1] / widths[0] - 4.0).abs() < 1e-9, "{region:?}");
        // Cut at the cube's edge, not shifted.
        assert_eq!(region[2].0, 0.0);
        assert!((region[2].1 - (0.05 + TRUST_REGION_SIDE * 0.2 / geometric_mean / 2.0)).abs() < 1e-9);
        // In few dimensions: the whole cube.
        assert!(trust_region(&centre, &trust_region_half_sides(&scales), false).iter().all(|r| *r == (0.0, 0.999_999)));
    }

    #[test]
    fn the_local_search_stays_in_its_trust_region() {
        // Six results in 10-D: far from them the model is unsure, and the expected improvement
        // grows towards the cube's corners. The search from inside a small box stays in it.
        let dims = vec![Dim::Numeric; 10];
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let points: Vec<Vec<f64>> = (0..6).map(|_| (0..10).map(|_| rng.random::<f64>()).collect()).collect();
        let y: Vec<f64> = points.iter().map(|p| -p.iter().map(|x| (x - 0.3).powi(2)).sum::<f64>()).collect();
        let hyper = fit_hyper(&points, &y, &dims);
        let model = Model::condition(points.clone(), &y, &dims, &hyper).expect("a model");
        let best = model.fitted(&y).into_iter().fold(f64::MIN, f64::max);
        let scales: Vec<f64> = hyper.log_length.iter().map(|l| l.exp().min(1.0)).collect();
        let bounds: Vec<(f64, f64)> =
            points[0].iter().map(|c| ((c - 0.05).max(0.0), (c + 0.05).min(0.999_999))).collect();
        let start = model.expected_improvement_with_gradient(&points[0], best).0;
        let (value, x) = ascend(&model, &dims, &scales, &bounds, best, start, points[0].clone());
        assert!(value >= start);
        for (u, (lo, hi)) in x.iter().zip(&bounds) {
            assert!(lo <= u && u <= hi, "{u} outside [{lo}, {hi}]");
        }
        // The whole cube as its bounds: the same search goes further (the box above held it back).
        let cube = vec![(0.0, 0.999_999); 10];
        let (_, free) = ascend(&model, &dims, &scales, &cube, best, start, points[0].clone());
        assert!(free.iter().zip(&bounds).any(|(u, (lo, hi))| u < lo || u > hi), "{free:?}");
    }

    #[test]
    fn cholesky_solves_a_known_system() {
        // A = [[4, 2], [2, 3]] → L = [[2, 0], [1, √2]]
        let l = cholesky(&[4.0, 2.0, 2.0, 3.0], 2).expect("spd");
        assert!((l[0] - 2.0).abs() < 1e-12 && (l[2] - 1.0).abs() < 1e-12 && (l[3] - 2f64.sqrt()).abs() < 1e-12);
        let x = backward(&l, 2, &forward(&l, 2, &[2.0, 5.0]));
        // A x = b → x = [-0.5, 2]
        assert!((x[0] + 0.5).abs() < 1e-12 && (x[1] - 2.0).abs() < 1e-12, "{x:?}");
        let inverse = inverse_from_cholesky(&l, 2);
        // A⁻¹ = [[3, -2], [-2, 4]] / 8
        for (got, want) in inverse.iter().zip([0.375, -0.25, -0.25, 0.5]) {
            assert!((got - want).abs() < 1e-12, "{inverse:?}");
        }
        assert!(cholesky(&[1.0, 2.0, 2.0, 1.0], 2).is_none(), "not positive definite");
    }

    #[test]
    fn the_likelihood_gradient_matches_finite_differences() {
        let dims = [Dim::Numeric, Dim::Categorical(3), Dim::Numeric];
        let points: Vec<Vec<f64>> = (0..7)
            .map(|i| {
                let t = f64::from(i) / 7.0;
                vec![t, (t * 3.7).fract(), (t * 5.3).fract()]
            })
            .collect();
        let y: Vec<f64> = points.iter().map(|p| (6.0 * p[0]).sin() + p[2]).collect();
        let gaps = pair_gaps(&points, &dims);
        let h = Hyper { log_length: vec![-1.0, 0.3, -0.5], log_signal: 0.2, log_noise: -3.0 };
        let (_, gradient) = objective(&gaps, &y, &h).expect("fits");
        let theta = h.as_vec();
        for i in 0..theta.len() {
            let (mut up, mut down) = (theta.clone(), theta.clone());
            up[i] += 1e-5;
            down[i] -= 1e-5;
            let f = |t: &[f64]| objective(&gaps, &y, &Hyper::from_vec(t)).expect("fits").0;
            let numeric = (f(&up) - f(&down)) / 2e-5;
            assert!((numeric - gradient[i]).abs() < 1e-4 * (1.0 + numeric.abs()), "θ{i}: {numeric} vs {}", gradient[i]);
        }
    }

    #[test]
    fn the_posterior_interpolates_what_it_saw() {
        let dims = [Dim::Numeric];
        let points: Vec<Vec<f64>> = [0.1, 0.4, 0.7, 0.9].iter().map(|x| vec![*x]).collect();
        let y: Vec<f64> = points.iter().map(|p| (6.0 * p[0]).sin()).collect();
        let h = fit_hyper(&points, &y, &dims);
        let m = Model::condition(points.clone(), &y, &dims, &h).expect("fits");
        for (p, want) in points.iter().zip(&y) {
            let (mu, sigma) = m.predict(p);
            assert!((mu - want).abs() < 0.1, "mean at an observation: {mu} vs {want}");
            assert!(sigma < 0.2, "little uncertainty where it has seen data: {sigma}");
        }
        let (_, far) = m.predict(&[0.25]);
        let (_, near) = m.predict(&[0.4]);
        assert!(far > near, "more uncertainty between observations: {far} vs {near}");
    }

    #[test]
    fn distances_summed_side_by_side_are_the_plain_sums() {
        // Ordered sums run four at a time for speed; a search must stay reproducible to the bit,
        // so each must equal the plain sum over the dimensions (any count of pairs, any mix).
        let dims =
            vec![Dim::Numeric, Dim::Categorical(3), Dim::Integer(vec![0.1, 0.5, 0.9]), Dim::Numeric, Dim::Numeric];
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let points: Vec<Vec<f64>> = (0..11).map(|_| random_point(&dims, &mut rng)).collect();
        let h = Hyper { log_length: vec![-1.3, 0.2, -0.7, 0.9, -2.1], log_signal: 0.3, log_noise: -5.0 };
        let kernel = Kernel::new(&dims, &h);
        let n = points.len();
        let plain = |i: usize, j: usize| -> f64 {
            dims.iter().enumerate().map(|(m, dim)| dim.gap(points[i][m], points[j][m]) * kernel.inverse_sq[m]).sum()
        };
        let mut k = vec![0.0; n * n];
        kernel.rows(&mut k, &points, 0);
        let gaps = pair_gaps(&points, &dims);
        let (fit_k, terms) = covariance(&gaps, n, &h);
        let mut pair = 0;
        for i in 0..n {
            for j in 0..i {
                let r = plain(i, j).sqrt();
                assert_eq!(k[i * n + j], kernel.signal * matern(r), "conditioning, pair ({i}, {j})");
                assert_eq!(terms.distance[pair], r, "fitting, pair ({i}, {j})");
                assert_eq!(fit_k[i * n + j], k[i * n + j]);
                pair += 1;
            }
        }
        assert!(terms.distance.windows(2).any(|w| w[0] != w[1]));
    }

    #[test]
    fn a_model_given_more_points_is_the_model_conditioned_on_all_of_them() {
        // Running trials are added to a fitted model (the Kriging believer) by growing its
        // factor: the suggestions must be those of conditioning from scratch, to the bit, so that
        // a search stays reproducible whichever way the model was built.
        let dims = vec![Dim::Numeric, Dim::Integer(vec![0.1, 0.5, 0.9]), Dim::Categorical(3), Dim::Numeric];
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let points: Vec<Vec<f64>> = (0..15).map(|_| random_point(&dims, &mut rng)).collect();
        let y: Vec<f64> = points.iter().map(|p| (4.0 * p[0]).cos() + p[1] - p[3] * p[3]).collect();
        let hyper = fit_hyper(&points[..12], &y[..12], &dims);
        let grown = Model::condition(points[..12].to_vec(), &y[..12], &dims, &hyper)
            .expect("a model")
            .with_points(points[12..].to_vec(), &y)
            .expect("grown");
        let whole = Model::condition(points.clone(), &y, &dims, &hyper).expect("a model");
        assert_eq!(grown.l, whole.l, "the same Cholesky factor");
        assert_eq!(grown.alpha, whole.alpha);
        for _ in 0..20 {
            let x = random_point(&dims, &mut rng);
            assert_eq!(grown.predict(&x), whole.predict(&x));
        }
        // Candidates scored together, four at a time and the rest one by one: as scored alone.
        let xs: Vec<Vec<f64>> = (0..23).map(|_| random_point(&dims, &mut rng)).collect();
        let alone: Vec<(f64, f64)> = xs.iter().map(|x| whole.predict(x)).collect();
        assert_eq!(whole.predict_all(&xs), alone);
        assert!(alone.windows(2).any(|w| w[0] != w[1]), "different points, different predictions");
    }

    #[test]
    fn normal_functions_are_accurate() {
        for (z, want) in [(0.0, 0.5), (1.0, 0.841_344_746), (-1.96, 0.024_997_895)] {
            assert!((normal_cdf(z) - want).abs() < 1e-6, "{z}");
            assert!((normal_quantile(want) - z).abs() < 1e-5, "{want}");
        }
        assert!((normal_quantile(1e-4) + 3.719_016).abs() < 1e-5);
    }

    #[test]
    fn normal_scores_follow_rank_not_scale() {
        let scores = normal_scores(&[1e6, 1.0, 2.0, 2.0, -5.0]);
        // -5 < 1 < 2 = 2 < 1e6: the outlier is just the highest, ties share a score.
        assert!(scores[4] < scores[1] && scores[1] < scores[2] && scores[2] < scores[0]);
        assert_eq!(scores[2], scores[3]);
        assert!(scores[0] < 1.5, "an outlier is one rank above the rest: {}", scores[0]);
        let distinct = normal_scores(&[3.0, -1.0, 7.0, 0.5]);
        assert!(distinct.iter().sum::<f64>().abs() < 1e-9, "centred: {distinct:?}");
    }

    #[test]
    fn warping_keeps_the_order_and_tells_small_improvements_near_the_top_apart() {
        let values = [-1e6, -10.0, -1.0, -0.1, -0.01, 0.0];
        let w = warped(&values);
        assert!(w.windows(2).all(|p| p[0] < p[1]), "monotone: {w:?}");
        assert!(w.iter().all(|v| v.is_finite()));
        // A disastrous trial is one rank below the rest, not a million units: the others keep
        // their spread.
        let without = warped(&values[1..]);
        let spread = |w: &[f64]| w[w.len() - 1] - w[w.len() - 3];
        assert!(spread(&w) > 0.5 * spread(&without), "{w:?} vs {without:?}");
        // Near the top magnitudes count: 0 vs -0.01 is a tiny improvement and -0.01 vs -1 a large
        // one. Ranks alone make the first step the larger; the warped values do not.
        let values = [-4.0, -3.0, -2.0, -1.0, -0.01, 0.0];
        let (c, w) = (normal_scores(&values), warped(&values));
        assert!(c[5] - c[4] > c[4] - c[3], "{c:?}");
        assert!(w[5] - w[4] < w[4] - w[3], "{w:?}");
    }

    #[test]
    fn integers_snap_to_their_values_and_categories_to_their_centres() {
        let levels = Dim::Integer(vec![0.1, 0.3, 0.5, 0.7, 0.9]);
        assert_eq!(levels.snap(0.0), 0.1);
        assert_eq!(levels.snap(0.38), 0.3);
        assert_eq!(levels.snap(0.42), 0.5);
        assert_eq!(levels.snap(1.0), 0.9);
        assert_eq!(Dim::Categorical(4).snap(0.3), 0.375);
        assert_eq!(Dim::Numeric.snap(0.3), 0.3);
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
    fn pending_points_push_suggestions_apart() {
        let dims = [Dim::Numeric, Dim::Categorical(3)];
        let obs = vec![
            Observation { point: vec![0.2, 0.1], value: 0.0 },
            Observation { point: vec![0.8, 0.5], value: 1.0 },
            Observation { point: vec![0.5, 0.9], value: 0.2 },
            Observation { point: vec![0.9, 0.5], value: 0.7 },
        ];
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let first = suggest(&dims, &obs, &[], &mut rng);
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let second = suggest(&dims, &obs, std::slice::from_ref(&first), &mut rng);
        assert!(
            (first[0] - second[0]).abs() > 0.02 || first[1] != second[1],
            "a running trial is not suggested again: {first:?} then {second:?}"
        );
        assert!(first.iter().chain(&second).all(|x| (0.0..1.0).contains(x)));
    }
}
