-- s3orch metadata schema, version 5: s3orch's own keyring (s3orch/crypto/seal.py).
--
-- keyring_seal holds the one stored seal state (SealState.to_bytes(): JSON with the
-- sealed root key and the keyring encrypted under it; nothing in it is usable without
-- the unseal key shares or the auto-unseal key). Every change increments generation and
-- is written with compare-and-swap on it, so instances sharing the database never
-- overwrite each other's rotation or rekey.
--
-- keyring_encryptions counts the data keys each key term wrapped, summed over every
-- instance, for key-status and automatic rotation. The counts are not secret.

CREATE TABLE keyring_seal (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    generation BIGINT NOT NULL CHECK (generation >= 1),
    state TEXT NOT NULL,
    updated BIGINT NOT NULL
);

CREATE TABLE keyring_encryptions (
    term BIGINT PRIMARY KEY CHECK (term >= 1),
    encryptions BIGINT NOT NULL DEFAULT 0 CHECK (encryptions >= 0)
);
