//! Parking: a record this release cannot apply yet stops its aggregate, not the projector
//! (docs/evolution.md, "Unknown is parked, not skipped").
//!
//! A record parks its aggregate when its envelope is valid but its (event type, version) is one
//! this release does not know (a newer release wrote it), or when its sequence is beyond the next
//! one of its aggregate (a gap). The record and every later record of the same aggregate are then
//! kept in the build's `parked_records`, in the batch's transaction, so their offsets move on
//! with the batch and a crash neither loses nor duplicates them; every other aggregate goes on.
//!
//! A parked aggregate is drained, in sequence order, whenever a record of it arrives (it may be
//! the missing one) and when the projector starts (it may be a newer release that knows the
//! record): records are applied while each is the next one of the stream, duplicates are dropped
//! as the live path drops them, and the first record that still cannot be applied stays parked
//! with the reason, keeping everything after it.
//!
//! A record whose personal data does not open with what this projector holds (its data key is
//! wrapped by a master key the settings lack, or the box fails authentication) parks its
//! aggregate too, with the key's id and the cause as the reason: it is never applied without
//! its personal data, and never blocks another aggregate (docs/privacy.md). An erased key is
//! not such a case: the record is applied with its personal columns `"erased"`.
//!
//! A record whose own version's schema refuses it, or that does not decode, is still a dead
//! letter: a newer release would refuse it too.

use batch_consumer::RecordOutcome;
pub use batch_consumer::parking::ParkedAggregate;
use event_log::{LogPosition, Topics};
use privacy::KeyStore;
use schemas::{AggregateType, ContractViolation, EventEnvelope, SchemaRegistry};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::read_models::{self, Applied, ApplyError};

#[cfg(test)]
pub(crate) mod tests;

/// What projecting one record came to.
#[derive(Debug)]
pub(crate) enum Projected {
    /// Its outcome, with its effect (or its parking) in the transaction.
    Outcome(RecordOutcome),
    /// It breaks the contract: to the dead-letter topic with `full`; `for_log` is the reason
    /// for the log. A schema violation's reason names the place and the rule, never the value,
    /// in both (a value may be personal data: docs/privacy.md, "Dead letters").
    Refused { full: String, for_log: String },
}

impl Projected {
    fn refused(violation: &ContractViolation) -> Self {
        Self::Refused {
            full: violation.without_values(),
            for_log: violation.without_values(),
        }
    }
}

/// Projects one record inside the batch's transaction, on a connection whose `search_path` is
/// the build's schema: applies it, parks it, or says why it is refused. (A batch folds its
/// records in memory instead, `crate::batch`, and comes here for the records of a parked
/// aggregate.)
pub(crate) async fn project_record(
    conn: &mut PgConnection,
    registry: &SchemaRegistry,
    keys: &KeyStore,
    topics: &Topics,
    payload: &[u8],
    position: &LogPosition,
) -> Result<Projected, sqlx::Error> {
    match check(registry, topics, payload, position) {
        Ok(envelope) => project_checked(conn, registry, keys, &envelope, payload, position).await,
        Err(refused) => Ok(refused),
    }
}

/// What can be said of a record without the database: its envelope, valid and on its topic,
/// with a payload its own version's schema accepts (or a version this release does not know),
/// or why it is refused. Records the event type and aggregate on the current span.
pub(crate) fn check(
    registry: &SchemaRegistry,
    topics: &Topics,
    payload: &[u8],
    position: &LogPosition,
) -> Result<EventEnvelope, Projected> {
    let envelope = registry
        .validate_envelope_bytes(payload)
        .map_err(|violation| Projected::refused(&violation))?;
    let span = tracing::Span::current();
    span.record("event_type", envelope.event_type.as_str());
    span.record(
        "aggregate_id",
        tracing::field::display(envelope.aggregate_id),
    );
    if topics.aggregate_of(&position.topic) != Some(envelope.aggregate_type) {
        let full = format!(
            "a {} event on topic {}",
            envelope.aggregate_type, position.topic
        );
        return Err(Projected::Refused {
            for_log: full.clone(),
            full,
        });
    }
    // A record its own version's schema refuses is refused by every release: parked or not.
    match registry.validate_payload(&envelope) {
        Err(violation) if !violation.is_unknown_event() => Err(Projected::refused(&violation)),
        _ => Ok(envelope),
    }
}

