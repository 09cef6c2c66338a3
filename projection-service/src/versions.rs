//! Versions of the read models, and the atomic switch between them.
//!
//! Each version lives in its own PostgreSQL schema, `rm_v<N>`, with the same tables; the schema
//! `live` holds one view per table onto the live version, and that is all the query-api reads.
//! `projection_versions` (public schema) names the state of each version:
//!
//! ```text
//! building ──(caught up, switch)──▶ live ──(next switch)──▶ retired ──(projector stopped)──▶ dropped
//! ```
//!
//! A rebuild is requested by inserting a `building` row (`fmctl projections rebuild`); the
//! projection-service's supervisor creates the schema, replays the log into it, and once its
//! offsets have reached both the end of the log and the live version's offsets, switches the
//! views in one transaction (see [`try_switch`]). The old version is dropped once its projector
//! has stopped. Queries never see a half-built version.

use std::collections::BTreeMap;

use sqlx::{Executor as _, PgConnection, PgPool, Postgres, Transaction};

use event_log::consumer::TopicPartition;

/// The tables of one read-model version. `{schema}` is replaced by `rm_v<N>`.
const VERSION_DDL: &str = r"
CREATE SCHEMA IF NOT EXISTS {schema};

-- Where this version has read up to: the next offset of each partition, written in the same
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
    -- The saga's progress: today the lifecycle history (status, event type, sequence, time).
    saga               JSONB       NOT NULL,
    version            BIGINT      NOT NULL,
    requested_at       TIMESTAMPTZ NOT NULL,
    updated_at         TIMESTAMPTZ NOT NULL
);
CREATE INDEX IF NOT EXISTS bookings_by_start ON {schema}.bookings (slot_start, booking_id);
CREATE INDEX IF NOT EXISTS bookings_by_facility_and_start ON {schema}.bookings (facility_id, slot_start);
CREATE INDEX IF NOT EXISTS bookings_by_requester ON {schema}.bookings (requested_by, slot_start);

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

/// The tables the `live` schema shows, one view each.
pub const TABLES: [&str; 6] = [
    "projection_offsets",
    "projection_anomalies",
    "facilities",
    "reservations",
    "bookings",
    "payments",
];

/// The state of a version, as stored in `projection_versions.state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionState {
    Building,
    Live,
    Retired,
    Dropped,
}

impl VersionState {
    fn parse(text: &str) -> Option<Self> {
        match text {
            "building" => Some(Self::Building),
            "live" => Some(Self::Live),
            "retired" => Some(Self::Retired),
            "dropped" => Some(Self::Dropped),
            _ => None,
        }
    }
}

/// The schema holding version `version`. Built from an integer, so it is always a safe identifier.
pub fn schema_name(version: i32) -> String {
    format!("rm_v{version}")
}

/// Creates the schema and tables of `version` if they do not exist (one transaction).
pub async fn ensure_schema(pool: &PgPool, version: i32) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    // Two replicas creating the same schema at once would collide on the catalog.
    sqlx::query("SELECT pg_advisory_xact_lock(4242, $1)")
        .bind(version)
        .execute(&mut *tx)
        .await?;
    let ddl = VERSION_DDL.replace("{schema}", &schema_name(version));
    (&mut *tx).execute(ddl.as_str()).await?;
    tx.commit().await
}

/// Points every view of the `live` schema at `version`'s tables, inside the caller's transaction.
async fn point_live_views(conn: &mut PgConnection, version: i32) -> Result<(), sqlx::Error> {
    let schema = schema_name(version);
    for table in TABLES {
        // `CREATE OR REPLACE` keeps the view's identity, so statements the query-api has
        // prepared against it stay valid and simply see the new version after the commit.
        let sql = format!("CREATE OR REPLACE VIEW live.{table} AS SELECT * FROM {schema}.{table}");
        sqlx::query(&sql).execute(&mut *conn).await?;
    }
    Ok(())
}

/// Makes sure a live version exists: on a fresh database, version 1 is created and made live at
/// once (there is nothing older to keep answering). Safe to run from several replicas.
pub async fn ensure_live_version(pool: &PgPool) -> Result<i32, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("LOCK TABLE projection_versions IN SHARE ROW EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await?;
    let live: Option<i32> =
        sqlx::query_scalar("SELECT version FROM projection_versions WHERE state = 'live'")
            .fetch_optional(&mut *tx)
            .await?;
    if let Some(version) = live {
        tx.commit().await?;
        return Ok(version);
    }
    let version: i32 =
        sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) + 1 FROM projection_versions")
            .fetch_one(&mut *tx)
            .await?;
    let ddl = VERSION_DDL.replace("{schema}", &schema_name(version));
    (&mut *tx).execute(ddl.as_str()).await?;
    sqlx::query(
        "INSERT INTO projection_versions (version, state, requested_by, switched_at) VALUES ($1, 'live', 'projection-service', now())",
    )
    .bind(version)
    .execute(&mut *tx)
    .await?;
    point_live_views(&mut tx, version).await?;
    tx.commit().await?;
    tracing::info!(version, "created the first read-model version");
    Ok(version)
}

