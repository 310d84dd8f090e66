-- s3orch metadata schema, version 2: multipart uploads.
--
-- An upload writes every part into one storage key on one backend, so its
-- bytes are a pending 'upload' row keyed by that storage key, growing as parts
-- are reserved (see s3orch/store/multipart.py). multipart_id on a pending row
-- is the backend's multipart upload handle: such a row is not a stalled single
-- PUT, and deleting its bytes means aborting that backend upload.

ALTER TABLE pending ADD COLUMN multipart_id TEXT;

CREATE TABLE multipart_uploads (
    upload_id TEXT @BINARY@ PRIMARY KEY,
    bucket TEXT @BINARY@ NOT NULL,
    key TEXT @BINARY@ NOT NULL,
    backend TEXT NOT NULL REFERENCES backends (name),
    storage_key TEXT NOT NULL UNIQUE,
    backend_upload_id TEXT NOT NULL,
    content_type TEXT NOT NULL,
    metadata TEXT NOT NULL,
    headers TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

-- ListMultipartUploads order: key in byte order, then initiation.
CREATE INDEX multipart_uploads_listing ON multipart_uploads (bucket, key, created_at, upload_id);

CREATE INDEX multipart_uploads_created_at ON multipart_uploads (created_at);

CREATE INDEX multipart_uploads_backend ON multipart_uploads (backend);

CREATE TABLE multipart_parts (
    upload_id TEXT @BINARY@ NOT NULL REFERENCES multipart_uploads (upload_id) ON DELETE CASCADE,
    part_number INTEGER NOT NULL CHECK (part_number BETWEEN 1 AND 10000),
    etag TEXT NOT NULL,
    size BIGINT NOT NULL CHECK (size >= 0),
    backend_etag TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (upload_id, part_number)
);
