//! A tuning job's trials as its plots show them: in launch order, each with its final objective,
//! the best objective so far, its tuned hyperparameters and whether early stopping ended it. Pure:
//! the coordinator pages through stored trials and passes each page here with where the previous
//! page left the best.

use std::collections::BTreeMap;

use crate::jobs::TrainingJob;
use crate::status::TrainingJobStatus;
use crate::timestamp::Timestamp;
use crate::trials;

/// One trial, one point of "objective by trial".
#[derive(Debug, Clone, PartialEq)]
pub struct TrialPoint {
    /// 1-based, in launch order (trial `i` of the tuning job is `<name>-<i>-...`).
    pub number: u64,
    pub training_job_name: String,
    pub status: TrainingJobStatus,
    /// Its final objective (the last value it reported, for a stopped trial too).
    pub objective_value: Option<f64>,
    /// The best objective of the completed trials up to and including this one: the line a
    /// tuning job's progress is drawn with (SageMaker's BestTrainingJob counts completed trials only).
    pub best_so_far: Option<f64>,
    /// Why early stopping ended it; `None` for a trial that ran to its end or that a user stopped.
    pub stopped_early: Option<String>,
    pub tuned_hyper_parameters: BTreeMap<String, String>,
    pub creation_time: Timestamp,
    pub training_end_time: Option<Timestamp>,
}

/// The points of `page` (trials in launch order), continuing a best so far of `best_before`.
pub fn points(tuning_job: &str, page: &[TrainingJob], maximize: bool, best_before: Option<f64>) -> Vec<TrialPoint> {
    let mut best = best_before;
    page.iter()
        .enumerate()
        .map(|(position, trial)| {
            if trial.status == TrainingJobStatus::Completed
                && let Some(v) = trial.objective_value
            {
                best = Some(match best {
                    Some(b) if (maximize && b >= v) || (!maximize && b <= v) => b,
                    _ => v,
                });
            }
            TrialPoint {
                number: trials::index_of(tuning_job, &trial.name).map_or(position as u64 + 1, |i| i + 1),
                training_job_name: trial.name.clone(),
                status: trial.status,
                objective_value: trial.objective_value,
                best_so_far: best,
                stopped_early: trial.runs.stopped_early.clone(),
                tuned_hyper_parameters: trial
                    .origin
                    .as_ref()
                    .map(|o| o.tuned_hyper_parameters.clone())
                    .unwrap_or_default(),
                creation_time: trial.creation_time,
                training_end_time: trial.training_end_time,
            }
        })
        .collect()
}

/// Where a page of points ended: the list's own token, and the best so far carried over to the
/// next page. Opaque to clients: `<best as f64 bits in hex, or empty>.<list token>`.
#[derive(Debug, Clone, PartialEq)]
pub struct PageEnd {
    pub list_token: String,
    pub best_so_far: Option<f64>,
}

impl PageEnd {
    pub fn token(&self) -> String {
        let best = self.best_so_far.map_or(String::new(), |b| format!("{:016x}", b.to_bits()));
        format!("{best}.{}", self.list_token)
    }

    /// `None` for text no page returned.
    pub fn parse(token: &str) -> Option<PageEnd> {
        let (best, list_token) = token.split_once('.')?;
        let best_so_far = match best {
            "" => None,
            bits if bits.len() == 16 => Some(f64::from_bits(u64::from_str_radix(bits, 16).ok()?)),
            _ => return None,
        };
        if list_token.is_empty() || best_so_far.is_some_and(|b| !b.is_finite()) {
            return None;
        }
        Some(PageEnd { list_token: list_token.to_string(), best_so_far })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api;
    use crate::jobs::TrialOrigin;
    use crate::names::ArnContext;

    fn trial(index: u64, status: TrainingJobStatus, value: Option<f64>, early: Option<&str>) -> TrainingJob {
        let name = trials::name("tune", index);
        let request = api::CreateTrainingJobRequest { training_job_name: Some(name), ..Default::default() };
        let origin = TrialOrigin {
            tuning_job_name: "tune".into(),
            definition_name: None,
            tuned_hyper_parameters: BTreeMap::from([("lr".to_string(), format!("0.{index}"))]),
        };
        let mut job = TrainingJob::new(request, Some(origin), &ArnContext::default(), Timestamp::from_millis(1))
            .expect("a valid job");
        job.status = status;
        job.objective_value = value;
        job.runs.stopped_early = early.map(str::to_string);
        job
    }

    #[test]
    fn the_best_so_far_counts_completed_trials_only_and_carries_across_pages() {
        use TrainingJobStatus::*;
        let first = [
            trial(0, Completed, Some(0.5), None),
            trial(1, Stopped, Some(0.9), Some("median")),
            trial(2, InProgress, None, None),
        ];
        let points = points("tune", &first, true, None);
        let numbers: Vec<u64> = points.iter().map(|p| p.number).collect();
        assert_eq!(numbers, [1, 2, 3]);
        let best: Vec<Option<f64>> = points.iter().map(|p| p.best_so_far).collect();
        assert_eq!(best, [Some(0.5), Some(0.5), Some(0.5)], "an early-stopped trial's 0.9 is not a completed result");
        assert_eq!(points[1].stopped_early.as_deref(), Some("median"));
        assert_eq!(points[0].tuned_hyper_parameters["lr"], "0.0");

        // The next page goes on from the previous page's best.
        let second = [trial(3, Completed, Some(0.4), None), trial(4, Completed, Some(0.7), None)];
        let best: Vec<Option<f64>> =
            super::points("tune", &second, true, Some(0.5)).iter().map(|p| p.best_so_far).collect();
        assert_eq!(best, [Some(0.5), Some(0.7)]);
        // Minimising: lower is better.
        let best: Vec<Option<f64>> =
            super::points("tune", &second, false, Some(0.5)).iter().map(|p| p.best_so_far).collect();
        assert_eq!(best, [Some(0.4), Some(0.4)]);
    }

    #[test]
    fn a_page_token_round_trips_and_refuses_other_text() {
        for best in [None, Some(-1.25), Some(0.0)] {
            let end = PageEnd { list_token: "7b7d".into(), best_so_far: best };
            assert_eq!(PageEnd::parse(&end.token()), Some(end));
        }
        let nan = format!("{:016x}.7b7d", f64::NAN.to_bits());
        for bad in ["", "7b7d", ".", "12.7b7d", "zzzzzzzzzzzzzzzz.7b7d", nan.as_str()] {
            assert_eq!(PageEnd::parse(bad), None, "{bad:?}");
        }
    }
}
