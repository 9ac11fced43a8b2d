//! Hyperparameter search, as pure functions of a seed and the results so far.
//!
//! * [`space`]: the search space from SageMaker's `ParameterRanges`, with its scaling types, and the
//!   strings a training job receives;
//! * [`strategy`]: what to try next: Random, Grid and Bayesian (a Latin hypercube of seven trials,
//!   then [`bayesian`]: a Gaussian process with a length scale per dimension on rank-warped
//!   outputs, integers and categories as values, expected improvement optimised by search, running
//!   trials believed to return their prediction); Hyperband takes its configurations from the
//!   same model, and [`hyperband`] stops trials at its rungs;
//! * [`stopping`]: the median stopping rule and the completion criteria.
//!
//! Determinism: trial `i` of a tuning job with seed `s` always gets the same hyperparameters, in any
//! process, whatever order results arrive in.
//!
//! How good: `benches/` measures every strategy against Optuna's samplers and pruners on the same
//! problems (`scripts/bench-tuner`); BENCHMARKS.md has the results.

pub mod bayesian;
pub mod hyperband;
pub mod space;
pub mod stopping;
pub mod strategy;

pub use space::{Parameter, Scale, SearchSpace, SpaceError};
pub use strategy::{Finished, Strategy};
