//! The store, timed: every call's latency by operation and outcome goes to
//! `trainyard_store_seconds` (a slow or failing database shows there before it shows anywhere
//! else). A decorator over whichever backend runs, so the store crate stays free of metrics.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use trainyard_model::jobs::{TrainingJob, TrialCounts, TuningJob};
use trainyard_model::listing::{ListQuery, Page};
use trainyard_store::{
    AgentCordon, AgentIdentity, Backend, LeaderRecord, LogRecord, MetricSample, Store, StoreError, TokenRecord,
    Versioned,
};

use crate::telemetry::StoreCall;

pub struct TimedStore {
    inner: Arc<dyn Store>,
    seconds: Family<StoreCall, Histogram>,
}

impl TimedStore {
    pub fn wrap(inner: Arc<dyn Store>, seconds: Family<StoreCall, Histogram>) -> Arc<dyn Store> {
        Arc::new(TimedStore { inner, seconds })
    }

    fn observe(&self, operation: &'static str, started: Instant, ok: bool) {
        let label = StoreCall { operation, outcome: if ok { "ok" } else { "error" } };
        self.seconds.get_or_create(&label).observe(started.elapsed().as_secs_f64());
    }
}

/// Each operation forwarded and timed.
macro_rules! timed {
    ($( fn $name:ident(&self $(, $arg:ident : $ty:ty)*) -> $ret:ty; )*) => {
        #[async_trait]
        impl Store for TimedStore {
            fn backend(&self) -> Backend {
                self.inner.backend()
            }
            $(
                async fn $name(&self $(, $arg: $ty)*) -> Result<$ret, StoreError> {
                    let started = Instant::now();
                    let result = self.inner.$name($($arg),*).await;
                    self.observe(stringify!($name), started, result.is_ok());
                    result
                }
            )*
        }
    };
}

timed! {
    fn create_tuning_jobs(&self, jobs: &[TuningJob]) -> Vec<Result<(), StoreError>>;
    fn get_tuning_job(&self, name: &str) -> Option<Versioned<TuningJob>>;
    fn list_tuning_jobs(&self, query: &ListQuery) -> Page<TuningJob>;
    fn update_tuning_job(&self, job: &TuningJob, expected_version: i64) -> Versioned<TuningJob>;
    fn active_tuning_jobs(&self) -> Vec<Versioned<TuningJob>>;
    fn count_active_tuning_jobs(&self) -> u64;
    fn create_training_jobs(&self, jobs: &[TrainingJob]) -> Vec<Result<(), StoreError>>;
    fn get_training_job(&self, name: &str) -> Option<Versioned<TrainingJob>>;
    fn list_training_jobs(&self, query: &ListQuery) -> Page<TrainingJob>;
    fn update_training_job(&self, job: &TrainingJob, expected_version: i64) -> Versioned<TrainingJob>;
    fn update_training_jobs(&self, jobs: &[(TrainingJob, i64)]) -> Vec<Result<i64, StoreError>>;
    fn active_training_jobs(&self, tuning_job: Option<&str>) -> Vec<Versioned<TrainingJob>>;
    fn trial_counts(&self, tuning_jobs: &[String]) -> HashMap<String, TrialCounts>;
    fn append_logs(&self, training_job: &str, lines: &[LogRecord]) -> ();
    fn read_logs(&self, training_job: &str, after_seq: i64, limit: u32) -> Vec<LogRecord>;
    fn read_instance_logs(&self, training_job: &str, instance: u32, from: trainyard_model::Timestamp, after_seq: i64, limit: u32) -> Vec<LogRecord>;
    fn last_log_seq(&self, training_job: &str) -> i64;
    fn append_metrics(&self, training_job: &str, samples: &[MetricSample]) -> ();
    fn read_metrics(&self, training_job: &str) -> Vec<MetricSample>;
    fn read_metric_page(&self, training_job: &str, metric: Option<&str>, after: Option<(&str, trainyard_model::Timestamp)>, limit: u32) -> Vec<MetricSample>;
    fn count_trials(&self, tuning_job: &str) -> u64;
    fn best_trial(&self, tuning_job: &str, maximize: bool) -> Option<TrainingJob>;
    fn prune_ended_jobs(&self, before: trainyard_model::Timestamp, limit: u32) -> (u64, u64);
    fn prune_logs(&self, before: trainyard_model::Timestamp, limit: u32) -> u64;
    fn delete_tuning_job(&self, name: &str) -> bool;
    fn create_token(&self, token: &TokenRecord) -> ();
    fn get_token(&self, id: &str) -> Option<TokenRecord>;
    fn get_token_by_access_key(&self, access_key_id: &str) -> Option<TokenRecord>;
    fn list_tokens(&self) -> Vec<TokenRecord>;
    fn use_join_token(&self, id: &str) -> bool;
    fn revoke_token(&self, id: &str, at: trainyard_model::Timestamp) -> bool;
    fn put_agent_identity(&self, identity: &AgentIdentity) -> ();
    fn agent_identity_by_certificate(&self, certificate_sha256: &str) -> Option<AgentIdentity>;
    fn revoke_agent(&self, agent_id: &str, at: trainyard_model::Timestamp) -> bool;
    fn put_cordon(&self, cordon: &AgentCordon) -> ();
    fn delete_cordon(&self, agent_id: &str) -> bool;
    fn cordons(&self) -> Vec<AgentCordon>;
    fn acquire_leadership(&self, holder: &str, address: &str, lease: std::time::Duration) -> Option<i64>;
    fn renew_leadership(&self, epoch: i64, lease: std::time::Duration) -> bool;
    fn release_leadership(&self, epoch: i64) -> ();
    fn leader(&self) -> Option<LeaderRecord>;
    fn backup_to(&self, path: &std::path::Path) -> ();
}
