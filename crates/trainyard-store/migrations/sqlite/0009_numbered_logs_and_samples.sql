-- The agent's own number of each log line and metric sample within its instance. An agent keeps
-- what it sent until the coordinator says it is stored, and sends it again to the next coordinator
-- when the one it sent it to died first (it may have stored some of it): a number stored once is
-- not stored again. NULL for rows stored before agents numbered them (NULLs never collide).
ALTER TABLE training_job_logs ADD COLUMN instance_line BIGINT;
CREATE UNIQUE INDEX training_job_logs_instance_line
    ON training_job_logs (training_job_name, instance, instance_line);
ALTER TABLE metric_samples ADD COLUMN instance INTEGER;
ALTER TABLE metric_samples ADD COLUMN instance_sample BIGINT;
CREATE UNIQUE INDEX metric_samples_instance_sample
    ON metric_samples (training_job_name, instance, instance_sample);
