//! A job's priority: the `trainyard:priority` tag (an integer, higher first, 0 when absent). A tuning
//! job's tags are its trials' tags, so its trials share its priority.
//!
//! What it does (the scheduler's policy): queued jobs are served by priority first; a spot job of
//! a higher priority than a waiting job is never interrupted for it. How high a user may go is the
//! operator's choice (`limits.max_job_priority`, 0 by default: nobody raises a job above normal
//! until allowed); anyone may lower theirs (background work).

use std::ops::RangeInclusive;

use crate::api;
use crate::validation::Violations;

pub const PRIORITY_TAG: &str = "trainyard:priority";
pub const PRIORITY_RANGE: RangeInclusive<i32> = -100..=100;

/// The priority the tags give (0 without the tag; validation refused anything else).
pub fn of(tags: Option<&Vec<api::Tag>>) -> i32 {
    tags.into_iter()
        .flatten()
        .find(|t| t.key.as_deref() == Some(PRIORITY_TAG))
        .and_then(|t| t.value.as_deref()?.trim().parse().ok())
        .filter(|p| PRIORITY_RANGE.contains(p))
        .unwrap_or(0)
}

/// The tag's value is an integer in [`PRIORITY_RANGE`], at most `max` (the operator's limit).
pub(crate) fn rules(tags: Option<&Vec<api::Tag>>, path: &str, max: i32, v: &mut Violations) {
    for (i, tag) in tags.into_iter().flatten().enumerate() {
        if tag.key.as_deref() != Some(PRIORITY_TAG) {
            continue;
        }
        let value = tag.value.as_deref().unwrap_or_default();
        match value.trim().parse::<i32>() {
            Ok(p) if !PRIORITY_RANGE.contains(&p) || p > max => {
                let highest = max.min(*PRIORITY_RANGE.end());
                v.push_at(
                    format!("{path}[{i}].Value"),
                    format!(
                        "{PRIORITY_TAG} must be from {} to {highest} on this cluster (limits.max_job_priority) (got {p})",
                        PRIORITY_RANGE.start()
                    ),
                );
            }
            Ok(_) => {}
            Err(_) => v.push_at(
                format!("{path}[{i}].Value"),
                format!(
                    "{PRIORITY_TAG} must be an integer from {} to {} (got '{value}')",
                    PRIORITY_RANGE.start(),
                    PRIORITY_RANGE.end()
                ),
            ),
        }
    }
}
