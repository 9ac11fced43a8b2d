-- Agents an operator took out of placement: `cordon` (no new instances) or `drain` (the same; it
-- is reported drained once its instances have ended). Kept across coordinator restarts; removed by
-- uncordon.
CREATE TABLE agent_cordons (
    agent_id   TEXT PRIMARY KEY,
    mode       TEXT    NOT NULL,
    by_user    TEXT    NOT NULL,
    at         BIGINT  NOT NULL
);
