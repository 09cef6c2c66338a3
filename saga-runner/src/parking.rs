//! The saga's parked records (`parked_records`): records the consumer cannot take as facts yet
//! (an event type or version this release does not know, or a gap in the aggregate's stream)
//! and every later record of their aggregates, kept in the batch's transaction until they can
//! be taken in order (docs/evolution.md, "Unknown is parked, not skipped"). The consumer
//! (`crate::consumer`) decides; this module only stores.

use batch_consumer::parking::ParkedAggregate;
use event_log::LogPosition;
use schemas::EventEnvelope;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// A record to park: its envelope, its bytes as the log holds them, and where it came from.
pub(crate) struct Parked<'a> {
    pub(crate) envelope: &'a EventEnvelope,
    pub(crate) payload: &'a [u8],
    pub(crate) traceparent: Option<&'a str>,
    pub(crate) position: &'a LogPosition,
}

/// Whether records of the aggregate are parked.
pub(crate) async fn is_parked(conn: &mut PgConnection, aggregate_id: Uuid) -> sqlx::Result<bool> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM parked_records WHERE aggregate_id = $1)")
        .bind(aggregate_id)
        .fetch_one(conn)
        .await
}

pub(crate) async fn park(
    conn: &mut PgConnection,
    record: &Parked<'_>,
    reason: &str,
) -> sqlx::Result<()> {
    let envelope = record.envelope;
    sqlx::query(
        "INSERT INTO parked_records (aggregate_type, aggregate_id, sequence, event_type, \
         event_version, reason, topic, partition, log_offset, payload, traceparent) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(envelope.aggregate_type.as_str())
    .bind(envelope.aggregate_id)
    .bind(i64::try_from(envelope.sequence).unwrap_or(i64::MAX))
    .bind(envelope.event_type.as_str())
    .bind(i32::from(envelope.event_version))
    .bind(reason)
    .bind(&record.position.topic)
    .bind(record.position.partition)
    .bind(record.position.offset)
    .bind(record.payload)
    .bind(record.traceparent)
    .execute(conn)
    .await?;
    Ok(())
}

/// The parked records of an aggregate, in the order they are taken: by sequence, then arrival.
pub(crate) async fn records(
    conn: &mut PgConnection,
    aggregate_id: Uuid,
) -> sqlx::Result<Vec<(i64, Vec<u8>, Option<String>)>> {
    sqlx::query_as(
        "SELECT id, payload, traceparent FROM parked_records WHERE aggregate_id = $1 \
         ORDER BY sequence, id",
    )
    .bind(aggregate_id)
    .fetch_all(conn)
    .await
}

/// The aggregates with parked records.
pub(crate) async fn aggregates(conn: &mut PgConnection) -> sqlx::Result<Vec<Uuid>> {
    sqlx::query_scalar("SELECT DISTINCT aggregate_id FROM parked_records ORDER BY 1")
        .fetch_all(conn)
        .await
}

pub(crate) async fn unpark(conn: &mut PgConnection, id: i64) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM parked_records WHERE id = $1")
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}

pub(crate) async fn set_reason(conn: &mut PgConnection, id: i64, reason: &str) -> sqlx::Result<()> {
    sqlx::query("UPDATE parked_records SET reason = $2 WHERE id = $1")
        .bind(id)
        .bind(reason)
        .execute(conn)
        .await?;
    Ok(())
}

/// How many aggregates are parked (`saga_parked_aggregates`).
pub(crate) async fn count(conn: &mut PgConnection) -> sqlx::Result<i64> {
    batch_consumer::parking::parked_count(conn, "parked_records").await
}

/// The parked aggregates, longest parked first (`GET /parked`, `fmctl sagas parked-records`).
pub(crate) async fn parked(pool: &PgPool) -> sqlx::Result<Vec<ParkedAggregate>> {
    batch_consumer::parking::parked(pool, "parked_records").await
}

/// `/ready`'s detail: `None` when nothing is parked; else how many aggregates, and the one
/// parked longest with the reason of its first record.
pub(crate) async fn summary(pool: &PgPool) -> sqlx::Result<Option<String>> {
    Ok(batch_consumer::parking::summary(&parked(pool).await?))
}
