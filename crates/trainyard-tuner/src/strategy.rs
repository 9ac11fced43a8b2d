//! Strategies: which hyperparameters trial `i` gets.

use std::collections::BTreeMap;

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::bayesian::{self, Dim, Observation};
use crate::space::{Domain, SearchSpace};

#[derive(Debug, Clone, PartialEq)]
pub enum Strategy {
    /// Independent uniform draws in the unit cube (scaled per parameter).
    Random,
    /// Every combination of the categorical values, in a stable order.
    Grid,
    /// A Gaussian-process surrogate and expected improvement (see [`crate::bayesian`]).
    Bayesian,
}

/// A finished trial as the strategies see it: its hyperparameters and its objective value, with
/// larger meaning better (callers negate a minimised metric).
#[derive(Debug, Clone, PartialEq)]
pub struct Finished {
    pub hyper_parameters: BTreeMap<String, String>,
    pub value: f64,
}

/// Results a Bayesian search needs before it trusts its model; until then it draws at random.
pub const BAYESIAN_RANDOM_START: u64 = 5;

impl Strategy {
    /// The strategy that suggests configurations for SageMaker strategy `name`. Hyperband draws
    /// its configurations at random; its brackets ([`crate::hyperband`]) decide when to stop them.
    pub fn from_name(name: &str) -> Strategy {
        match name {
            "Grid" => Strategy::Grid,
            "Bayesian" => Strategy::Bayesian,
            _ => Strategy::Random,
        }
    }

    /// Hyperparameters for trial `index` (0-based), or None when the strategy has no more (Grid).
    /// `finished` are the trials with an objective value, `pending` those still running. The
    /// result depends only on (seed, index, finished, pending).
    pub fn suggest(
        &self,
        space: &SearchSpace,
        seed: u64,
        index: u64,
        finished: &[Finished],
        pending: &[BTreeMap<String, String>],
    ) -> Option<BTreeMap<String, String>> {
        // One stream per trial: trial i's draws depend on nothing but (seed, i) and the results.
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(index);
        match self {
            Strategy::Random => {
                let point: Vec<f64> = space.parameters.iter().map(|_| rng.random::<f64>()).collect();
                Some(space.at(&point))
            }
            Strategy::Grid => grid_point(space, index),
            // Random until the model has a few results to learn from (a warm start brings them).
            Strategy::Bayesian if (finished.len() as u64) < BAYESIAN_RANDOM_START => {
                Strategy::Random.suggest(space, seed, index, finished, pending)
            }
            Strategy::Bayesian => {
                let dims: Vec<Dim> = space
                    .parameters
                    .iter()
                    .map(|p| match &p.domain {
                        Domain::Categorical { values } => Dim::Categorical(values.len()),
                        _ => Dim::Numeric,
                    })
                    .collect();
                // Only the observations the model keeps are mapped to points: the cost of a
                // suggestion does not grow with the number of finished trials.
                let usable: Vec<&Finished> = finished.iter().filter(|f| f.value.is_finite()).collect();
                let observations: Vec<Observation> = bayesian::keep(&usable, |f| f.value)
                    .into_iter()
                    .map(|f| Observation { point: space.point_of(&f.hyper_parameters), value: f.value })
                    .collect();
                let pending: Vec<Vec<f64>> = pending.iter().map(|p| space.point_of(p)).collect();
                Some(space.at(&bayesian::suggest(&dims, &observations, &pending, &mut rng)))
            }
        }
    }

    /// How many trials the strategy can produce at most (Grid: the number of combinations).
    pub fn capacity(&self, space: &SearchSpace) -> Option<u64> {
        match self {
            Strategy::Random | Strategy::Bayesian => None,
            Strategy::Grid => Some(grid_sizes(space).iter().product()),
        }
    }
}

fn grid_sizes(space: &SearchSpace) -> Vec<u64> {
    space
        .parameters
        .iter()
        .map(|p| match &p.domain {
            Domain::Categorical { values } => values.len() as u64,
            _ => 1,
        })
        .collect()
}

