//! The read-model version this code builds, declared with the DDL of its tables.
//!
//! A read-model version is a shape: tables, columns, indexes and the fold that fills them. The
//! number and the DDL live together here, so that a change of shape cannot ship without a new
//! number: a projection-service of a newer release then builds its version from the log beside
//! the one the older release keeps current, and each release's query-api reads its own version
//! (`query-api/src/read_model.rs` declares which; docs/read-side.md).
//!
//! | Version | Shape |
//! |---|---|
//! | 1 | the releases before versions were declared (the legacy layout, `rm_v<N>` and `live`) |
//! | 2 | adds `bookings.status_changed_by` and the index `bookings_by_status` |
//! | 3 | adds `facilities.home` (the funeral home; `NULL` for a facility registered before homes were named, read as `FM_TENANCY__DEFAULT_HOME`) and the index `facilities_by_home`, which every director's query filters through (docs/identity.md, "Tenancy") |
//! | 4 | adds `bookings.statement`: the itemised statement the booking was priced with (docs/pricing.md; a booking upcast from before price lists has a one-line statement of its agreed price) |
//! | 5 | only with the test-only feature `next-read-model`: adds `facilities.name_key` and the index `facilities_by_name_key`, so that a test can run two builds side by side through a shape change |

/// A read-model version: its number, the statements that create its tables in a build's schema,
/// and the tables its views show.
#[derive(Debug, Clone, Copy)]
pub struct ReadModel {
    /// A new shape is a new number; a fold fixed without a shape change may bump it too.
    pub version: i32,
    /// Run in order in one transaction; `{schema}` stands for the build's schema. Idempotent.
    pub(crate) ddl: &'static [&'static str],
    /// The tables a build holds, each shown as a view in `read_v<V>` and `live`.
    pub tables: &'static [&'static str],
}

