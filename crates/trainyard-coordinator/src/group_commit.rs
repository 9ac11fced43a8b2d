//! New jobs from concurrent requests written to the store together: one statement and one commit
//! for all the creates that arrived while the previous write ran, instead of one each. Under load
//! this is what lets many clients' creates share the database's round trips, locks and commits;
//! a create that arrives alone is written at once, as a batch of one.
//!
//! The writes are made by tasks of their own, not by one of the waiting requests: a request whose
//! client gives up is dropped mid-await, and must not take the others' write with it.

use std::sync::Arc;

use tokio::sync::{Mutex, mpsc, oneshot};
use tracing::debug;
use trainyard_model::jobs::{TrainingJob, TuningJob};
use trainyard_store::{Store, StoreError, Versioned};

/// Jobs written in one statement at most (PostgreSQL allows 65,535 parameters; a training job
/// binds 14).
const MAX_BATCH: usize = 64;
/// Batches in flight at once: while one commits, the next is gathered and sent.
const WRITERS: usize = 2;

/// The store's outcome of each job of a batch (an inserted job is at version 1).
type Outcomes = Result<Vec<Result<(), StoreError>>, StoreError>;
/// The store's batch insert, as its `async_trait` methods return it.
type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// What can be created in batches.
pub trait Insert: Sized + Send + Sync + 'static {
    fn insert<'a>(store: &'a dyn Store, jobs: &'a [Self]) -> BoxFuture<'a, Outcomes>;
}

impl Insert for TrainingJob {
    fn insert<'a>(store: &'a dyn Store, jobs: &'a [Self]) -> BoxFuture<'a, Outcomes> {
        store.create_training_jobs(jobs)
    }
}

impl Insert for TuningJob {
    fn insert<'a>(store: &'a dyn Store, jobs: &'a [Self]) -> BoxFuture<'a, Outcomes> {
        store.create_tuning_jobs(jobs)
    }
}

struct Pending<T> {
    job: T,
    reply: oneshot::Sender<Result<Versioned<T>, StoreError>>,
}

pub struct GroupCommit<T> {
    sender: mpsc::UnboundedSender<Pending<T>>,
}

impl<T: Insert> GroupCommit<T> {
    /// Starts the writers; they stop when this is dropped.
    pub fn start(store: Arc<dyn Store>) -> Self {
        let (sender, receiver) = mpsc::unbounded_channel();
        let receiver = Arc::new(Mutex::new(receiver));
        for _ in 0..WRITERS {
            tokio::spawn(write(store.clone(), receiver.clone()));
        }
        Self { sender }
    }

    /// Stores a new job (written with whatever other creates are waiting); `AlreadyExists` when its
    /// name is taken.
    pub async fn create(&self, job: T) -> Result<Versioned<T>, StoreError> {
        let mut outcomes = self.create_all(vec![job]).await;
        outcomes.pop().unwrap_or_else(|| Err(stopped()))
    }

    /// Stores new jobs, all handed to the writers before waiting for any, so that they share a
    /// statement (a tuning job's trials launched together); each one's outcome, in order.
    pub async fn create_all(&self, jobs: Vec<T>) -> Vec<Result<Versioned<T>, StoreError>> {
        let waiting: Vec<_> = jobs
            .into_iter()
            .map(|job| {
                let (reply, outcome) = oneshot::channel();
                self.sender.send(Pending { job, reply }).map(|()| outcome).map_err(|_| stopped())
            })
            .collect();
        let mut outcomes = Vec::with_capacity(waiting.len());
        for outcome in waiting {
            outcomes.push(match outcome {
                Ok(outcome) => outcome.await.unwrap_or_else(|_| Err(stopped())),
                Err(e) => Err(e),
            });
        }
        outcomes
    }
}

fn stopped() -> StoreError {
    StoreError::Unreachable("the coordinator is shutting down".into())
}

/// One writer: takes what waits (up to [`MAX_BATCH`]), writes it, answers each request.
async fn write<T: Insert>(store: Arc<dyn Store>, receiver: Arc<Mutex<mpsc::UnboundedReceiver<Pending<T>>>>) {
    loop {
        let batch = {
            let mut receiver = receiver.lock().await;
            let Some(first) = receiver.recv().await else { return };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match receiver.try_recv() {
                    Ok(more) => batch.push(more),
                    Err(_) => break,
                }
            }
            batch
        };
        let (jobs, replies): (Vec<T>, Vec<_>) = batch.into_iter().map(|p| (p.job, p.reply)).unzip();
        let outcomes = match T::insert(&*store, &jobs).await {
            Ok(outcomes) => outcomes,
            // Something in one job (a trial whose tuning job is gone, say) fails the statement:
            // each is tried alone so that only its own create fails.
            Err(e) if jobs.len() > 1 && !e.is_unavailable() => {
                debug!(error = %e, jobs = jobs.len(), "a batch of creates failed; writing them one by one");
                let mut outcomes = Vec::with_capacity(jobs.len());
                for job in &jobs {
                    let alone = T::insert(&*store, std::slice::from_ref(job)).await;
                    outcomes.push(alone.and_then(trainyard_store::only_outcome));
                }
                outcomes
            }
            Err(e) => jobs.iter().map(|_| Err(e.shared())).collect(),
        };
        // Each job goes back to its request as written: moved, not copied.
        for ((job, reply), outcome) in jobs.into_iter().zip(replies).zip(outcomes) {
            // A request whose client went away no longer waits; its job is stored all the same.
            let _ = reply.send(outcome.map(|()| Versioned { value: job, version: 1 }));
        }
    }
}
