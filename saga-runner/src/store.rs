//! The saga's tables in PostgreSQL (schema `saga`, see `migrations/`).
//!
//! Every connection of the pool has `search_path = saga`, so the queries name bare tables and
//! sqlx's own migrations table lands in the saga's schema, apart from the read models'.

use std::{collections::BTreeMap, str::FromStr};

use batch_consumer::OffsetTable;
use chrono::{DateTime, Utc};
use event_log::resolution::Admission;
use platform::settings::DatabaseSettings;
use secrecy::ExposeSecret;
use serde::Serialize;
use sqlx::{
    FromRow, PgConnection, PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use uuid::Uuid;

use crate::saga::{Decision, Saga, Stage};

/// The saga's migrations.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The schema the saga owns.
pub const SCHEMA: &str = "saga";

/// The channel the consumer notifies when facts changed, so idle workers wake at once.
pub const WAKE_CHANNEL: &str = "saga_due";

/// Creates the schema if needed, runs the migrations, and opens the pool.
pub async fn connect_and_migrate(settings: &DatabaseSettings) -> anyhow::Result<PgPool> {
    let options = PgConnectOptions::from_str(settings.url.expose_secret())?;
    let pool = PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(settings.acquire_timeout);
    Ok(platform::database::connect_schema(&options, SCHEMA, pool, &MIGRATOR).await?)
}

/// Where the consumer keeps its offsets.
pub const OFFSETS: OffsetTable = OffsetTable::new("offsets");

/// Applies the admission rule to an event of `aggregate_id` and, when it is the next one,
/// records its sequence. The row is locked until the transaction ends.
pub async fn admit(
    conn: &mut PgConnection,
    aggregate_id: Uuid,
    sequence: u64,
) -> sqlx::Result<Admission> {
    let last: Option<i64> =
        sqlx::query_scalar("SELECT last_sequence FROM streams WHERE aggregate_id = $1 FOR UPDATE")
            .bind(aggregate_id)
            .fetch_optional(&mut *conn)
            .await?;
    let admission = event_log::resolution::admit(
        last.and_then(|l| u64::try_from(l).ok()).unwrap_or(0),
        sequence,
    );
    if admission == Admission::Next {
        sqlx::query(
            "INSERT INTO streams (aggregate_id, last_sequence) VALUES ($1, $2) \
             ON CONFLICT (aggregate_id) DO UPDATE SET last_sequence = EXCLUDED.last_sequence",
        )
        .bind(aggregate_id)
        .bind(i64::try_from(sequence).unwrap_or(i64::MAX))
        .execute(conn)
        .await?;
    }
    Ok(admission)
}

/// Remembers a facility's name for the letters.
pub async fn remember_facility(
    conn: &mut PgConnection,
    facility_id: Uuid,
    name: &str,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO facilities (facility_id, name) VALUES ($1, $2) \
         ON CONFLICT (facility_id) DO UPDATE SET name = EXCLUDED.name",
    )
    .bind(facility_id)
    .bind(name)
    .execute(conn)
    .await?;
    Ok(())
}

/// A facility's name, if the saga has read its registration.
pub async fn facility_name(pool: &PgPool, facility_id: Uuid) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar("SELECT name FROM facilities WHERE facility_id = $1")
        .bind(facility_id)
        .fetch_optional(pool)
        .await
}

/// The booking a payment belongs to.
pub async fn booking_of_payment(
    conn: &mut PgConnection,
    payment_id: Uuid,
) -> sqlx::Result<Option<Uuid>> {
    sqlx::query_scalar("SELECT booking_id FROM sagas WHERE payment_id = $1")
        .bind(payment_id)
        .fetch_optional(conn)
        .await
}

/// A saga's facts, locked for the rest of the transaction.
pub async fn facts_for_update(
    conn: &mut PgConnection,
    booking_id: Uuid,
) -> anyhow::Result<Option<(Saga, i64)>> {
    let row: Option<(sqlx::types::Json<Saga>, i64)> =
        sqlx::query_as("SELECT facts, facts_version FROM sagas WHERE booking_id = $1 FOR UPDATE")
            .bind(booking_id)
            .fetch_optional(conn)
            .await?;
    Ok(row.map(|(facts, version)| (facts.0, version)))
}

