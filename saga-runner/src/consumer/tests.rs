//! Parking in the saga's consumer against a fresh PostgreSQL each (`#[sqlx::test]`), without
//! Kafka: records go through the consumer's own path ([`take`], one transaction per record as a
//! batch of one), and the facts are compared with those of a consumer that knew every record.

#![allow(clippy::unwrap_used)] // A test fails loudly on any unexpected error; that is the point.

use batch_consumer::RecordOutcome;
use event_log::{LogPosition, Topics};
use schemas::{EventEnvelope, SchemaRegistry, fixtures};
use serde_json::Value;
use sqlx::{Acquire as _, PgPool};

use super::{Taken, drain_all, take};

fn topics() -> Topics {
    Topics::new("fm")
}

/// Takes each envelope as the log would deliver it, one transaction each.
async fn take_all(
    pool: &PgPool,
    registry: &SchemaRegistry,
    envelopes: &[EventEnvelope],
) -> Vec<RecordOutcome> {
    let mut conn = pool.acquire().await.unwrap();
    let mut outcomes = Vec::new();
    for (offset, envelope) in envelopes.iter().enumerate() {
        let position = LogPosition {
            topic: topics().events(envelope.aggregate_type),
            partition: 0,
            offset: i64::try_from(offset).unwrap(),
        };
        let bytes = serde_json::to_vec(envelope).unwrap();
        let mut tx = conn.begin().await.unwrap();
        let taken = take(&mut tx, registry, &topics(), &bytes, None, &position)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        match taken {
            Taken::Outcome(outcome) => outcomes.push(outcome),
            Taken::Refused(refusal) => panic!("refused: {}", refusal.full),
        }
    }
    outcomes
}

/// What the consumer keeps: every saga's facts, every stream's last sequence, every facility's
/// name. Without the facts' deadlines, which are set from the clock, and `last_event_id`: the
/// last event taken across all the booking's aggregates, which parking one aggregate changes
/// (order is kept within an aggregate's stream, as the log keeps it, not across them).
async fn kept(
    pool: &PgPool,
) -> (
    Vec<Value>,
    Vec<(uuid::Uuid, i64)>,
    Vec<(uuid::Uuid, String)>,
) {
    let facts: Vec<Value> = sqlx::query_scalar("SELECT facts FROM sagas ORDER BY booking_id")
        .fetch_all(pool)
        .await
        .unwrap();
    let facts = facts
        .into_iter()
        .map(|mut facts| {
            if let Some(fields) = facts.as_object_mut() {
                fields.retain(|name, _| !name.ends_with("_deadline") && name != "last_event_id");
            }
            facts
        })
        .collect();
    let streams = sqlx::query_as("SELECT aggregate_id, last_sequence FROM streams ORDER BY 1")
        .fetch_all(pool)
        .await
        .unwrap();
    let facilities = sqlx::query_as("SELECT facility_id, name FROM facilities ORDER BY 1")
        .fetch_all(pool)
        .await
        .unwrap();
    (facts, streams, facilities)
}

async fn parked(pool: &PgPool) -> Vec<(uuid::Uuid, i64, String)> {
    sqlx::query_as(
        "SELECT aggregate_id, sequence, reason FROM parked_records ORDER BY aggregate_id, sequence, id",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

#[sqlx::test(migrator = "crate::store::MIGRATOR")]
async fn an_unknown_version_parks_its_aggregate_until_a_consumer_that_knows_it_takes_it_in_order(
    pool: PgPool,
) {
    // Two bookings' whole lives, interleaved; every facility is registered at v2. The second
    // booking's stream arrives with a gap (its sequence 3 before its 2).
    let (_, mut first) = fixtures::booking_story(1);
    let (_, mut second) = fixtures::booking_story(3);
    let booking = second[1].aggregate_id;
    let at = |seq: u64, story: &[EventEnvelope]| {
        story
            .iter()
            .position(|e| e.aggregate_id == booking && e.sequence == seq)
            .unwrap()
    };
    let moved = second.remove(at(3, &second));
    second.insert(at(2, &second), moved);
    let mut log = Vec::new();
    while !first.is_empty() || !second.is_empty() {
        for story in [&mut first, &mut second] {
            if !story.is_empty() {
                log.push(story.remove(0));
            }
        }
    }
    let full = SchemaRegistry::load().unwrap();
    let outcomes = take_all(&pool, &full, &log).await;
    assert!(!outcomes.contains(&RecordOutcome::DeadLettered));
    assert!(parked(&pool).await.is_empty(), "the gap was filled");
    let expected = kept(&pool).await;
    assert_eq!(expected.2.len(), 2, "{expected:?}");
    for table in ["sagas", "streams", "facilities", "parked_records"] {
        sqlx::query(&format!("TRUNCATE {table}"))
            .execute(&pool)
            .await
            .unwrap();
    }

    // A consumer of the release before FacilityRegistered v2: both facilities park, with every
    // record of theirs; the bookings and payments go on.
    let old = SchemaRegistry::load()
        .unwrap()
        .without("FacilityRegistered", 2);
    let outcomes = take_all(&pool, &old, &log).await;
    let facilities: Vec<_> = log
        .iter()
        .filter(|e| e.aggregate_type == schemas::AggregateType::Facility)
        .map(|e| e.aggregate_id)
        .collect();
    for (envelope, outcome) in log.iter().zip(&outcomes) {
        if facilities.contains(&envelope.aggregate_id) {
            assert_eq!(*outcome, RecordOutcome::Parked, "{}", envelope.event_type);
        } else {
            assert_ne!(*outcome, RecordOutcome::Parked, "{}", envelope.event_type);
        }
    }
    let waiting = parked(&pool).await;
    assert_eq!(
        waiting.len(),
        log.iter()
            .filter(|e| facilities.contains(&e.aggregate_id))
            .count()
    );
    assert!(
        waiting
            .iter()
            .filter(|(_, sequence, _)| *sequence == 1)
            .all(|(_, _, reason)| reason.contains("unknown event FacilityRegistered v2")),
        "{waiting:?}"
    );
    let seen = kept(&pool).await;
    assert!(seen.2.is_empty(), "no facility known yet: {seen:?}");
    assert_ne!(seen.0, expected.0, "the slots' facts wait");

    // The old consumer starting again takes nothing; one of this release takes everything, in
    // order, and keeps exactly what a consumer that knew v2 all along keeps.
    drain_all(&pool, &old).await.unwrap();
    assert_eq!(parked(&pool).await, waiting);
    drain_all(&pool, &full).await.unwrap();
    assert!(parked(&pool).await.is_empty());
    assert_eq!(kept(&pool).await, expected);
}
