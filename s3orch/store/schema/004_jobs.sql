-- s3orch metadata schema, version 4: persistent background jobs.
--
-- One row per job (key rotation, encrypt-existing, ...; see s3orch/store/jobs.py
-- and s3orch/jobs/runner.py). cursor is the job kind's opaque keyset position,
-- written after every batch, so a job resumes where it stopped. params and
-- last_errors are JSON text. total is NULL until the job has been counted.
-- A running job belongs to the process named by owner until lease_until; a
-- job whose lease has run out may be claimed by another process.

CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    params TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('running', 'complete', 'failed', 'cancelled')),
    lock_key TEXT,
    processed BIGINT NOT NULL DEFAULT 0 CHECK (processed >= 0),
    failed BIGINT NOT NULL DEFAULT 0 CHECK (failed >= 0),
    total BIGINT CHECK (total >= 0),
    cursor TEXT,
    last_errors TEXT NOT NULL DEFAULT '[]',
    cancel_requested INTEGER NOT NULL DEFAULT 0 CHECK (cancel_requested IN (0, 1)),
    owner TEXT,
    lease_until BIGINT NOT NULL DEFAULT 0,
    started BIGINT NOT NULL,
    finished BIGINT,
    updated BIGINT NOT NULL
);

-- At most one running job per lock_key, whichever process starts it.
CREATE UNIQUE INDEX jobs_running_lock_key ON jobs (lock_key) WHERE status = 'running';

CREATE INDEX jobs_started ON jobs (started, id);

CREATE INDEX jobs_status_started ON jobs (status, started, id);