/// Projects a [`check`]ed record, one record at a time against the database: parked behind its
/// aggregate's parked records, applied, or parked itself.
pub(crate) async fn project_checked(
    conn: &mut PgConnection,
    registry: &SchemaRegistry,
    keys: &KeyStore,
    envelope: &EventEnvelope,
    payload: &[u8],
    position: &LogPosition,
) -> Result<Projected, sqlx::Error> {
    if let Some(first) = first_parked(conn, envelope).await? {
        let reason = format!("waits behind sequence {first}, parked");
        park(conn, envelope, payload, position, &reason).await?;
        let drained = drain(
            conn,
            registry,
            keys,
            envelope.aggregate_type,
            envelope.aggregate_id,
        )
        .await?;
        return Ok(Projected::Outcome(if drained.still_parked {
            RecordOutcome::Parked
        } else {
            RecordOutcome::Applied
        }));
    }
    match read_models::apply(&mut *conn, registry, keys, envelope).await {
        Ok(Applied::Changed) => Ok(Projected::Outcome(RecordOutcome::Applied)),
        Ok(Applied::Ignored) => Ok(Projected::Outcome(RecordOutcome::Ignored)),
        Ok(Applied::Stale) => {
            duplicate(envelope, position);
            Ok(Projected::Outcome(RecordOutcome::Duplicate))
        }
        Ok(Applied::Gap { expected }) => {
            tracing::error!(
                aggregate_id = %envelope.aggregate_id,
                sequence = envelope.sequence,
                expected,
                topic = %position.topic, partition = position.partition, offset = position.offset,
                "gap in an aggregate stream; the aggregate is parked until the missing event arrives"
            );
            record_gap(&mut *conn, envelope, expected, position).await?;
            park(
                conn,
                envelope,
                payload,
                position,
                &gap_reason(envelope, expected),
            )
            .await?;
            Ok(Projected::Outcome(RecordOutcome::Gap))
        }
        Err(ApplyError::Contract(violation)) if violation.is_unknown_event() => {
            park_not_applied(conn, envelope, payload, position, NotApplied::Unknown).await
        }
        // Opening happens before any write, so nothing of this record is in the transaction.
        Err(ApplyError::Unopenable(error)) => {
            park_not_applied(
                conn,
                envelope,
                payload,
                position,
                NotApplied::Unopenable(&error),
            )
            .await
        }
        // Decoding happens before any write, so nothing of this record is in the transaction.
        Err(ApplyError::Contract(violation)) => Ok(Projected::refused(&violation)),
        Err(ApplyError::Database(error)) => Err(error),
    }
}

/// Logs a duplicate (a sequence at or below the last one applied), which is counted, never
/// applied.
pub(crate) fn duplicate(envelope: &EventEnvelope, position: &LogPosition) {
    tracing::warn!(
        aggregate_id = %envelope.aggregate_id,
        event_id = %envelope.event_id,
        sequence = envelope.sequence,
        topic = %position.topic, partition = position.partition, offset = position.offset,
        "duplicate sequence in an aggregate stream (a losing writer's record); not applied"
    );
}

fn gap_reason(envelope: &EventEnvelope, expected: u64) -> String {
    format!(
        "gap: sequence {} where {expected} was expected",
        envelope.sequence
    )
}

/// Why a known-good record is parked rather than applied.
enum NotApplied<'a> {
    /// Its event type or version is one this release does not know.
    Unknown,
    /// Its personal data does not open.
    Unopenable(&'a privacy::PrivacyError),
}

/// Parks a record that was not applied (and so wrote nothing), with its reason.
async fn park_not_applied(
    conn: &mut PgConnection,
    envelope: &EventEnvelope,
    payload: &[u8],
    position: &LogPosition,
    why: NotApplied<'_>,
) -> Result<Projected, sqlx::Error> {
    let reason = match why {
        NotApplied::Unknown => {
            tracing::warn!(
                aggregate_id = %envelope.aggregate_id,
                event_type = %envelope.event_type,
                event_version = envelope.event_version,
                topic = %position.topic, partition = position.partition, offset = position.offset,
                "an event this release does not know; the aggregate is parked until a release that knows it runs"
            );
            unknown_reason(envelope)
        }
        NotApplied::Unopenable(error) => {
            tracing::error!(
                aggregate_id = %envelope.aggregate_id,
                sequence = envelope.sequence,
                %error,
                topic = %position.topic, partition = position.partition, offset = position.offset,
                "personal data that does not open; the aggregate is parked until it does"
            );
            unopenable_reason(error)
        }
    };
    park(conn, envelope, payload, position, &reason).await?;
    Ok(Projected::Outcome(RecordOutcome::Parked))
}

