-- Tuning and training jobs. The accepted request is stored whole (JSON, SageMaker's shape); the
-- columns beside it are what queries filter and sort on. Times are Unix milliseconds.
CREATE TABLE tuning_jobs (
    name               TEXT    PRIMARY KEY,
    arn                TEXT    NOT NULL,
    status             TEXT    NOT NULL,
    strategy           TEXT,
    creation_time      BIGINT  NOT NULL,
    last_modified_time BIGINT  NOT NULL,
    end_time           BIGINT,
    failure_reason     TEXT,
    request            TEXT    NOT NULL,
    version            BIGINT  NOT NULL
);
CREATE INDEX tuning_jobs_by_creation ON tuning_jobs (creation_time, name);
CREATE INDEX tuning_jobs_by_status ON tuning_jobs (status, name);

CREATE TABLE training_jobs (
    name               TEXT    PRIMARY KEY,
    arn                TEXT    NOT NULL,
    tuning_job_name    TEXT    REFERENCES tuning_jobs (name),
    status             TEXT    NOT NULL,
    secondary_status   TEXT    NOT NULL,
    objective_status   TEXT,
    objective_value    DOUBLE PRECISION,
    creation_time      BIGINT  NOT NULL,
    last_modified_time BIGINT  NOT NULL,
    training_start_time BIGINT,
    training_end_time  BIGINT,
    failure_reason     TEXT,
    request            TEXT    NOT NULL,
    details            TEXT    NOT NULL,
    version            BIGINT  NOT NULL
);
CREATE INDEX training_jobs_by_creation ON training_jobs (creation_time, name);
CREATE INDEX training_jobs_by_status ON training_jobs (status, name);
CREATE INDEX training_jobs_by_tuning_job ON training_jobs (tuning_job_name, name);
CREATE INDEX training_jobs_by_objective ON training_jobs (tuning_job_name, objective_value, name);
