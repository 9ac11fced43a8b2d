//! List queries: SageMaker's filters, sort options, `MaxResults` and `NextToken`.
//!
//! Pagination is by key, not by offset: a `NextToken` carries the sort key and name of the last item
//! returned, and the next page starts strictly after it. Jobs created between two pages therefore
//! never shift or repeat what a client has seen. A token is bound to the query it came from (its
//! filters and sort); using it with another query is a validation error.

use serde::{Deserialize, Serialize};

use crate::api;
use crate::error::DomainError;
use crate::timestamp::Timestamp;
use crate::validation::{Validate, Violations};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SortKey {
    Name,
    CreationTime,
    Status,
    /// Trials only; trials with no objective value are left out of this sort.
    FinalObjectiveMetricValue,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SortOrder {
    Ascending,
    Descending,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ListFilter {
    pub name_contains: Option<String>,
    pub status_equals: Option<String>,
    pub creation_time_after: Option<Timestamp>,
    pub creation_time_before: Option<Timestamp>,
    pub last_modified_time_after: Option<Timestamp>,
    pub last_modified_time_before: Option<Timestamp>,
    /// Only the trials of this tuning job.
    pub tuning_job_name: Option<String>,
    /// Only the jobs of this user (a caller without the admin scope sees only its own).
    pub owner: Option<String>,
    /// A filter no Trainyard job can match (e.g. a training plan): the result is empty.
    pub matches_nothing: bool,
}

/// The value of the sort key of the last item on a page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CursorKey {
    Text(String),
    Int(i64),
    Float(f64),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cursor {
    pub key: CursorKey,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ListQuery {
    pub filter: ListFilter,
    pub sort_by: SortKey,
    pub sort_order: SortOrder,
    pub limit: u32,
    pub after: Option<Cursor>,
}

/// One page of results and the token for the next one.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_token: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct Token {
    v: u8,
    /// Fingerprint of the query's filters and sort.
    q: String,
    c: Cursor,
}

impl ListQuery {
    fn fingerprint(&self) -> String {
        // FNV-1a over the canonical JSON of the filter and sort: stable across processes and versions.
        let text = serde_json::to_string(&(&self.filter, self.sort_by, self.sort_order)).unwrap_or_default();
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in text.bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        format!("{hash:016x}")
    }

    /// The token that continues this query after `cursor`.
    pub fn token_after(&self, cursor: Cursor) -> String {
        let token = Token { v: 1, q: self.fingerprint(), c: cursor };
        crate::hex::encode(serde_json::to_string(&token).unwrap_or_default().as_bytes())
    }

    fn resume(mut self, token: Option<&str>) -> Result<Self, DomainError> {
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            return Ok(self);
        };
        let invalid = || DomainError::invalid("NextToken", "is not a token that this list operation returned");
        let bytes = crate::hex::decode(token).ok_or_else(invalid)?;
        let token: Token = serde_json::from_slice(&bytes).map_err(|_| invalid())?;
        if token.v != 1 {
            return Err(invalid());
        }
        if token.q != self.fingerprint() {
            return Err(DomainError::invalid(
                "NextToken",
                "belongs to a query with other filters or sort options: repeat the query it came from",
            ));
        }
        self.after = Some(token.c);
        Ok(self)
    }

    /// `owner`: only that user's jobs (a NextToken of another owner's listing is refused).
    pub fn for_tuning_jobs(
        request: &api::ListHyperParameterTuningJobsRequest,
        owner: Option<String>,
    ) -> Result<Self, DomainError> {
        structural(request)?;
        let query = ListQuery {
            filter: ListFilter {
                name_contains: request.name_contains.clone(),
                status_equals: request.status_equals.clone(),
                creation_time_after: request.creation_time_after,
                creation_time_before: request.creation_time_before,
                last_modified_time_after: request.last_modified_time_after,
                last_modified_time_before: request.last_modified_time_before,
                owner,
                ..Default::default()
            },
            sort_by: sort_key(request.sort_by.as_deref(), SortKey::Name),
            sort_order: sort_order(request.sort_order.as_deref()),
            limit: limit(request.max_results, 100),
            after: None,
        };
        query.resume(request.next_token.as_deref())
    }

    pub fn for_training_jobs(
        request: &api::ListTrainingJobsRequest,
        owner: Option<String>,
    ) -> Result<Self, DomainError> {
        structural(request)?;
        let query = ListQuery {
            filter: ListFilter {
                name_contains: request.name_contains.clone(),
                status_equals: request.status_equals.clone(),
                creation_time_after: request.creation_time_after,
                creation_time_before: request.creation_time_before,
                last_modified_time_after: request.last_modified_time_after,
                last_modified_time_before: request.last_modified_time_before,
                tuning_job_name: None,
                owner,
                matches_nothing: request.training_plan_arn_equals.is_some()
                    || request.warm_pool_status_equals.is_some(),
            },
            sort_by: sort_key(request.sort_by.as_deref(), SortKey::CreationTime),
            sort_order: sort_order(request.sort_order.as_deref()),
            limit: limit(request.max_results, 10),
            after: None,
        };
        query.resume(request.next_token.as_deref())
    }

    pub fn for_trials(request: &api::ListTrainingJobsForHyperParameterTuningJobRequest) -> Result<Self, DomainError> {
        structural(request)?;
        let query = ListQuery {
            filter: ListFilter {
                status_equals: request.status_equals.clone(),
                tuning_job_name: request.hyper_parameter_tuning_job_name.clone(),
                ..Default::default()
            },
            sort_by: sort_key(request.sort_by.as_deref(), SortKey::Name),
            sort_order: sort_order(request.sort_order.as_deref()),
            limit: limit(request.max_results, 10),
            after: None,
        };
        query.resume(request.next_token.as_deref())
    }
}

impl ListQuery {
    /// A tuning job's trials in launch order (creation time, then name), `limit` a page, from
    /// where `next_token` (a token of this query) ended.
    pub fn trials_in_launch_order(tuning_job: &str, limit: u32, next_token: Option<&str>) -> Result<Self, DomainError> {
        let query = ListQuery {
            filter: ListFilter { tuning_job_name: Some(tuning_job.to_string()), ..Default::default() },
            sort_by: SortKey::CreationTime,
            sort_order: SortOrder::Ascending,
            limit,
            after: None,
        };
        query.resume(next_token)
    }
}

fn structural(request: &impl Validate) -> Result<(), DomainError> {
    let v: Violations = request.violations();
    v.into_result().map_err(DomainError::Validation)
}

fn sort_key(raw: Option<&str>, default: SortKey) -> SortKey {
    // The values were checked against the operation's enum by `structural`.
    match raw {
        Some("Name") => SortKey::Name,
        Some("CreationTime") => SortKey::CreationTime,
        Some("Status") => SortKey::Status,
        Some("FinalObjectiveMetricValue") => SortKey::FinalObjectiveMetricValue,
        _ => default,
    }
}

fn sort_order(raw: Option<&str>) -> SortOrder {
    if raw == Some("Descending") { SortOrder::Descending } else { SortOrder::Ascending }
}

fn limit(max_results: Option<i32>, default: u32) -> u32 {
    max_results.and_then(|m| u32::try_from(m).ok()).filter(|m| *m > 0).unwrap_or(default)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_resume_the_query_they_came_from_only() {
        let request = api::ListTrainingJobsRequest { name_contains: Some("abc".into()), ..Default::default() };
        let query = ListQuery::for_training_jobs(&request, None).expect("valid");
        assert_eq!((query.sort_by, query.sort_order, query.limit), (SortKey::CreationTime, SortOrder::Ascending, 10));
        let cursor = Cursor { key: CursorKey::Int(42), name: "job-1".into() };
        let token = query.token_after(cursor.clone());

        let again = api::ListTrainingJobsRequest { next_token: Some(token.clone()), ..request.clone() };
        assert_eq!(ListQuery::for_training_jobs(&again, None).expect("resumes").after, Some(cursor));
        assert!(
            ListQuery::for_training_jobs(&again, Some("ana".into())).is_err(),
            "another user's listing cannot be continued"
        );

        let other =
            api::ListTrainingJobsRequest { next_token: Some(token), name_contains: Some("x".into()), ..request };
        assert!(
            matches!(ListQuery::for_training_jobs(&other, None), Err(DomainError::Validation(v)) if v[0].field == "NextToken")
        );

        let garbage = api::ListTrainingJobsRequest { next_token: Some("zz".into()), ..Default::default() };
        assert!(ListQuery::for_training_jobs(&garbage, None).is_err());
    }

    #[test]
    fn list_requests_are_validated() {
        let request = api::ListHyperParameterTuningJobsRequest {
            max_results: Some(0),
            sort_by: Some("Size".into()),
            ..Default::default()
        };
        let Err(DomainError::Validation(v)) = ListQuery::for_tuning_jobs(&request, None) else { panic!("must fail") };
        let fields: Vec<&str> = v.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, ["MaxResults", "SortBy"]);
    }
}
