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

pub struct TuningService(pub Arc<Coordinator>);

#[tonic::async_trait]
impl HyperParameterTuning for TuningService {
    async fn create_hyper_parameter_tuning_job(
        &self,
        request: Request<pb::CreateHyperParameterTuningJobRequest>,
    ) -> Result<Response<pb::CreateHyperParameterTuningJobResponse>, Status> {
        respond("CreateHyperParameterTuningJob", self.0.create_tuning_job(request.into_inner().into()).await)
    }

    async fn describe_hyper_parameter_tuning_job(
        &self,
        request: Request<pb::DescribeHyperParameterTuningJobRequest>,
    ) -> Result<Response<pb::DescribeHyperParameterTuningJobResponse>, Status> {
        respond("DescribeHyperParameterTuningJob", self.0.describe_tuning_job(request.into_inner().into()).await)
    }

    async fn list_hyper_parameter_tuning_jobs(
        &self,
        request: Request<pb::ListHyperParameterTuningJobsRequest>,
    ) -> Result<Response<pb::ListHyperParameterTuningJobsResponse>, Status> {
        respond("ListHyperParameterTuningJobs", self.0.list_tuning_jobs(request.into_inner().into()).await)
    }

    async fn stop_hyper_parameter_tuning_job(
        &self,
        request: Request<pb::StopHyperParameterTuningJobRequest>,
    ) -> Result<Response<pb::StopHyperParameterTuningJobResponse>, Status> {
        let result = self.0.stop_tuning_job(request.into_inner().into()).await;
        respond("StopHyperParameterTuningJob", result.map(|()| pb::StopHyperParameterTuningJobResponse {}))
    }

    async fn list_training_jobs_for_hyper_parameter_tuning_job(
        &self,
        request: Request<pb::ListTrainingJobsForHyperParameterTuningJobRequest>,
    ) -> Result<Response<pb::ListTrainingJobsForHyperParameterTuningJobResponse>, Status> {
        respond("ListTrainingJobsForHyperParameterTuningJob", self.0.list_trials(request.into_inner().into()).await)
    }
}

pub struct TrainingService(pub Arc<Coordinator>);

#[tonic::async_trait]
impl Training for TrainingService {
    async fn create_training_job(
        &self,
        request: Request<pb::CreateTrainingJobRequest>,
    ) -> Result<Response<pb::CreateTrainingJobResponse>, Status> {
        respond("CreateTrainingJob", self.0.create_training_job(request.into_inner().into()).await)
    }

    async fn describe_training_job(
        &self,
        request: Request<pb::DescribeTrainingJobRequest>,
    ) -> Result<Response<pb::DescribeTrainingJobResponse>, Status> {
        respond("DescribeTrainingJob", self.0.describe_training_job(request.into_inner().into()).await)
    }

    async fn list_training_jobs(
        &self,
        request: Request<pb::ListTrainingJobsRequest>,
    ) -> Result<Response<pb::ListTrainingJobsResponse>, Status> {
        respond("ListTrainingJobs", self.0.list_training_jobs(request.into_inner().into()).await)
    }

    async fn stop_training_job(
        &self,
        request: Request<pb::StopTrainingJobRequest>,
    ) -> Result<Response<pb::StopTrainingJobResponse>, Status> {
        let result = self.0.stop_training_job(request.into_inner().into()).await;
        respond("StopTrainingJob", result.map(|()| pb::StopTrainingJobResponse {}))
    }

    async fn get_training_job_logs(
        &self,
        request: Request<pb::GetTrainingJobLogsRequest>,
    ) -> Result<Response<pb::GetTrainingJobLogsResponse>, Status> {
        let r = request.into_inner();
        let result =
            self.0.read_logs(&r.training_job_name, r.after_sequence, r.max_lines).await.map(|(lines, ended)| {
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
}
