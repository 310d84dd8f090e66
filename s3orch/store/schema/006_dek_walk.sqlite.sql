-- s3orch metadata schema, version 6 (SQLite): a key rotation walks the objects table in
-- rowid order (s3orch/store/deks.py), the order its rows sit in the file.
--
-- The index of version 3, (enc_fingerprint, version_id), put every re-wrapped DEK's two
-- index entries on two random pages: about 30 us and two dirty pages per DEK, measured on
-- 200,000 rows. Entries of (enc_fingerprint, enc_key_id) are ordered by rowid within a
-- key, so a walk in rowid order deletes and inserts them a page at a time (about 5 us per
-- DEK), and counting the DEKs of each key (the s3o_encryption_deks gauge) reads the index
-- alone.

DROP INDEX objects_enc_fingerprint;

CREATE INDEX objects_enc_keys ON objects (enc_fingerprint, enc_key_id);