/// Why a record whose personal data does not open is parked: the key's id and the cause (a
/// master key the settings lack, or a box that fails authentication), never a value.
fn unopenable_reason(error: &privacy::PrivacyError) -> String {
    format!(
        "{error}; applied once it opens (the right master key configured, the projector restarted)"
    )
}

fn unknown_reason(envelope: &EventEnvelope) -> String {
    format!(
        "unknown event {} v{}: a release that knows it applies it",
        envelope.event_type, envelope.event_version
    )
}

/// Which of these aggregates are parked, with one query.
pub(crate) async fn parked_among(
    conn: &mut PgConnection,
    aggregates: &[(AggregateType, Uuid)],
) -> Result<std::collections::HashSet<(AggregateType, Uuid)>, sqlx::Error> {
    let ids: Vec<Uuid> = aggregates.iter().map(|(_, id)| *id).collect();
    let rows: Vec<(String, Uuid)> = sqlx::query_as(
        "SELECT DISTINCT aggregate_type, aggregate_id FROM parked_records WHERE aggregate_id = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(kind, id)| Some((AggregateType::from_wire(&kind)?, id)))
        .filter(|aggregate| aggregates.contains(aggregate))
        .collect())
}

/// The lowest parked sequence of the envelope's aggregate, if it is parked.
async fn first_parked(
    conn: &mut PgConnection,
    envelope: &EventEnvelope,
) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT min(sequence) FROM parked_records WHERE aggregate_type = $1 AND aggregate_id = $2",
    )
    .bind(envelope.aggregate_type.as_str())
    .bind(envelope.aggregate_id)
    .fetch_one(conn)
    .await
}

async fn park(
    conn: &mut PgConnection,
    envelope: &EventEnvelope,
    payload: &[u8],
    position: &LogPosition,
    reason: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO parked_records (aggregate_type, aggregate_id, sequence, event_type, event_version, \
         reason, topic, partition, log_offset, payload) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(envelope.aggregate_type.as_str())
    .bind(envelope.aggregate_id)
    .bind(i64::try_from(envelope.sequence).unwrap_or(i64::MAX))
    .bind(envelope.event_type.as_str())
    .bind(i32::from(envelope.event_version))
    .bind(reason)
    .bind(&position.topic)
    .bind(position.partition)
    .bind(position.offset)
    .bind(payload)
    .execute(conn)
    .await?;
    Ok(())
}

/// What draining one aggregate came to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Drained {
    /// Parked records applied (or ignored as no read model keeps them).
    pub(crate) applied: u64,
    /// Parked records dropped as duplicates of a sequence already applied.
    pub(crate) duplicates: u64,
    /// Whether records of the aggregate are still parked.
    pub(crate) still_parked: bool,
}