/// Combination `index` in mixed radix, the last parameter varying fastest.
fn grid_point(space: &SearchSpace, index: u64) -> Option<BTreeMap<String, String>> {
    let sizes = grid_sizes(space);
    if index >= sizes.iter().product::<u64>() {
        return None;
    }
    let mut rest = index;
    let mut blobs = vec![0u64; sizes.len()];
    for (d, size) in blobs.iter_mut().zip(&sizes).rev() {
        *d = rest % size;
        rest /= size;
    }
    let point: Vec<f64> = blobs.iter().zip(&sizes).map(|(&d, &n)| (d as f64 + 0.5) / n as f64).collect();
    Some(space.at(&point))
}

#[cfg(test)]
mod tests {
    use super::*;
    use trainyard_model::api;

    fn space(json: &str) -> SearchSpace {
        let ranges: api::ParameterRanges = trainyard_model::api_json(json).expect("ranges");
        SearchSpace::from_ranges(&ranges).expect("space")
    }

    #[test]
    fn random_is_a_function_of_seed_and_index() {
        let s = space(r#"{"ContinuousParameterRanges": [{"Name": "x", "MinValue": "0", "MaxValue": "1"}]}"#);
        let a: Vec<_> = (0..5).map(|i| Strategy::Random.suggest(&s, 42, i, &[], &[])).collect();
        let b: Vec<_> = (0..5).rev().map(|i| Strategy::Random.suggest(&s, 42, i, &[], &[])).rev().collect();
        assert_eq!(a, b, "order of asking does not matter");
        assert_ne!(Strategy::Random.suggest(&s, 43, 0, &[], &[]), a[0], "another seed, another draw");
        let distinct: std::collections::BTreeSet<_> = a.iter().map(|h| h.as_ref().map(|m| m["x"].clone())).collect();
        assert_eq!(distinct.len(), 5);
    }

    #[test]
    fn grid_enumerates_every_combination_once_in_a_stable_order() {
        let s = space(
            r#"{"CategoricalParameterRanges": [{"Name": "b", "Values": ["1", "2", "3"]}, {"Name": "a", "Values": ["x", "y"]}]}"#,
        );
        assert_eq!(Strategy::Grid.capacity(&s), Some(6));
        let all: Vec<String> = (0..6)
            .map(|i| {
                let h = Strategy::Grid.suggest(&s, 0, i, &[], &[]).expect("in range");
                format!("{}{}", h["a"], h["b"])
            })
            .collect();
        assert_eq!(all, ["x1", "x2", "x3", "y1", "y2", "y3"]);
        assert_eq!(Strategy::Grid.suggest(&s, 0, 6, &[], &[]), None);
    }

    #[test]
    fn bayesian_is_deterministic_and_learns_from_results() {
        let s = space(r#"{"ContinuousParameterRanges": [{"Name": "x", "MinValue": "-5", "MaxValue": "5"}]}"#);
        let f = |h: &BTreeMap<String, String>| -(h["x"].parse::<f64>().expect("number") - 1.7).powi(2);
        let mut finished: Vec<Finished> = Vec::new();
        for i in 0..15 {
            let h = Strategy::Bayesian.suggest(&s, 3, i, &finished, &[]).expect("suggestion");
            let again = Strategy::Bayesian.suggest(&s, 3, i, &finished, &[]).expect("suggestion");
            assert_eq!(h, again, "same seed and results, same suggestion");
            finished.push(Finished { value: f(&h), hyper_parameters: h });
        }
        let best = finished.iter().map(|f| f.value).fold(f64::MIN, f64::max);
        assert!(best > -0.05, "close to x = 1.7 after 15 trials: {best}");
    }

    #[test]
    fn points_map_back_to_where_they_came_from() {
        let s = space(
            r#"{"ContinuousParameterRanges": [{"Name": "lr", "MinValue": "0.001", "MaxValue": "1", "ScalingType": "Logarithmic"},
                                               {"Name": "m", "MinValue": "0.5", "MaxValue": "0.99", "ScalingType": "ReverseLogarithmic"}],
               "CategoricalParameterRanges": [{"Name": "opt", "Values": ["a", "b", "c"]}]}"#,
        );
        let point = [0.3, 0.6, 0.5];
        let back = s.point_of(&s.at(&point));
        for (a, b) in point.iter().zip(&back) {
            assert!((a - b).abs() < 1e-9, "{point:?} -> {back:?}");
        }
    }
}
