-- Jobs' JSON documents (a request, a job's details) are compressed with lz4 rather than pglz: they
-- are a few kilobytes each, so every create and every change of a trial compresses one, and pglz
-- took a sixth of the server's CPU under `scripts/bench --suites creates`. A server built without
-- lz4 keeps pglz (nothing else differs).
DO $$
BEGIN
    ALTER TABLE training_jobs ALTER COLUMN request SET COMPRESSION lz4, ALTER COLUMN details SET COMPRESSION lz4;
    ALTER TABLE tuning_jobs ALTER COLUMN request SET COMPRESSION lz4, ALTER COLUMN details SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported THEN
    RAISE NOTICE 'this PostgreSQL has no lz4: job documents stay compressed with pglz';
END
$$;