/// Applies the parked records of one aggregate in sequence order (arrival order within a
/// sequence) while each is the next one of its stream, removing each applied one; the first
/// that still cannot be applied stays, with its reason brought up to date, and so does every
/// record after it.
pub(crate) async fn drain(
    conn: &mut PgConnection,
    registry: &SchemaRegistry,
    keys: &KeyStore,
    aggregate_type: AggregateType,
    aggregate_id: Uuid,
) -> Result<Drained, sqlx::Error> {
    let rows: Vec<(i64, Vec<u8>)> = sqlx::query_as(
        "SELECT id, payload FROM parked_records WHERE aggregate_type = $1 AND aggregate_id = $2 \
         ORDER BY sequence, id",
    )
    .bind(aggregate_type.as_str())
    .bind(aggregate_id)
    .fetch_all(&mut *conn)
    .await?;
    let mut drained = Drained::default();
    for (id, payload) in rows {
        let reason = match registry.validate_envelope_bytes(&payload) {
            // It was valid when parked; a build that reads envelopes differently keeps it.
            Err(violation) => violation.without_values(),
            Ok(envelope) => match read_models::apply(&mut *conn, registry, keys, &envelope).await {
                Ok(Applied::Changed | Applied::Ignored) => {
                    unpark(conn, id).await?;
                    drained.applied += 1;
                    continue;
                }
                Ok(Applied::Stale) => {
                    unpark(conn, id).await?;
                    drained.duplicates += 1;
                    continue;
                }
                Ok(Applied::Gap { expected }) => gap_reason(&envelope, expected),
                Err(ApplyError::Contract(violation)) if violation.is_unknown_event() => {
                    unknown_reason(&envelope)
                }
                Err(ApplyError::Unopenable(error)) => unopenable_reason(&error),
                // A known record that does not decode any more: a defect of this build, not of
                // the writer; it stays parked (and visible) rather than being passed over.
                Err(ApplyError::Contract(violation)) => violation.without_values(),
                Err(ApplyError::Database(error)) => return Err(error),
            },
        };
        sqlx::query("UPDATE parked_records SET reason = $2 WHERE id = $1")
            .bind(id)
            .bind(reason)
            .execute(&mut *conn)
            .await?;
        drained.still_parked = true;
        return Ok(drained);
    }
    if drained.applied + drained.duplicates > 0 {
        tracing::info!(
            aggregate_type = %aggregate_type,
            %aggregate_id,
            applied = drained.applied,
            duplicates = drained.duplicates,
            "a parked aggregate is whole again: its parked records are applied"
        );
    }
    Ok(drained)
}

async fn unpark(conn: &mut PgConnection, id: i64) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM parked_records WHERE id = $1")
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Drains every parked aggregate (at the projector's start: this release may know what an
/// older one parked). Returns the records applied and the aggregates still parked.
pub(crate) async fn drain_all(
    conn: &mut PgConnection,
    registry: &SchemaRegistry,
    keys: &KeyStore,
) -> Result<(u64, u64), sqlx::Error> {
    let aggregates: Vec<(String, Uuid)> = sqlx::query_as(
        "SELECT DISTINCT aggregate_type, aggregate_id FROM parked_records ORDER BY 1, 2",
    )
    .fetch_all(&mut *conn)
    .await?;
    let (mut applied, mut still_parked) = (0, 0);
    for (aggregate_type, aggregate_id) in aggregates {
        let Some(aggregate_type) = AggregateType::from_wire(&aggregate_type) else {
            still_parked += 1;
            continue;
        };
        let drained = drain(conn, registry, keys, aggregate_type, aggregate_id).await?;
        applied += drained.applied;
        still_parked += u64::from(drained.still_parked);
    }
    Ok((applied, still_parked))
}

async fn record_gap(
    conn: &mut PgConnection,
    envelope: &EventEnvelope,
    expected: u64,
    position: &LogPosition,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO projection_anomalies (kind, aggregate_type, aggregate_id, sequence, expected, event_id, topic, partition, log_offset) \
         VALUES ('gap', $1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(envelope.aggregate_type.as_str())
    .bind(envelope.aggregate_id)
    .bind(i64::try_from(envelope.sequence).unwrap_or(i64::MAX))
    .bind(i64::try_from(expected).unwrap_or(i64::MAX))
    .bind(envelope.event_id)
    .bind(&position.topic)
    .bind(position.partition)
    .bind(position.offset)
    .execute(conn)
    .await?;
    Ok(())
}

/// The parked aggregates of the build whose tables are in `schema`, longest parked first.
/// `schema` is a build's schema name (`read_v<V>_b<B>`, built from integers).
pub async fn parked(pool: &PgPool, schema: &str) -> Result<Vec<ParkedAggregate>, sqlx::Error> {
    batch_consumer::parking::parked(pool, &format!("{schema}.parked_records")).await
}

/// How many aggregates are parked in the build whose tables are in `schema`.
pub async fn parked_count(pool: &PgPool, schema: &str) -> Result<i64, sqlx::Error> {
    batch_consumer::parking::parked_count(pool, &format!("{schema}.parked_records")).await
}
