-- s3orch metadata schema, version 3: envelope encryption.
--
-- An encrypted version carries its data key (DEK) wrapped by a master key, and
-- what a read needs besides the stored bytes (see s3orch/objects/sealing.py and
-- docs/encryption-format.md). enc_scheme is NULL for a plaintext version.
-- enc_key_id is the operator's name of the wrapping key when it wrapped the
-- DEK; enc_fingerprint says which key that is. Binary values are base64 text.

ALTER TABLE objects ADD COLUMN enc_scheme TEXT;

ALTER TABLE objects ADD COLUMN enc_key_id TEXT;

ALTER TABLE objects ADD COLUMN enc_fingerprint TEXT;

ALTER TABLE objects ADD COLUMN enc_wrapped TEXT;

ALTER TABLE objects ADD COLUMN enc_chunk_size INTEGER;

ALTER TABLE objects ADD COLUMN enc_header TEXT;

-- For a version assembled from sealed parts: JSON [[part_number, plain_size, stored_size], ...].
ALTER TABLE objects ADD COLUMN enc_segments TEXT;

-- Key rotation walks the DEKs of one key in version_id order.
CREATE INDEX objects_enc_fingerprint ON objects (enc_fingerprint, version_id);

-- A multipart upload's parts are sealed with one DEK, wrapped at Create.
ALTER TABLE multipart_uploads ADD COLUMN enc_key_id TEXT;

ALTER TABLE multipart_uploads ADD COLUMN enc_fingerprint TEXT;

ALTER TABLE multipart_uploads ADD COLUMN enc_wrapped TEXT;

ALTER TABLE multipart_uploads ADD COLUMN enc_chunk_size INTEGER;

-- Bytes the part occupies on the backend (its sealed size when encrypted).
ALTER TABLE multipart_parts ADD COLUMN stored_size BIGINT;
