//! Hyperparameter search, as pure functions of a seed and the results so far.
//!
//! * [`space`]: the search space from SageMaker's `ParameterRanges`, with its scaling types, and the
//!   strings a training job receives;
//! * [`strategy`]: what to try next: Random, Grid and Bayesian ([`bayesian`]: a Gaussian process
//!   and expected improvement); Hyperband samples at random and [`hyperband`] stops trials at
//!   its rungs;
//! * [`stopping`]: the median stopping rule and the completion criteria.
//!
//! Determinism: trial `i` of a tuning job with seed `s` always gets the same hyperparameters, in any
//! process, whatever order results arrive in.

pub mod bayesian;
pub mod hyperband;
pub mod space;
pub mod stopping;
pub mod strategy;

pub use space::{Parameter, Scale, SearchSpace, SpaceError};
pub use strategy::{Finished, Strategy};
