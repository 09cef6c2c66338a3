//! What every reader that parks records in PostgreSQL shows of them (docs/evolution.md,
//! "Unknown is parked, not skipped").
//!
//! A reader keeps the records it cannot take yet (an event type or version it does not know, or
//! one beyond a gap) in a `parked_records` table of its own, one row a record, in the batch's
//! transaction. Which records park, and how they are taken again, is each reader's rule (the
//! projector applies them to read models, the saga runner takes them as facts); listing,
//! counting and describing them is the same for every reader and lives here.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgExecutor;
use uuid::Uuid;

/// One parked aggregate, as `/ready`, the ops routes and `fmctl` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct ParkedAggregate {
    pub aggregate_type: String,
    pub aggregate_id: Uuid,
    /// The first record that cannot be taken: its sequence, type and version.
    pub sequence: i64,
    pub event_type: String,
    pub event_version: i32,
    /// Why it cannot be taken (without personal data).
    pub reason: String,
    /// How many records of the aggregate wait.
    pub records: i64,
    /// When its first record was parked.
    pub since: DateTime<Utc>,
}

/// The parked aggregates in `table` (a `parked_records` table, schema-qualified where the
/// connection's `search_path` does not find it; a name the caller builds, never user input),
/// longest parked first.
pub async fn parked(
    executor: impl PgExecutor<'_>,
    table: &str,
) -> Result<Vec<ParkedAggregate>, sqlx::Error> {
    let sql = format!(
        "SELECT * FROM ( \
           SELECT DISTINCT ON (aggregate_type, aggregate_id) aggregate_type, aggregate_id, sequence, \
                  event_type, event_version, reason, \
                  count(*) OVER (PARTITION BY aggregate_type, aggregate_id) AS records, \
                  min(parked_at) OVER (PARTITION BY aggregate_type, aggregate_id) AS since \
           FROM {table} \
           ORDER BY aggregate_type, aggregate_id, sequence, id \
         ) first ORDER BY since, aggregate_type, aggregate_id"
    );
    sqlx::query_as(&sql).fetch_all(executor).await
}

/// How many aggregates `table` holds parked records of (for a gauge).
pub async fn parked_count(executor: impl PgExecutor<'_>, table: &str) -> Result<i64, sqlx::Error> {
    let sql = format!(
        "SELECT count(*) FROM (SELECT DISTINCT aggregate_type, aggregate_id FROM {table}) parked"
    );
    sqlx::query_scalar(&sql).fetch_one(executor).await
}

impl std::fmt::Display for ParkedAggregate {
    /// One line, as `fmctl` lists it: which aggregate, since when, how many records wait
    /// behind which first one, and why.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} since {}: {} records wait from sequence {} ({} v{}): {}",
            self.aggregate_type,
            self.aggregate_id,
            self.since
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            self.records,
            self.sequence,
            self.event_type,
            self.event_version,
            self.reason
        )
    }
}

/// `/ready`'s detail of a `parked` check: `None` when nothing is parked; else how many
/// aggregates, and the one parked longest with the reason of its first record.
#[must_use]
pub fn summary(parked: &[ParkedAggregate]) -> Option<String> {
    let longest = parked.first()?;
    Some(format!(
        "{} aggregates parked; the longest since {}: {} {} at sequence {}: {}",
        parked.len(),
        longest.since.to_rfc3339(),
        longest.aggregate_type,
        longest.aggregate_id,
        longest.sequence,
        longest.reason,
    ))
}
