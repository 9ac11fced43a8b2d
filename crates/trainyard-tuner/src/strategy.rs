//! Strategies: which hyperparameters trial `i` gets.

use std::collections::BTreeMap;

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::space::{Domain, SearchSpace};

#[derive(Debug, Clone, PartialEq)]
pub enum Strategy {
    /// Independent uniform draws in the unit cube (scaled per parameter).
    Random,
    /// Every combination of the categorical values, in a stable order.
    Grid,
}

impl Strategy {
    /// The strategy that drives a tuning job of SageMaker strategy `name`. Bayesian and Hyperband are
    /// not implemented yet (the tuner issue): until they are, they draw like Random.
    pub fn from_name(name: &str) -> Strategy {
        match name {
            "Grid" => Strategy::Grid,
            _ => Strategy::Random,
        }
    }

    /// Hyperparameters for trial `index` (0-based), or None when the strategy has no more (Grid).
    pub fn suggest(&self, space: &SearchSpace, seed: u64, index: u64) -> Option<BTreeMap<String, String>> {
        match self {
            Strategy::Random => {
                // One stream per trial: trial i's draw depends on nothing but (seed, i).
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                rng.set_stream(index);
                let point: Vec<f64> = space.parameters.iter().map(|_| rng.random::<f64>()).collect();
                Some(space.at(&point))
            }
            Strategy::Grid => grid_point(space, index),
        }
    }

    /// How many trials the strategy can produce at most (Grid: the number of combinations).
    pub fn capacity(&self, space: &SearchSpace) -> Option<u64> {
        match self {
            Strategy::Random => None,
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
        let a: Vec<_> = (0..5).map(|i| Strategy::Random.suggest(&s, 42, i)).collect();
        let b: Vec<_> = (0..5).rev().map(|i| Strategy::Random.suggest(&s, 42, i)).rev().collect();
        assert_eq!(a, b, "order of asking does not matter");
        assert_ne!(Strategy::Random.suggest(&s, 43, 0), a[0], "another seed, another draw");
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
                let h = Strategy::Grid.suggest(&s, 0, i).expect("in range");
                format!("{}{}", h["a"], h["b"])
            })
            .collect();
        assert_eq!(all, ["x1", "x2", "x3", "y1", "y2", "y3"]);
        assert_eq!(Strategy::Grid.suggest(&s, 0, 6), None);
    }
}
