-- s3orch metadata schema, version 6 (PostgreSQL): no index on the wrapping key.
--
-- A key rotation walks the objects in version_id order (s3orch/store/deks.py). With the
-- index of version 3, (enc_fingerprint, version_id), re-wrapping a DEK changed an indexed
-- column, so every row got a new tuple and new entries in all its indexes: 30 us per DEK
-- against 19 us without it (100,000 rows). A rotation, and the s3o_encryption_deks gauge,
-- scan the table instead.

DROP INDEX objects_enc_fingerprint;
