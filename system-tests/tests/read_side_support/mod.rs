//! Helpers shared by the read-side tests: writing events straight to the log (as the saga will),
//! reading a whole read-model version back row for row, and waiting on the query-api.

#![allow(dead_code)] // Each test binary uses a different subset.

use std::time::Duration;

use domain::DomainEvent;
use event_log::{EventProducer, LogPosition};
use schemas::AggregateType;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

pub(crate) use schemas::fixtures::envelope;

/// Appends one event and returns its position as a consistency token.
pub(crate) async fn append<E: DomainEvent>(
    producer: &EventProducer,
    aggregate_type: AggregateType,
    aggregate_id: Uuid,
    sequence: u64,
    event: &E,
) -> String {
    let position: LogPosition = producer
        .append(&envelope(aggregate_type, aggregate_id, sequence, event))
        .await
        .expect("the broker takes the event");
    schemas::ConsistencyToken::from(position).to_string()
}

/// Every row of every read-model table of a schema, as JSON, ordered by key: what "row for row"
/// compares. The offsets' bookkeeping time (`updated_at`) is left out.
pub(crate) async fn dump(pool: &PgPool, schema: &str) -> Vec<(String, Vec<Value>)> {
    let tables = [
        ("facilities", "facility_id"),
        ("reservations", "facility_id, booking_id"),
        ("bookings", "booking_id"),
        ("payments", "payment_id"),
        ("projection_offsets", "topic, partition"),
    ];
    let mut all = Vec::new();
    for (table, key) in tables {
        let sql = format!("SELECT to_jsonb(t) FROM {schema}.{table} t ORDER BY {key}");
        let mut rows: Vec<Value> = sqlx::query_scalar(&sql)
            .fetch_all(pool)
            .await
            .expect("the read model answers");
        if table == "projection_offsets" {
            for row in &mut rows {
                if let Some(object) = row.as_object_mut() {
                    object.remove("updated_at");
                }
            }
        }
        all.push((table.to_owned(), rows));
    }
    all
}

/// The live build of this release's read-model version.
pub(crate) async fn live_build(pool: &PgPool) -> i32 {
    sqlx::query_scalar("SELECT build FROM read_model_builds WHERE version = $1 AND state = 'live'")
        .bind(projection_service::READ_MODEL.version)
        .fetch_one(pool)
        .await
        .expect("a live build exists")
}

/// Polls `check` every 100 ms until it answers `true`, for at most `within`.
pub(crate) async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} did not happen within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A `FacilityRegistered` for `id` (the fixture chapel's profile).
pub(crate) fn facility_registered(id: Uuid) -> domain::facility::FacilityEvent {
    use domain::facility::FacilityEvent;
    let FacilityEvent::FacilityRegistered {
        name,
        kind,
        capacity,
        time_zone,
        opening_hours,
        turnaround_minutes,
        ..
    } = domain::fixtures::facility_registered()
    else {
        unreachable!("the fixture is a registration")
    };
    FacilityEvent::FacilityRegistered {
        facility_id: id.into(),
        name,
        kind,
        capacity,
        time_zone,
        opening_hours,
        turnaround_minutes,
        funeral_home_id: None,
    }
}

/// Appends `count` facility registrations, 64 in flight at a time; returns their ids.
pub(crate) async fn register_facilities(producer: &EventProducer, count: usize) -> Vec<Uuid> {
    let ids: Vec<Uuid> = (0..count).map(|_| Uuid::new_v4()).collect();
    for chunk in ids.chunks(64) {
        futures::future::join_all(chunk.iter().map(|id| async move {
            append(
                producer,
                AggregateType::Facility,
                *id,
                1,
                &facility_registered(*id),
            )
            .await
        }))
        .await;
    }
    ids
}