/// Stores facts the log changed, and makes the saga due now.
pub async fn save_facts(conn: &mut PgConnection, saga: &Saga) -> anyhow::Result<()> {
    let booking_id = *saga.booking_id.as_uuid();
    let payment_id = *domain::values::PaymentId::for_booking(saga.booking_id).as_uuid();
    sqlx::query(
        "INSERT INTO sagas (booking_id, payment_id, facts) VALUES ($1, $2, $3) \
         ON CONFLICT (booking_id) DO UPDATE SET facts = EXCLUDED.facts, \
             facts_version = sagas.facts_version + 1, done = false, \
             next_attempt_at = now(), updated_at = now()",
    )
    .bind(booking_id)
    .bind(payment_id)
    .bind(sqlx::types::Json(saga))
    .execute(conn)
    .await?;
    Ok(())
}

/// Marks, and commits at once (outside the caller's transaction), that the saga is about to
/// send a capture request, and when (`capture.attempting`, `capture.last_sent_at`, see
/// `saga::CaptureKnowledge`). Changes nothing
/// else: the consumer's changes to the facts are kept, and the worker's pass clears the mark
/// when it records the outcome.
pub async fn mark_capture_attempt(
    pool: &PgPool,
    booking_id: Uuid,
    at: DateTime<Utc>,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE sagas SET facts = jsonb_set(\
             jsonb_set(facts, '{capture,attempting}', 'true'::jsonb, true), \
             '{capture,last_sent_at}', $2, true) \
         WHERE booking_id = $1",
    )
    .bind(booking_id)
    .bind(sqlx::types::Json(at))
    .execute(pool)
    .await?;
    Ok(())
}

