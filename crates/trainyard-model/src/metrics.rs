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

/// Samples in one page of a job's metrics, at most (and when a request names no size).
pub const MAX_PAGE_SAMPLES: u32 = 10_000;

/// Where a page of a job's samples (ordered by metric, then time) ended: the next page starts
/// after this sample. Its token is opaque to clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageEnd {
    pub metric: String,
    pub at_millis: i64,
}

impl PageEnd {
    pub fn token(&self) -> String {
        format!("{}/{}", self.at_millis, self.metric)
    }

    /// The page end a token names; `None` for a text no page gave.
    pub fn parse(token: &str) -> Option<PageEnd> {
        let (at, metric) = token.split_once('/')?;
        let at_millis = at.parse().ok()?;
        (!metric.is_empty()).then(|| PageEnd { metric: metric.to_string(), at_millis })
    }
}

/// Cuts a full page (`samples.len() == limit`, ordered by metric and time) before its last
/// (metric, time): more samples of that key may follow unread (two instances of a job report the
/// same metric in the same millisecond), and the next page, which starts after the page's last
/// key, must hold them all. Returns where the page ends, or `None` when it was the last one. A page
/// of a single key is left whole.
pub fn end_page<T>(samples: &mut Vec<T>, limit: usize, key: impl Fn(&T) -> (&str, i64)) -> Option<PageEnd> {
    if samples.len() < limit || samples.is_empty() {
        return None;
    }
    let last = samples.last().map(|s| (key(s).0.to_string(), key(s).1))?;
    let keep = samples.iter().rposition(|s| key(s) != (last.0.as_str(), last.1)).map_or(samples.len(), |i| i + 1);
    samples.truncate(keep);
    samples.last().map(|s| PageEnd { metric: key(s).0.to_string(), at_millis: key(s).1 })
}

/// One period's statistics of a metric (a CloudWatch datapoint).
#[derive(Debug, Clone, PartialEq)]
pub struct Datapoint {
    /// The start of its period.
    pub start_millis: i64,
    pub count: u32,
    pub sum: f64,
    pub minimum: f64,
    pub maximum: f64,
}

impl Datapoint {
    pub fn average(&self) -> f64 {
        self.sum / f64::from(self.count)
    }
}

/// Samples `(time in ms, value)` at or after `start_millis` and before `end_millis`, grouped into
/// periods of `period_seconds` counted from `start_millis`, in time order; periods without a sample
/// are left out, as CloudWatch leaves them out.
pub fn datapoints(
    samples: impl IntoIterator<Item = (i64, f64)>,
    start_millis: i64,
    end_millis: i64,
    period_seconds: u32,
) -> Vec<Datapoint> {
    let period = i64::from(period_seconds.max(1)) * 1000;
    let mut periods: std::collections::BTreeMap<i64, Datapoint> = std::collections::BTreeMap::new();
    for (at, value) in samples {
        if at < start_millis || at >= end_millis {
            continue;
        }
        let start = start_millis + (at - start_millis) / period * period;
        periods
            .entry(start)
            .and_modify(|d| {
                d.count += 1;
                d.sum += value;
                d.minimum = d.minimum.min(value);
                d.maximum = d.maximum.max(value);
            })
            .or_insert(Datapoint { start_millis: start, count: 1, sum: value, minimum: value, maximum: value });
    }
    periods.into_values().collect()
}

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
    fn samples_are_summarised_per_period_from_the_start_and_empty_periods_left_out() {
        let samples =
            [(999, 9.0), (1_000, 1.0), (30_000, 3.0), (60_000, 10.0), (61_000, 2.0), (200_000, 7.0), (240_000, 8.0)];
        let points = datapoints(samples, 1_000, 240_000, 60);
        assert_eq!(
            points,
            [
                Datapoint { start_millis: 1_000, count: 3, sum: 14.0, minimum: 1.0, maximum: 10.0 },
                Datapoint { start_millis: 61_000, count: 1, sum: 2.0, minimum: 2.0, maximum: 2.0 },
                Datapoint { start_millis: 181_000, count: 1, sum: 7.0, minimum: 7.0, maximum: 7.0 },
            ],
            "before the start, at the end and the empty period (121 s) are left out"
        );
        assert_eq!(points[0].average(), 14.0 / 3.0);
    }

    #[test]
    fn a_page_token_names_where_the_page_ended_and_nothing_else_parses() {
        let end = PageEnd { metric: "validation/loss: top-1".into(), at_millis: 1_700_000_000_123 };
        assert_eq!(PageEnd::parse(&end.token()), Some(end));
        for bad in ["", "12", "/loss", "x/loss", "12/", "1.5/loss"] {
            assert_eq!(PageEnd::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_full_page_ends_where_the_key_changes_so_equal_samples_stay_together() {
        fn key<'a>(s: &'a (&'static str, i64)) -> (&'a str, i64) {
            (s.0, s.1)
        }
        // Not full: the last page.
        let mut samples = vec![("loss", 1), ("loss", 2)];
        assert_eq!(end_page(&mut samples, 3, key), None);
        assert_eq!(samples.len(), 2);
        // Full: its last key may go on beyond the page, so it starts the next one.
        let mut samples = vec![("acc", 5), ("loss", 1), ("loss", 2)];
        assert_eq!(end_page(&mut samples, 3, key), Some(PageEnd { metric: "loss".into(), at_millis: 1 }));
        assert_eq!(samples, vec![("acc", 5), ("loss", 1)]);
        // Full, two instances' samples at the same time at its end: both go to the next page.
        let mut samples = vec![("loss", 1), ("loss", 2), ("loss", 3), ("loss", 3)];
        assert_eq!(end_page(&mut samples, 4, key), Some(PageEnd { metric: "loss".into(), at_millis: 2 }));
        assert_eq!(samples, vec![("loss", 1), ("loss", 2)]);
        // A page of one key cannot be cut.
        let mut samples = vec![("loss", 3), ("loss", 3)];
        assert_eq!(end_page(&mut samples, 2, key), Some(PageEnd { metric: "loss".into(), at_millis: 3 }));
        assert_eq!(samples.len(), 2);
    }

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
