-- Every stdout/stderr line of a training job (bounded per job by the coordinator), in arrival order,
-- and every metric sample its MetricDefinitions matched.
CREATE TABLE training_job_logs (
    training_job_name  TEXT    COLLATE "C" NOT NULL,
    seq                BIGINT  NOT NULL,
    instance           INTEGER NOT NULL,
    stream             TEXT    NOT NULL,
    timestamp          BIGINT  NOT NULL,
    text               TEXT    NOT NULL,
    PRIMARY KEY (training_job_name, seq)
);

CREATE TABLE metric_samples (
    training_job_name  TEXT    COLLATE "C" NOT NULL,
    metric_name        TEXT    NOT NULL,
    timestamp          BIGINT  NOT NULL,
    value              DOUBLE PRECISION NOT NULL
);
CREATE INDEX metric_samples_by_job ON metric_samples (training_job_name, metric_name, timestamp);
