//! Which of a job's metric samples are stored. A job can print a metric a million times; SageMaker
//! keeps metrics at a limited resolution too. Per metric, a sample is stored when it comes at least
//! [`SAMPLE_SPACING_MILLIS`] after the last stored one, up to [`MAX_SAMPLES_PER_METRIC`] samples;
//! the others are dropped from the stored series. A job's final metric values and its objective
//! always come from its latest sample, stored or not.

use std::collections::HashMap;

/// Stored samples of one metric of one job, at most.
pub const MAX_SAMPLES_PER_METRIC: u32 = 10_000;
/// The finest resolution of a stored series.
pub const SAMPLE_SPACING_MILLIS: i64 = 1_000;

/// What has been stored of one job's metrics so far.
#[derive(Debug, Default)]
pub struct SampleBudget {
    /// Metric name → (time of the last stored sample, samples stored).
    stored: HashMap<String, (i64, u32)>,
}

impl SampleBudget {
    /// Whether the sample of `metric` at `at_millis` is stored (and counts it if so).
    pub fn keep(&mut self, metric: &str, at_millis: i64) -> bool {
        match self.stored.get_mut(metric) {
            None => {
                self.stored.insert(metric.to_string(), (at_millis, 1));
                true
            }
            Some((last, count)) if *count < MAX_SAMPLES_PER_METRIC && at_millis - *last >= SAMPLE_SPACING_MILLIS => {
                *last = at_millis;
                *count += 1;
                true
            }
            Some(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_stored_at_one_sample_per_second_per_metric_and_capped() {
        let mut budget = SampleBudget::default();
        // A million samples of "loss" over 100 s: one a second is stored.
        let kept = (0..1_000_000i64).filter(|i| budget.keep("loss", i / 10)).count();
        assert_eq!(kept, 100);
        // Another metric has a budget of its own.
        assert!(budget.keep("accuracy", 5));
        assert!(!budget.keep("accuracy", 6), "within a second of the last stored one");
        assert!(budget.keep("accuracy", 1_005));
        // Days of samples, one a second: the series stops at its cap.
        let mut budget = SampleBudget::default();
        let kept = (0..50_000i64).filter(|s| budget.keep("loss", s * 1_000)).count();
        assert_eq!(kept, MAX_SAMPLES_PER_METRIC as usize);
    }
}
