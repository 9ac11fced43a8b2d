-- Who owns each job: the user of the API token that created it ('' when the coordinator runs
-- without authentication). Trials carry their tuning job's owner. Never updated.
ALTER TABLE tuning_jobs ADD COLUMN owner TEXT NOT NULL DEFAULT '';
ALTER TABLE training_jobs ADD COLUMN owner TEXT NOT NULL DEFAULT '';
CREATE INDEX tuning_jobs_by_owner ON tuning_jobs (owner, creation_time, name);
CREATE INDEX training_jobs_by_owner ON training_jobs (owner, creation_time, name);

-- API tokens (kind 'api': a user and a scope) and agent join tokens (kind 'join'). Only the SHA-256
-- of a token's secret is kept; the id is public.
CREATE TABLE access_tokens (
    id                 TEXT PRIMARY KEY,
    kind               TEXT    NOT NULL,
    secret_sha256      TEXT    NOT NULL,
    user_name          TEXT    NOT NULL,
    scope              TEXT    NOT NULL,
    description        TEXT    NOT NULL,
    created_at         BIGINT  NOT NULL,
    expires_at         BIGINT,
    revoked_at         BIGINT
);

-- The certificate each agent received when it joined; the agent authenticates with it (mutual
-- TLS). Joining again replaces it; a revoked agent is refused until it joins again.
CREATE TABLE agent_identities (
    agent_id           TEXT PRIMARY KEY,
    certificate_sha256 TEXT    NOT NULL UNIQUE,
    join_token_id      TEXT    NOT NULL,
    joined_at          BIGINT  NOT NULL,
    revoked_at         BIGINT
);
