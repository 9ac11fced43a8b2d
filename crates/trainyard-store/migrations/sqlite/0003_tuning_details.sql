-- What a tuning job's end looked like (TuningJobCompletionDetails), as JSON.
ALTER TABLE tuning_jobs ADD COLUMN details TEXT;
