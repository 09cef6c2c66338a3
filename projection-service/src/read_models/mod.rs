//! The read models and how each event changes them.
//!
//! Each aggregate's events go to the module of its read model. Every change first locks the
//! row and asks the shared admission rule whether the event is the next one of its stream.
//! Queries name tables without a schema: the projector's connections have their `search_path`
//! set to the version they fill (`rm_v<N>`).
//!
//! - `facilities`: the facility rows and the calendar's reservations.
//! - `bookings`: bookings with their lifecycle history (the saga's progress).
//! - `payments`: one row per payment.
//!
//! Their SQL is tested against a fresh PostgreSQL each (`#[sqlx::test]`), without Kafka
//! (`tests.rs`).

pub(crate) mod bookings;
pub(crate) mod facilities;
pub(crate) mod payments;
#[cfg(test)]
pub(crate) mod tests;

use event_log::resolution::{Admission, admit};
use schemas::{AggregateType, ContractViolation, EventEnvelope, SchemaRegistry};
use serde::Serialize;
use sqlx::PgConnection;

/// What applying one event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Applied {
    Changed,
    /// A valid event no read model keeps (the operators' decisions about a saga).
    Ignored,
    /// A redelivery, or the loser of a race: already reflected, or never admitted.
    Stale,
    /// An event is missing before this one; nothing was changed.
    Gap {
        expected: u64,
    },
}

/// Applying failed: the event does not decode (dead-letter it), or the database failed (retry).
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApplyError {
    #[error(transparent)]
    Contract(#[from] ContractViolation),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// The record's personal data does not open with what this process holds (a master key the
    /// settings lack, a box that fails authentication): its aggregate is parked, with this as
    /// the reason (it names the key, never a value), and nothing of it is applied.
    #[error(transparent)]
    Unopenable(privacy::PrivacyError),
}

/// A box that does not open parks its aggregate ([`ApplyError::Unopenable`]); the key store
/// failing otherwise (PostgreSQL) is like the database failing: the batch is retried. Nothing is
/// ever applied without its personal data.
impl From<privacy::PrivacyError> for ApplyError {
    fn from(error: privacy::PrivacyError) -> Self {
        match error {
            privacy::PrivacyError::Database(error) => Self::Database(error),
            other if other.is_unopenable() => Self::Unopenable(other),
            other => Self::Database(sqlx::Error::Configuration(Box::new(other))),
        }
    }
}

/// Applies one validated envelope inside the caller's transaction.
pub(crate) async fn apply(
    conn: &mut PgConnection,
    registry: &SchemaRegistry,
    keys: &privacy::KeyStore,
    envelope: &EventEnvelope,
) -> Result<Applied, ApplyError> {
    match envelope.aggregate_type {
        AggregateType::Facility => {
            facilities::apply(conn, &registry.decode(envelope)?, envelope).await
        }
        AggregateType::Booking => {
            bookings::apply(conn, keys, &registry.decode(envelope)?, envelope).await
        }
        AggregateType::Payment => {
            payments::apply(conn, &registry.decode(envelope)?, envelope).await
        }
        // Decoded all the same, so that a saga event no reader can use is dead-lettered here
        // too; the saga's progress the query-api shows comes from the saga runner's tables.
        AggregateType::Saga => {
            registry.decode::<domain::saga::SagaEvent>(envelope)?;
            Ok(Applied::Ignored)
        }
    }
}

/// Locks a row and returns whether `envelope` is the next event for it.
pub(crate) async fn admission(
    conn: &mut PgConnection,
    lock_query: &'static str,
    envelope: &EventEnvelope,
) -> Result<Admission, sqlx::Error> {
    let version: Option<i64> = sqlx::query_scalar(lock_query)
        .bind(envelope.aggregate_id)
        .fetch_optional(&mut *conn)
        .await?;
    let last = version.and_then(|v| u64::try_from(v).ok()).unwrap_or(0);
    Ok(admit(last, envelope.sequence))
}

/// A value's wire form as text (`"chapel"`, `"Europe/London"`): the same string the log holds.
pub(crate) fn wire_text<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(text)) => text,
        Ok(other) => other.to_string(),
        Err(error) => unreachable!("domain values serialise: {error}"),
    }
}

/// A value's wire form as JSON, for JSONB columns.
pub(crate) fn wire_json<T: Serialize>(value: &T) -> serde_json::Value {
    serde_json::to_value(value)
        .unwrap_or_else(|error| unreachable!("domain values serialise: {error}"))
}

/// An event's sequence as the `BIGINT` stored in `version` columns.
pub(crate) fn version_of(envelope: &EventEnvelope) -> i64 {
    i64::try_from(envelope.sequence).unwrap_or(i64::MAX)
}
