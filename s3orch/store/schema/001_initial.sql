-- s3orch metadata schema, version 1.
--
-- Times are BIGINT microseconds since the epoch, taken from the injected clock.
-- @BINARY@ makes a text column sort and compare in UTF-8 byte order (= code
-- point order), which is the order S3 lists keys in.
-- Counters on backends are changed in the same transaction as the rows they
-- count (see s3orch/store/objects.py); the CHECKs catch any drift below zero.

CREATE TABLE backends (
    name TEXT PRIMARY KEY,
    bytes_limit BIGINT NOT NULL DEFAULT 0 CHECK (bytes_limit >= 0),
    bytes_used BIGINT NOT NULL DEFAULT 0 CHECK (bytes_used >= 0),
    bytes_pending BIGINT NOT NULL DEFAULT 0 CHECK (bytes_pending >= 0),
    object_count BIGINT NOT NULL DEFAULT 0 CHECK (object_count >= 0),
    updated_at BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE objects (
    bucket TEXT @BINARY@ NOT NULL,
    key TEXT @BINARY@ NOT NULL,
    version_id TEXT NOT NULL UNIQUE,
    size BIGINT NOT NULL CHECK (size >= 0),
    etag TEXT NOT NULL,
    content_type TEXT NOT NULL,
    metadata TEXT NOT NULL,
    headers TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (bucket, key)
);

-- One row per committed copy of a version on a backend.
CREATE TABLE copies (
    version_id TEXT NOT NULL REFERENCES objects (version_id),
    backend TEXT NOT NULL REFERENCES backends (name),
    storage_key TEXT NOT NULL UNIQUE,
    stored_size BIGINT NOT NULL CHECK (stored_size >= 0),
    PRIMARY KEY (version_id, backend)
);

CREATE INDEX copies_backend ON copies (backend);

-- Bytes that may exist on a backend without a committed copy: uploads in
-- flight ('upload') and copies to be deleted ('delete').
CREATE TABLE pending (
    storage_key TEXT PRIMARY KEY,
    backend TEXT NOT NULL REFERENCES backends (name),
    size BIGINT NOT NULL CHECK (size >= 0),
    state TEXT NOT NULL CHECK (state IN ('upload', 'delete')),
    created_at BIGINT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt BIGINT NOT NULL,
    last_error TEXT
);

CREATE INDEX pending_state_next_attempt ON pending (state, next_attempt);

CREATE INDEX pending_state_created_at ON pending (state, created_at);

CREATE INDEX pending_backend ON pending (backend);
