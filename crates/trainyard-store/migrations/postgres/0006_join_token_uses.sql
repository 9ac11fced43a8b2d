-- Join tokens are single-use unless made for a batch: `uses_allowed` joins at most (NULL: no limit,
-- the tokens made before this migration), `uses` so far, and the one agent id a token may join as
-- (`agent_id`, NULL: any).
ALTER TABLE access_tokens ADD COLUMN uses_allowed BIGINT;
ALTER TABLE access_tokens ADD COLUMN uses BIGINT NOT NULL DEFAULT 0;
ALTER TABLE access_tokens ADD COLUMN agent_id TEXT;
