-- An API token may carry a SigV4 access key for the SageMaker-compatible endpoint. SigV4 needs the
-- secret itself to check a signature, so it is kept sealed (AES-256-GCM) with a key that lives in
-- the coordinator's data directory, not in the database.
ALTER TABLE access_tokens ADD COLUMN access_key_id TEXT;
ALTER TABLE access_tokens ADD COLUMN access_key_sealed TEXT;
CREATE UNIQUE INDEX access_tokens_by_access_key ON access_tokens (access_key_id);
