-- Records the saga runner cannot take as facts yet (an event type or version this release does
-- not know, or a gap in the aggregate's stream) and every later record of their aggregates,
-- written in the same transaction as the offsets that moved past them, and taken in sequence
-- order once they can be (docs/evolution.md, "Unknown is parked, not skipped").
CREATE TABLE parked_records (
    id             BIGSERIAL PRIMARY KEY,
    aggregate_type TEXT        NOT NULL,
    aggregate_id   UUID        NOT NULL,
    sequence       BIGINT      NOT NULL,
    event_type     TEXT        NOT NULL,
    event_version  INTEGER     NOT NULL,
    -- Why the first record of the aggregate cannot be taken (never a payload's values).
    reason         TEXT        NOT NULL,
    topic          TEXT        NOT NULL,
    partition      INTEGER     NOT NULL,
    log_offset     BIGINT      NOT NULL,
    payload        BYTEA       NOT NULL,
    traceparent    TEXT,
    parked_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX parked_records_by_aggregate ON parked_records (aggregate_id, sequence, id);
