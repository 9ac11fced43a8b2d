//! Deciding when to stop: trials that will not win (early stopping, Hyperband), and tuning jobs
//! that are done (completion criteria). All values are "larger is better": callers negate a
//! minimised objective.

/// The median stopping rule of `TrainingJobEarlyStoppingType: Auto`, as SageMaker documents it:
/// after each epoch, compare the trial's objective with the median, over earlier trials, of their
/// running-average objective up to the same epoch; stop the trial if it is worse.
///
/// `curve` holds the trial's objective after each epoch so far; `others` the curves of finished
/// trials. With fewer than [`MEDIAN_RULE_MIN_TRIALS`] comparable trials the rule does not stop.
pub fn median_rule(curve: &[f64], others: &[Vec<f64>]) -> bool {
    let epoch = curve.len();
    let Some(&current) = curve.last() else { return false };
    let mut averages: Vec<f64> =
        others.iter().filter(|c| c.len() >= epoch).map(|c| c[..epoch].iter().sum::<f64>() / epoch as f64).collect();
    if averages.len() < MEDIAN_RULE_MIN_TRIALS {
        return false;
    }
    averages.sort_by(f64::total_cmp);
    let mid = averages.len() / 2;
    let median =
        if averages.len().is_multiple_of(2) { (averages[mid - 1] + averages[mid]) / 2.0 } else { averages[mid] };
    current < median
}

/// Earlier trials the median rule needs before it stops anything.
pub const MEDIAN_RULE_MIN_TRIALS: usize = 3;

/// Why a tuning job completed before running all its trials.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Completion {
    /// The best objective reached TargetObjectiveMetricValue.
    TargetReached,
    /// This many trials in a row improved the best objective by less than 1 %.
    NotImproving(u32),
    /// The convergence test held (see [`converged`]).
    Converged,
}

/// The completion criteria, in SageMaker's terms.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Criteria {
    /// Larger is better: already negated for a minimised objective.
    pub target: Option<f64>,
    /// BestObjectiveNotImproving.MaxNumberOfTrainingJobsNotImproving.
    pub max_not_improving: Option<u32>,
    /// ConvergenceDetected.CompleteOnConvergence = Enabled.
    pub complete_on_convergence: bool,
}

/// An improvement counts when it beats the best so far by at least 1 % (relative).
fn improves(value: f64, best: f64) -> bool {
    value > best + (best.abs() * 0.01).max(1e-12)
}

/// How many of the last trials, in order of completion, did not improve the best by 1 %.
pub fn trials_not_improving(values: &[f64]) -> u32 {
    let mut best = f64::NEG_INFINITY;
    let mut streak = 0;
    for &v in values {
        if best == f64::NEG_INFINITY || improves(v, best) {
            best = best.max(v);
            streak = 0;
        } else {
            best = best.max(v);
            streak += 1;
        }
    }
    streak
}

/// The convergence test: at least [`CONVERGENCE_MIN_TRIALS`] trials, and the best objective of
/// the last quarter of them (at least five) is within 0.1 % of the best before them.
pub fn converged(values: &[f64]) -> bool {
    let n = values.len();
    if n < CONVERGENCE_MIN_TRIALS {
        return false;
    }
    let window = (n / 4).max(5);
    let before = values[..n - window].iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let recent = values[n - window..].iter().copied().fold(f64::NEG_INFINITY, f64::max);
    recent <= before + (before.abs() * 0.001).max(1e-12)
}

pub const CONVERGENCE_MIN_TRIALS: usize = 10;

/// Whether a tuning job is complete, given its trials' final objectives in order of completion.
pub fn complete(criteria: &Criteria, values: &[f64]) -> Option<Completion> {
    let best = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if let Some(target) = criteria.target
        && best >= target
    {
        return Some(Completion::TargetReached);
    }
    if let Some(max) = criteria.max_not_improving {
        let streak = trials_not_improving(values);
        if streak >= max {
            return Some(Completion::NotImproving(streak));
        }
    }
    if criteria.complete_on_convergence && converged(values) {
        return Some(Completion::Converged);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_rule_stops_trials_worse_than_the_median_of_running_averages() {
        let others = vec![vec![0.5, 0.6, 0.7], vec![0.3, 0.4, 0.5], vec![0.7, 0.8, 0.9]];
        // At epoch 2 the running averages are 0.55, 0.35, 0.75: the median is 0.55.
        assert!(median_rule(&[0.1, 0.5], &others), "0.5 < 0.55");
        assert!(!median_rule(&[0.1, 0.6], &others), "0.6 >= 0.55");
        // Trials shorter than this epoch do not count; with fewer than three, never stop.
        assert!(!median_rule(&[0.0, 0.0, 0.0, 0.0], &others));
        assert!(!median_rule(&[0.0], &others[..2]));
        assert!(!median_rule(&[], &others));
    }

    #[test]
    fn completion_criteria_hold_as_documented() {
        let target = Criteria { target: Some(0.9), ..Default::default() };
        assert_eq!(complete(&target, &[0.5, 0.95]), Some(Completion::TargetReached));
        assert_eq!(complete(&target, &[0.5, 0.85]), None);

        // 1.0 → 1.005 is under 1 %: not an improvement; 1.02 is.
        assert_eq!(trials_not_improving(&[1.0, 1.005, 0.7]), 2);
        assert_eq!(trials_not_improving(&[1.0, 1.005, 1.02]), 0);
        let patience = Criteria { max_not_improving: Some(3), ..Default::default() };
        assert_eq!(complete(&patience, &[1.0, 0.9, 0.8]), None);
        assert_eq!(complete(&patience, &[1.0, 0.9, 0.8, 1.001]), Some(Completion::NotImproving(3)));

        let convergence = Criteria { complete_on_convergence: true, ..Default::default() };
        let rising: Vec<f64> = (0..12).map(f64::from).collect();
        assert_eq!(complete(&convergence, &rising), None, "still improving");
        let flat: Vec<f64> = (0..12).map(|i| if i < 6 { f64::from(i) } else { 5.0 }).collect();
        assert_eq!(complete(&convergence, &flat), Some(Completion::Converged));
        assert_eq!(complete(&convergence, &flat[..9]), None, "too few trials to judge");
        // Minimised objectives arrive negated: the same rules apply.
        assert_eq!(
            complete(&Criteria { target: Some(-0.1), ..Default::default() }, &[-0.5, -0.05]),
            Some(Completion::TargetReached)
        );
    }
}
