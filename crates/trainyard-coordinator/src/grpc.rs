//! The gRPC services: convert messages to the model, call the coordinator, convert back. Errors
//! become statuses through the proto crate's one mapping, and are logged here, where handled.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use tracing::{debug, error};
use trainyard_model::DomainError;
use trainyard_proto::pb;
use trainyard_proto::pb::hyper_parameter_tuning_server::HyperParameterTuning;
use trainyard_proto::pb::training_server::Training;
use trainyard_proto::status::to_status;

use crate::audit;
use crate::auth::Auth;
use crate::core::Coordinator;

fn respond<M, P: From<M>>(operation: &str, result: Result<M, DomainError>) -> Result<Response<P>, Status> {
    match result {
        Ok(m) => Ok(Response::new(P::from(m))),
        Err(e) => {
            match &e {
                DomainError::Internal(_) | DomainError::Unavailable(_) => {
                    error!(operation, error = %e, "request failed")
                }
                _ => debug!(operation, error = %e, "request rejected"),
            }
            Err(to_status(&e))
        }
    }
}

/// The caller of a request, or the status that refuses it.
async fn caller<T>(
    auth: &Auth,
    operation: &str,
    request: &Request<T>,
) -> Result<trainyard_model::access::Caller, Status> {
    auth.caller(request).await.map_err(|e| {
        debug!(operation, error = %e, "request refused");
        to_status(&e)
    })
}

/// The caller of a call that changes something; a refusal is audited here, the outcome by
/// [`audited`].
async fn audited_caller<T>(
    auth: &Auth,
    operation: &str,
    resource: &str,
    request: &Request<T>,
) -> Result<trainyard_model::access::Caller, Status> {
    caller(auth, operation, request)
        .await
        .inspect_err(|status| audit::record(None, operation, resource, audit::refused(status)))
}

/// `respond`, with the answer recorded in the audit trail.
fn audited<M, P: From<M>>(
    who: &trainyard_model::access::Caller,
    operation: &str,
    resource: &str,
    result: Result<M, DomainError>,
) -> Result<Response<P>, Status> {
    let response = respond(operation, result);
    audit::record(Some(who), operation, resource, audit::of(&response));
    response
}

pub struct TuningService(pub Arc<Coordinator>, pub Arc<Auth>);

#[tonic::async_trait]
impl HyperParameterTuning for TuningService {
    async fn create_hyper_parameter_tuning_job(
        &self,
        request: Request<pb::CreateHyperParameterTuningJobRequest>,
    ) -> Result<Response<pb::CreateHyperParameterTuningJobResponse>, Status> {
        let name = request.get_ref().hyper_parameter_tuning_job_name.clone().unwrap_or_default();
        let who = audited_caller(&self.1, "CreateHyperParameterTuningJob", &name, &request).await?;
        let result = self.0.create_tuning_job(&who, request.into_inner().into()).await;
        audited(&who, "CreateHyperParameterTuningJob", &name, result)
    }

    async fn describe_hyper_parameter_tuning_job(
        &self,
        request: Request<pb::DescribeHyperParameterTuningJobRequest>,
    ) -> Result<Response<pb::DescribeHyperParameterTuningJobResponse>, Status> {
        let who = caller(&self.1, "DescribeHyperParameterTuningJob", &request).await?;
        respond("DescribeHyperParameterTuningJob", self.0.describe_tuning_job(&who, request.into_inner().into()).await)
    }

    async fn list_hyper_parameter_tuning_jobs(
        &self,
        request: Request<pb::ListHyperParameterTuningJobsRequest>,
    ) -> Result<Response<pb::ListHyperParameterTuningJobsResponse>, Status> {
        let who = caller(&self.1, "ListHyperParameterTuningJobs", &request).await?;
        respond("ListHyperParameterTuningJobs", self.0.list_tuning_jobs(&who, request.into_inner().into()).await)
    }

    async fn stop_hyper_parameter_tuning_job(
        &self,
        request: Request<pb::StopHyperParameterTuningJobRequest>,
    ) -> Result<Response<pb::StopHyperParameterTuningJobResponse>, Status> {
        let name = request.get_ref().hyper_parameter_tuning_job_name.clone().unwrap_or_default();
        let who = audited_caller(&self.1, "StopHyperParameterTuningJob", &name, &request).await?;
        let result = self.0.stop_tuning_job(&who, request.into_inner().into()).await;
        audited(&who, "StopHyperParameterTuningJob", &name, result.map(|()| pb::StopHyperParameterTuningJobResponse {}))
    }

    async fn delete_hyper_parameter_tuning_job(
        &self,
        request: Request<pb::DeleteHyperParameterTuningJobRequest>,
    ) -> Result<Response<pb::DeleteHyperParameterTuningJobResponse>, Status> {
        let name = request.get_ref().hyper_parameter_tuning_job_name.clone().unwrap_or_default();
        let who = audited_caller(&self.1, "DeleteHyperParameterTuningJob", &name, &request).await?;
        let result = self.0.delete_tuning_job(&who, request.into_inner().into()).await;
        audited(
            &who,
            "DeleteHyperParameterTuningJob",
            &name,
            result.map(|()| pb::DeleteHyperParameterTuningJobResponse {}),
        )
    }

    async fn list_training_jobs_for_hyper_parameter_tuning_job(
        &self,
        request: Request<pb::ListTrainingJobsForHyperParameterTuningJobRequest>,
    ) -> Result<Response<pb::ListTrainingJobsForHyperParameterTuningJobResponse>, Status> {
        let who = caller(&self.1, "ListTrainingJobsForHyperParameterTuningJob", &request).await?;
        respond(
            "ListTrainingJobsForHyperParameterTuningJob",
            self.0.list_trials(&who, request.into_inner().into()).await,
        )
    }

