-- One data key per booking (docs/privacy.md). `wrapped_key` is the key encrypted under the master
-- key `master_key_id` names; erasure sets both to NULL and keeps the row as the tombstone that
-- tells every reader (and a retried request) the booking's personal data is gone.
CREATE TABLE data_keys (
    booking_id    UUID        PRIMARY KEY,
    key_id        UUID        NOT NULL UNIQUE,
    wrapped_key   BYTEA,
    master_key_id TEXT,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    erased_at     TIMESTAMPTZ,
    CHECK ((wrapped_key IS NULL) = (erased_at IS NOT NULL)),
    CHECK ((wrapped_key IS NULL) = (master_key_id IS NULL))
);

CREATE INDEX data_keys_by_master ON data_keys (master_key_id) WHERE master_key_id IS NOT NULL;