impl ReadModel {
    /// The DDL creating this version's tables in `schema`.
    pub(crate) fn ddl_for(&self, schema: &str) -> String {
        self.ddl
            .iter()
            .map(|statements| statements.replace("{schema}", schema))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The version this build of the projection-service builds and keeps current.
#[cfg(not(feature = "next-read-model"))]
pub const READ_MODEL: ReadModel = ReadModel {
    version: 4,
    ddl: &[VERSION_2, VERSION_3_ADDS, VERSION_4_ADDS],
    tables: &TABLES,
};

/// Test-only (`next-read-model`): version 5, version 4 with a column and an index more.
#[cfg(feature = "next-read-model")]
pub const READ_MODEL: ReadModel = ReadModel {
    version: 5,
    ddl: &[VERSION_2, VERSION_3_ADDS, VERSION_4_ADDS, VERSION_5_ADDS],
    tables: &TABLES,
};

/// The tables of versions 2 to 5.
const TABLES: [&str; 6] = [
    "projection_offsets",
    "projection_anomalies",
    "facilities",
    "reservations",
    "bookings",
    "payments",
];

/// The tables of version 2.
const VERSION_2: &str = r"
-- Where this build has read up to: the next offset of each partition, written in the same
-- transaction as the read-model changes that the offsets cover.
CREATE TABLE IF NOT EXISTS {schema}.projection_offsets (
    topic       TEXT        NOT NULL,
    partition   INTEGER     NOT NULL,
    next_offset BIGINT      NOT NULL CHECK (next_offset >= 0),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, partition)
);

-- Gaps in aggregate streams: events that were not applied because one before them is missing.
CREATE TABLE IF NOT EXISTS {schema}.projection_anomalies (
    id             BIGSERIAL PRIMARY KEY,
    kind           TEXT        NOT NULL,
    aggregate_type TEXT        NOT NULL,
    aggregate_id   UUID        NOT NULL,
    sequence       BIGINT      NOT NULL,
    expected       BIGINT      NOT NULL,
    event_id       UUID        NOT NULL,
    topic          TEXT        NOT NULL,
    partition      INTEGER     NOT NULL,
    log_offset     BIGINT      NOT NULL,
    detected_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Records this build cannot apply yet and the later records of their aggregates, in the order
-- they arrived, written in the same transaction as the offsets that moved past them
-- (docs/evolution.md, on parking). Bookkeeping, like the two tables
-- above: no query-api reads it, and every build of version 2 gets it when its projector starts.
CREATE TABLE IF NOT EXISTS {schema}.parked_records (
    id             BIGSERIAL PRIMARY KEY,
    aggregate_type TEXT        NOT NULL,
    aggregate_id   UUID        NOT NULL,
    sequence       BIGINT      NOT NULL,
    event_type     TEXT        NOT NULL,
    event_version  INTEGER     NOT NULL,
    -- Why the first record of the aggregate cannot be applied (never a payload's values).
    reason         TEXT        NOT NULL,
    topic          TEXT        NOT NULL,
    partition      INTEGER     NOT NULL,
    log_offset     BIGINT      NOT NULL,
    payload        BYTEA       NOT NULL,
    parked_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS parked_records_by_aggregate ON {schema}.parked_records (aggregate_type, aggregate_id, sequence, id);

CREATE TABLE IF NOT EXISTS {schema}.facilities (
    facility_id        UUID PRIMARY KEY,
    name               TEXT        NOT NULL,
    kind               TEXT        NOT NULL,
    capacity           INTEGER     NOT NULL,
    time_zone          TEXT        NOT NULL,
    opening_hours      JSONB       NOT NULL,
    turnaround_minutes INTEGER     NOT NULL,
    -- Last sequence of the facility's stream applied (reservations included).
    version            BIGINT      NOT NULL,
    registered_at      TIMESTAMPTZ NOT NULL,
    updated_at         TIMESTAMPTZ NOT NULL
);
CREATE INDEX IF NOT EXISTS facilities_by_registration ON {schema}.facilities (registered_at, facility_id);

-- The facility calendar: the slots held now. Guarded by the facility row's version.
CREATE TABLE IF NOT EXISTS {schema}.reservations (
    facility_id UUID        NOT NULL,
    booking_id  UUID        NOT NULL,
    slot_start  TIMESTAMPTZ NOT NULL,
    slot_end    TIMESTAMPTZ NOT NULL,
    reserved_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (facility_id, booking_id)
);
CREATE INDEX IF NOT EXISTS reservations_by_start ON {schema}.reservations (facility_id, slot_start);

CREATE TABLE IF NOT EXISTS {schema}.bookings (
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
    -- The role of whoever moved the booking to its status: family, director, ops or system (version 2).
    status_changed_by  TEXT        NOT NULL,
    -- The saga's progress: today the lifecycle history (status, event type, sequence, time).
    saga               JSONB       NOT NULL,
    version            BIGINT      NOT NULL,
    requested_at       TIMESTAMPTZ NOT NULL,
    updated_at         TIMESTAMPTZ NOT NULL
);
CREATE INDEX IF NOT EXISTS bookings_by_start ON {schema}.bookings (slot_start, booking_id);
CREATE INDEX IF NOT EXISTS bookings_by_facility_and_start ON {schema}.bookings (facility_id, slot_start);
CREATE INDEX IF NOT EXISTS bookings_by_requester ON {schema}.bookings (requested_by, slot_start);
-- `GET /bookings?status=` pages by service start within one status (version 2).
CREATE INDEX IF NOT EXISTS bookings_by_status ON {schema}.bookings (status, slot_start, booking_id);

CREATE TABLE IF NOT EXISTS {schema}.payments (
    payment_id             UUID PRIMARY KEY,
    booking_id             UUID        NOT NULL,
    status                 TEXT        NOT NULL,
    amount_minor           BIGINT      NOT NULL,
    currency               TEXT        NOT NULL,
    capture_reference      TEXT,
    decline_reason         TEXT,
    refund_reference       TEXT,
    refunded_amount_minor  BIGINT,
    version                BIGINT      NOT NULL,
    updated_at             TIMESTAMPTZ NOT NULL
);
CREATE INDEX IF NOT EXISTS payments_by_booking ON {schema}.payments (booking_id);
";

/// What version 3 adds to version 2: the facility's home, and an index leading on it (a
/// director's lists go through it: `WHERE home = ANY($homes)`; bookings reach their home through
/// their facility's row, so a booking whose facility is not projected yet is nobody's).
const VERSION_3_ADDS: &str = r"
ALTER TABLE {schema}.facilities ADD COLUMN IF NOT EXISTS home UUID;
CREATE INDEX IF NOT EXISTS facilities_by_home ON {schema}.facilities (home, registered_at, facility_id);
";

/// What version 4 adds to version 3: the booking's itemised statement, as the event carries it
/// (`GET /bookings/{id}` shows it; docs/pricing.md).
const VERSION_4_ADDS: &str = r"
ALTER TABLE {schema}.bookings ADD COLUMN IF NOT EXISTS statement JSONB;
";

/// What version 5 adds to version 4 (test-only): a column computed from the facility's name
/// and an index on it, the kind of change a search route of a later release would need.
#[cfg(feature = "next-read-model")]
const VERSION_5_ADDS: &str = r"
ALTER TABLE {schema}.facilities
    ADD COLUMN IF NOT EXISTS name_key TEXT GENERATED ALWAYS AS (lower(name)) STORED;
CREATE INDEX IF NOT EXISTS facilities_by_name_key ON {schema}.facilities (name_key, facility_id);
";