    async fn get_tuning_job_trials(
        &self,
        request: Request<pb::GetTuningJobTrialsRequest>,
    ) -> Result<Response<pb::GetTuningJobTrialsResponse>, Status> {
        let who = caller(&self.1, "GetTuningJobTrials", &request).await?;
        let r = request.into_inner();
        let result =
            self.0.trial_points(&who, &r.hyper_parameter_tuning_job_name, &r.next_token, r.max_trials).await.map(
                |page| pb::GetTuningJobTrialsResponse {
                    objective_metric_name: page.objective_metric,
                    maximize: page.maximize,
                    trials: page
                        .points
                        .into_iter()
                        .map(|p| pb::TuningTrial {
                            number: p.number,
                            training_job_name: p.training_job_name,
                            status: p.status.as_str().to_string(),
                            objective_value: p.objective_value,
                            best_so_far: p.best_so_far,
                            stopped_early: p.stopped_early.is_some(),
                            early_stopping_reason: p.stopped_early.unwrap_or_default(),
                            tuned_hyper_parameters: p.tuned_hyper_parameters.into_iter().collect(),
                            creation_time_millis: p.creation_time.millis(),
                            training_end_time_millis: p.training_end_time.map_or(0, |t| t.millis()),
                        })
                        .collect(),
                    next_token: page.next_token.unwrap_or_default(),
                    ended: page.ended,
                },
            );
        respond("GetTuningJobTrials", result)
    }
}

pub struct TrainingService(pub Arc<Coordinator>, pub Arc<Auth>);

#[tonic::async_trait]
impl Training for TrainingService {
    async fn create_training_job(
        &self,
        request: Request<pb::CreateTrainingJobRequest>,
    ) -> Result<Response<pb::CreateTrainingJobResponse>, Status> {
        let name = request.get_ref().training_job_name.clone().unwrap_or_default();
        let who = audited_caller(&self.1, "CreateTrainingJob", &name, &request).await?;
        let result = self.0.create_training_job(&who, request.into_inner().into()).await;
        audited(&who, "CreateTrainingJob", &name, result)
    }

    async fn describe_training_job(
        &self,
        request: Request<pb::DescribeTrainingJobRequest>,
    ) -> Result<Response<pb::DescribeTrainingJobResponse>, Status> {
        let who = caller(&self.1, "DescribeTrainingJob", &request).await?;
        respond("DescribeTrainingJob", self.0.describe_training_job(&who, request.into_inner().into()).await)
    }

    async fn list_training_jobs(
        &self,
        request: Request<pb::ListTrainingJobsRequest>,
    ) -> Result<Response<pb::ListTrainingJobsResponse>, Status> {
        let who = caller(&self.1, "ListTrainingJobs", &request).await?;
        respond("ListTrainingJobs", self.0.list_training_jobs(&who, request.into_inner().into()).await)
    }

    async fn stop_training_job(
        &self,
        request: Request<pb::StopTrainingJobRequest>,
    ) -> Result<Response<pb::StopTrainingJobResponse>, Status> {
        let name = request.get_ref().training_job_name.clone().unwrap_or_default();
        let who = audited_caller(&self.1, "StopTrainingJob", &name, &request).await?;
        let result = self.0.stop_training_job(&who, request.into_inner().into()).await;
        audited(&who, "StopTrainingJob", &name, result.map(|()| pb::StopTrainingJobResponse {}))
    }

    async fn get_training_job_logs(
        &self,
        request: Request<pb::GetTrainingJobLogsRequest>,
    ) -> Result<Response<pb::GetTrainingJobLogsResponse>, Status> {
        let who = caller(&self.1, "GetTrainingJobLogs", &request).await?;
        let r = request.into_inner();
        let result =
            self.0.read_logs(&who, &r.training_job_name, r.after_sequence, r.max_lines).await.map(|(lines, ended)| {
                pb::GetTrainingJobLogsResponse {
                    lines: lines
                        .into_iter()
                        .map(|l| pb::LogEntry {
                            sequence: l.seq,
                            instance: l.instance,
                            stream: l.stream,
                            timestamp_millis: l.timestamp.millis(),
                            text: l.text,
                        })
                        .collect(),
                    ended,
                }
            });
        respond("GetTrainingJobLogs", result)
    }

    async fn get_training_job_metrics(
        &self,
        request: Request<pb::GetTrainingJobMetricsRequest>,
    ) -> Result<Response<pb::GetTrainingJobMetricsResponse>, Status> {
        let who = caller(&self.1, "GetTrainingJobMetrics", &request).await?;
        let r = request.into_inner();
        let result = self
            .0
            .read_metrics(&who, &r.training_job_name, &r.metric_name, &r.next_token, r.max_samples)
            .await
            .map(|(samples, next_token, ended)| {
                // Ordered by metric: each run of one name is a series.
                let mut series: Vec<pb::MetricSeries> = Vec::new();
                for sample in samples {
                    let point = pb::MetricPoint { timestamp_millis: sample.timestamp.millis(), value: sample.value };
                    match series.last_mut() {
                        Some(last) if last.metric_name == sample.name => last.points.push(point),
                        _ => series.push(pb::MetricSeries { metric_name: sample.name, points: vec![point] }),
                    }
                }
                pb::GetTrainingJobMetricsResponse { series, next_token: next_token.unwrap_or_default(), ended }
            });
        respond("GetTrainingJobMetrics", result)
    }
}