/// Forgets a saga's failed attempts (an operator's retry): the backoff starts again.
pub async fn forget_attempts(conn: &mut PgConnection, booking_id: Uuid) -> sqlx::Result<()> {
    sqlx::query("UPDATE sagas SET attempts = 0 WHERE booking_id = $1")
        .bind(booking_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Makes a finished saga doubt its capture again (the reconciliation found money under its key
/// that the log never recorded): it looks the capture up, records it and refunds it.
pub async fn doubt_capture_again(conn: &mut PgConnection, booking_id: Uuid) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE sagas SET facts = jsonb_set(facts, '{capture,uncertain}', 'true'::jsonb, true), \
             done = false, next_attempt_at = now(), updated_at = now() \
         WHERE booking_id = $1 AND done",
    )
    .bind(booking_id)
    .execute(&mut *conn)
    .await?;
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(WAKE_CHANNEL)
        .execute(conn)
        .await?;
    Ok(())
}

/// Claims one due saga for a pass, in the pass's own transaction: the soonest due saga whose
/// lock no other pass holds, locked for the rest of `conn`'s transaction (the booking's
/// transaction-scoped advisory lock, the one every pass has always held). Sagas another pass
/// holds — of this runner or of another replica — are skipped, not waited for and not returned,
/// so runners sharing a database take disjoint sagas instead of racing for the same ones; a
/// crashed or cut-off runner's locks die with its connections, so its sagas are claimable again
/// at once. `skip` are the sagas this runner has in hand.
///
/// Not `FOR UPDATE SKIP LOCKED` on the row: a pass holds its claim while its step runs (a
/// gateway call, a mail), and a row lock would make the consumer's batch that changes the same
/// saga's facts wait for the step (docs/saga.md, "Sharing the work between runners").
///
/// A claimed pass's transaction ends itself when it stays idle for [`PASS_IDLE_LIMIT`]
/// (`idle_in_transaction_session_timeout`, for this transaction only): a runner cut off from
/// PostgreSQL without its connection closing (a network partition) would otherwise hold its
/// claims until the server's TCP keepalive gave up on it, hours by default.
///
/// The statement's snapshot is taken before the lock: a saga another pass finished just then
/// can be claimed although it is no longer due, so the caller reads the row again under the
/// lock (`scheduled`) before acting.
pub async fn claim(
    conn: &mut PgConnection,
    skip: &[Uuid],
    look_ahead: i64,
) -> sqlx::Result<Option<Uuid>> {
    // The inner LIMIT keeps the lock function out of the scan (a subquery with a LIMIT is
    // neither flattened nor given outer conditions), so it is tried on the candidates in due
    // order and stops at the first it gets; a lock function in a plain WHERE would be tried,
    // and taken, on every due row before the sort.
    let claimed = sqlx::query_scalar(
        "SELECT booking_id FROM ( \
             SELECT booking_id FROM sagas \
             WHERE NOT done AND next_attempt_at <= now() AND booking_id <> ALL($1) \
             ORDER BY next_attempt_at LIMIT $2 \
         ) AS due \
         WHERE pg_try_advisory_xact_lock(84, hashtext(booking_id::text)) \
         LIMIT 1",
    )
    .bind(skip)
    .bind(look_ahead)
    .fetch_optional(&mut *conn)
    .await?;
    if claimed.is_some() {
        sqlx::query("SELECT set_config('idle_in_transaction_session_timeout', $1, true)")
            .bind(PASS_IDLE_LIMIT)
            .execute(conn)
            .await?;
    }
    Ok(claimed)
}

/// How long a pass's transaction may stay idle before PostgreSQL ends it and its claim: far
/// beyond the longest step (a command times out after 15 s, a gateway request after 5 s), so
/// only a pass whose runner is gone or cut off reaches it; ending a live pass would only lose
/// the record of its step, which is performed again.
pub const PASS_IDLE_LIMIT: &str = "5min";

/// The row as the worker needs it.
#[derive(Debug, FromRow)]
pub struct ScheduledSaga {
    pub facts: sqlx::types::Json<Saga>,
    pub facts_version: i64,
    pub step: Option<String>,
    pub attempts: i32,
    pub done: bool,
    pub next_attempt_at: DateTime<Utc>,
}

/// Reads a saga without locking its row (the consumer may change its facts meanwhile).
pub async fn scheduled(
    conn: &mut PgConnection,
    booking_id: Uuid,
) -> sqlx::Result<Option<ScheduledSaga>> {
    sqlx::query_as(
        "SELECT facts, facts_version, step, attempts, done, next_attempt_at FROM sagas WHERE booking_id = $1",
    )
    .bind(booking_id)
    .fetch_optional(conn)
    .await
}

/// One entry of a saga's history: one pass that performed a step, by which runner, from when
/// (`began`, after it took the booking's lock) to when (`at`, before it released it). Two
/// passes on one booking never overlap (checked by `tests/two_runners.rs`).
#[derive(Debug, Serialize)]
pub struct HistoryEntry<'a> {
    pub step: &'a str,
    pub outcome: &'a str,
    pub at: DateTime<Utc>,
    pub began: DateTime<Utc>,
    pub runner: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'a str>,
}

/// What the worker writes after deciding (and perhaps acting).
#[derive(Debug)]
pub struct Schedule<'a> {
    pub saga: &'a Saga,
    pub decision: &'a Decision,
    pub attempts: i32,
    pub next_attempt_at: DateTime<Utc>,
    pub last_error: Option<&'a str>,
    pub compensated: bool,
    pub performed: Option<HistoryEntry<'a>>,
}

