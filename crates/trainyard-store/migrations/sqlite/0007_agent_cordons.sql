-- Agents an operator took out of placement: `cordon` (no new instances) or `drain` (the same; it
-- is reported drained once its instances have ended; at `stop_at`, if given, what still runs there
-- is stopped and retried elsewhere under its RetryStrategy). Kept across coordinator restarts;
-- removed by uncordon.
CREATE TABLE agent_cordons (
    agent_id   TEXT PRIMARY KEY,
    mode       TEXT    NOT NULL,
    by_user    TEXT    NOT NULL,
    at         BIGINT  NOT NULL,
    stop_at    BIGINT
);
