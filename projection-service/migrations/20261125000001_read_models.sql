-- Read models of Funeral Manager. Every row can be thrown away and rebuilt from the log.
-- Each row remembers the last aggregate sequence applied to it (`version`), so that a
-- redelivered or losing event is recognised and ignored.

-- Where each projection has read up to, written in the same transaction as the read-model
-- change that the offsets cover.
CREATE TABLE projection_offsets (
    projection  TEXT    NOT NULL,
    topic       TEXT    NOT NULL,
    partition   INTEGER NOT NULL,
    next_offset BIGINT  NOT NULL CHECK (next_offset >= 0),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (projection, topic, partition)
);

CREATE TABLE facilities (
    facility_id        UUID PRIMARY KEY,
    name               TEXT        NOT NULL,
    kind               TEXT        NOT NULL,
    capacity           INTEGER     NOT NULL,
    time_zone          TEXT        NOT NULL,
    opening_hours      JSONB       NOT NULL,
    turnaround_minutes INTEGER     NOT NULL,
    version            BIGINT      NOT NULL,
    registered_at      TIMESTAMPTZ NOT NULL,
    updated_at         TIMESTAMPTZ NOT NULL
);

CREATE TABLE bookings (
    booking_id         UUID PRIMARY KEY,
    facility_id        UUID        NOT NULL,
    service_type       TEXT        NOT NULL,
    status             TEXT        NOT NULL,
    slot_start         TIMESTAMPTZ NOT NULL,
    slot_end           TIMESTAMPTZ NOT NULL,
    -- The slot as requested, with the caller's UTC offsets.
    slot               JSONB       NOT NULL,
    deceased           JSONB       NOT NULL,
    family_contacts    JSONB       NOT NULL,
    price_amount_minor BIGINT      NOT NULL,
    price_currency     TEXT        NOT NULL,
    -- Token subject of whoever requested it: a family sees only its own bookings.
    requested_by       TEXT        NOT NULL,
    requested_by_role  TEXT        NOT NULL,
    status_reason      TEXT,
    version            BIGINT      NOT NULL,
    requested_at       TIMESTAMPTZ NOT NULL,
    updated_at         TIMESTAMPTZ NOT NULL
);

CREATE INDEX bookings_by_facility_and_start ON bookings (facility_id, slot_start);
CREATE INDEX bookings_by_requester ON bookings (requested_by);