/// Stores the worker's decision, schedule and what it learned.
pub async fn save_schedule(conn: &mut PgConnection, schedule: &Schedule<'_>) -> anyhow::Result<()> {
    let step = match schedule.decision {
        Decision::Do(step) => Some(step.name()),
        Decision::Parked => schedule
            .saga
            .control
            .parked
            .as_ref()
            .map(|parked| parked.step.as_str()),
        Decision::Wait | Decision::Done => None,
    };
    let history = schedule
        .performed
        .as_ref()
        .map_or_else(|| serde_json::json!([]), |entry| serde_json::json!([entry]));
    sqlx::query(
        "UPDATE sagas SET facts = $2, stage = $3, step = $4, done = $5, attempts = $6, \
             next_attempt_at = $7, deadline = $8, last_error = $9, \
             compensated = compensated OR $10, history = history || $11, updated_at = now() \
         WHERE booking_id = $1",
    )
    .bind(schedule.saga.booking_id.as_uuid())
    .bind(sqlx::types::Json(schedule.saga))
    .bind(Stage::of(schedule.decision).as_str())
    .bind(step)
    .bind(matches!(schedule.decision, Decision::Done))
    .bind(schedule.attempts)
    .bind(schedule.next_attempt_at)
    .bind(schedule.saga.deadline_of(schedule.decision))
    .bind(schedule.last_error)
    .bind(schedule.compensated)
    .bind(history)
    .execute(conn)
    .await?;
    Ok(())
}

/// How many sagas are in flight per stage, and how many are past their step's deadline.
#[derive(Debug, Default)]
pub struct Counts {
    pub by_stage: BTreeMap<String, i64>,
    pub stuck: i64,
}

pub async fn counts(pool: &PgPool) -> sqlx::Result<Counts> {
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT stage, count(*), count(*) FILTER (WHERE deadline < now()) \
         FROM sagas WHERE NOT done GROUP BY stage",
    )
    .fetch_all(pool)
    .await?;
    let mut counts = Counts::default();
    for (stage, count, stuck) in rows {
        counts.by_stage.insert(stage, count);
        counts.stuck += stuck;
    }
    Ok(counts)
}

/// Which sagas the ops view lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Filter {
    /// Not done yet.
    InFlight,
    /// Not done and past the deadline of the step they are on.
    Stuck,
    /// Parked: waiting for an operator (a step failed for good, or an operator parked it).
    Parked,
    /// Performed at least one compensation (reject, release, fail, refund).
    Compensated,
    /// Done.
    Done,
    /// Every saga.
    All,
}

/// A saga as the ops view shows it.
#[derive(Debug, Serialize, FromRow, utoipa::ToSchema)]
pub struct SagaView {
    pub booking_id: Uuid,
    pub stage: String,
    /// The next step, when there is one.
    pub step: Option<String>,
    pub done: bool,
    pub stuck: bool,
    pub attempts: i32,
    pub next_attempt_at: DateTime<Utc>,
    pub deadline: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub compensated: bool,
    /// The steps performed, oldest first.
    #[schema(value_type = Vec<Object>)]
    pub history: sqlx::types::Json<serde_json::Value>,
    /// What the saga knows (see saga-runner/src/saga.rs); only in the single-saga view.
    #[sqlx(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub facts: Option<sqlx::types::Json<serde_json::Value>>,
    pub updated_at: DateTime<Utc>,
}

const VIEW_COLUMNS: &str = "booking_id, stage, step, done, COALESCE(NOT done AND deadline < now(), false) AS stuck, \
     attempts, next_attempt_at, deadline, last_error, compensated, history, updated_at";

/// Sagas matching `filter`, most recently changed first.
pub async fn list(pool: &PgPool, filter: Filter, limit: i64) -> sqlx::Result<Vec<SagaView>> {
    let condition = match filter {
        Filter::InFlight => "NOT done",
        Filter::Stuck => "NOT done AND deadline < now()",
        Filter::Parked => "stage = 'parked'",
        Filter::Compensated => "compensated",
        Filter::Done => "done",
        Filter::All => "true",
    };
    sqlx::query_as(&format!(
        "SELECT {VIEW_COLUMNS} FROM sagas WHERE {condition} ORDER BY updated_at DESC LIMIT $1"
    ))
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// One saga with its facts.
pub async fn one(pool: &PgPool, booking_id: Uuid) -> sqlx::Result<Option<SagaView>> {
    sqlx::query_as(&format!(
        "SELECT {VIEW_COLUMNS}, facts FROM sagas WHERE booking_id = $1"
    ))
    .bind(booking_id)
    .fetch_optional(pool)
    .await
}