/// Asks for a rebuild: a new `building` version, which the projection-service fills and switches
/// to. Returns the existing building version if one is already under way.
pub async fn request_rebuild(pool: &PgPool, requested_by: &str) -> Result<i32, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("LOCK TABLE projection_versions IN SHARE ROW EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await?;
    let building: Option<i32> =
        sqlx::query_scalar("SELECT version FROM projection_versions WHERE state = 'building'")
            .fetch_optional(&mut *tx)
            .await?;
    let version = match building {
        Some(version) => version,
        None => {
            sqlx::query_scalar(
                "INSERT INTO projection_versions (version, state, requested_by) \
                 SELECT COALESCE(MAX(version), 0) + 1, 'building', $1 FROM projection_versions RETURNING version",
            )
            .bind(requested_by)
            .fetch_one(&mut *tx)
            .await?
        }
    };
    tx.commit().await?;
    Ok(version)
}

/// Every version that is not dropped, with its state.
pub async fn active_versions(pool: &PgPool) -> Result<Vec<(i32, VersionState)>, sqlx::Error> {
    let rows: Vec<(i32, String)> = sqlx::query_as(
        "SELECT version, state FROM projection_versions WHERE state <> 'dropped' ORDER BY version",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(version, state)| VersionState::parse(&state).map(|state| (version, state)))
        .collect())
}

/// The stored offsets of `version` (next offset to read per partition).
pub async fn stored_offsets(
    conn: &mut PgConnection,
    version: i32,
) -> Result<BTreeMap<TopicPartition, i64>, sqlx::Error> {
    let sql = format!(
        "SELECT topic, partition, next_offset FROM {}.projection_offsets",
        schema_name(version)
    );
    let rows: Vec<(String, i32, i64)> = sqlx::query_as(&sql).fetch_all(&mut *conn).await?;
    Ok(rows
        .into_iter()
        .map(|(topic, partition, offset)| ((topic, partition), offset))
        .collect())
}

/// Why a building version did not switch yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SwitchOutcome {
    /// The version is live now.
    Switched { retired: Option<i32> },
    /// The live version has applied more of some partition; try again after the next batch.
    Behind,
    /// The version is no longer `building` (switched or abandoned by someone else).
    NotBuilding,
}

/// Switches `version` live if its offsets have reached the live version's on every partition.
///
/// One transaction: lock both version rows, block the live projector's commits by locking its
/// offsets table in SHARE mode, compare, then flip the states and repoint the views. A query
/// either runs before the commit (old version) or after it (new version, at least as far along
/// the log), never against a half-built one; and the consistency-token wait reads
/// `live.projection_offsets`, so it follows the switch too.
pub async fn try_switch(pool: &PgPool, version: i32) -> Result<SwitchOutcome, sqlx::Error> {
    let mut tx: Transaction<'_, Postgres> = pool.begin().await?;
    let rows: Vec<(i32, String)> = sqlx::query_as(
        "SELECT version, state FROM projection_versions WHERE state IN ('live', 'building') ORDER BY version FOR UPDATE",
    )
    .fetch_all(&mut *tx)
    .await?;
    if !rows
        .iter()
        .any(|(v, state)| *v == version && state == "building")
    {
        return Ok(SwitchOutcome::NotBuilding);
    }
    let live = rows
        .iter()
        .find(|(_, state)| state == "live")
        .map(|(v, _)| *v);
    if let Some(live) = live {
        let sql = format!(
            "LOCK TABLE {}.projection_offsets IN SHARE MODE",
            schema_name(live)
        );
        sqlx::query(&sql).execute(&mut *tx).await?;
        let theirs = stored_offsets(&mut tx, live).await?;
        let ours = stored_offsets(&mut tx, version).await?;
        let behind = theirs
            .iter()
            .any(|(tp, offset)| ours.get(tp).copied().unwrap_or(0) < *offset);
        if behind {
            return Ok(SwitchOutcome::Behind);
        }
        sqlx::query(
            "UPDATE projection_versions SET state = 'retired' WHERE version = $1 AND state = 'live'",
        )
        .bind(live)
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query(
        "UPDATE projection_versions SET state = 'live', switched_at = now() WHERE version = $1",
    )
    .bind(version)
    .execute(&mut *tx)
    .await?;
    point_live_views(&mut tx, version).await?;
    tx.commit().await?;
    Ok(SwitchOutcome::Switched { retired: live })
}

/// Drops a retired version's schema once its projector has stopped.
pub async fn drop_version(pool: &PgPool, version: i32) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    let sql = format!("DROP SCHEMA IF EXISTS {} CASCADE", schema_name(version));
    sqlx::query(&sql).execute(&mut *tx).await?;
    sqlx::query(
        "UPDATE projection_versions SET state = 'dropped', dropped_at = now() WHERE version = $1 AND state = 'retired'",
    )
    .bind(version)
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}
