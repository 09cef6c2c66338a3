//! Batch folding against a fresh PostgreSQL each (`#[sqlx::test]`), without Kafka: a log with
//! several events of each aggregate, a gap filled later, an event this reader does not know,
//! poison records and a redelivery goes through [`project_batch`] in batches of several sizes,
//! after a batch lost to a crash; every outcome, read-model row, parked record and anomaly must
//! equal what applying the records one at a time leaves.

#![allow(clippy::unwrap_used)] // A test fails loudly on any unexpected error; that is the point.

use schemas::SchemaRegistry;
use serde_json::{Value, json};
use sqlx::{Acquire as _, PgConnection, PgPool};

use super::{Input, project_batch};
use crate::parking::{
    Projected, project_record,
    tests::{Logged, build, log, read_models, the_log, topics},
};

/// The log of the parking tests (three booking stories interleaved, two opening-hour changes,
/// a booking's sequence 3 before its 2), with two poison records among them and, at the end, the
/// first eight records delivered again (as after a crash before their offsets were stored).
fn the_batch_log() -> Vec<Logged> {
    let (envelopes, _, _) = the_log();
    let mut records = log(envelopes);
    let booking_topic = records
        .iter()
        .find(|r| r.envelope.event_type == "BookingRequested")
        .map(|r| r.position.clone())
        .unwrap();
    let next_offset = |records: &[Logged]| {
        records
            .iter()
            .filter(|r| r.position.topic == booking_topic.topic)
            .map(|r| r.position.offset)
            .max()
            .unwrap()
            + 1
    };
    // Not JSON, in the middle of the stories.
    let mut not_json = records[5].envelope.clone();
    not_json.event_type = "not JSON".into();
    let position = event_log::LogPosition {
        offset: next_offset(&records),
        ..booking_topic.clone()
    };
    records.insert(
        7,
        Logged {
            envelope: not_json,
            bytes: b"{ not json".to_vec(),
            position,
        },
    );
    // A request its own schema refuses (no field it needs), for a booking of the log.
    let mut refused = records
        .iter()
        .find(|r| r.envelope.event_type == "BookingRequested")
        .unwrap()
        .envelope
        .clone();
    refused.data = json!({ "unexpected": true });
    let position = event_log::LogPosition {
        offset: next_offset(&records),
        ..booking_topic
    };
    records.insert(
        12,
        Logged {
            bytes: serde_json::to_vec(&refused).unwrap(),
            envelope: refused,
            position,
        },
    );
    let again: Vec<Logged> = records[..8]
        .iter()
        .map(|r| Logged {
            envelope: r.envelope.clone(),
            bytes: r.bytes.clone(),
            position: r.position.clone(),
        })
        .collect();
    records.extend(again);
    records
}

fn label(projected: &Projected) -> String {
    match projected {
        Projected::Outcome(outcome) => outcome.label().to_owned(),
        Projected::Refused { .. } => "refused".to_owned(),
    }
}

/// Each record in a transaction of its own, through the one-record path.
async fn one_by_one(
    conn: &mut PgConnection,
    registry: &SchemaRegistry,
    records: &[Logged],
) -> Vec<String> {
    let keys = crate::read_models::tests::keys().await;
    let mut outcomes = Vec::new();
    for record in records {
        let mut tx = conn.begin().await.unwrap();
        let projected = project_record(
            &mut tx,
            registry,
            &keys,
            &topics(),
            &record.bytes,
            &record.position,
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
        outcomes.push(label(&projected));
    }
    outcomes
}

/// Batches of `size` records, each folded in one transaction; `commit: false` loses them all
/// (a crash before the commit).
async fn batched(
    conn: &mut PgConnection,
    registry: &SchemaRegistry,
    records: &[Logged],
    size: usize,
    commit: bool,
) -> Vec<String> {
    let keys = crate::read_models::tests::keys().await;
    let mut outcomes = Vec::new();
    for chunk in records.chunks(size) {
        let inputs: Vec<Input<'_>> = chunk
            .iter()
            .map(|r| Input {
                payload: &r.bytes,
                position: &r.position,
                span: tracing::Span::none(),
            })
            .collect();
        let mut tx = conn.begin().await.unwrap();
        let projected = project_batch(&mut tx, registry, &keys, &topics(), &inputs)
            .await
            .unwrap();
        if commit {
            tx.commit().await.unwrap();
        } else {
            tx.rollback().await.unwrap();
        }
        outcomes.extend(projected.iter().map(label));
    }
    outcomes
}

/// Everything a build holds: its read models, its parked records and its anomalies.
async fn everything(conn: &mut PgConnection) -> Vec<String> {
    let mut dump = read_models(conn).await;
    for sql in [
        "SELECT json_agg(json_build_array(aggregate_type, aggregate_id, sequence, event_type, \
         event_version, reason, topic, partition, log_offset) ORDER BY id) FROM parked_records",
        "SELECT json_agg(json_build_array(kind, aggregate_type, aggregate_id, sequence, expected, \
         event_id, topic, partition, log_offset) ORDER BY id) FROM projection_anomalies",
    ] {
        let rows: Option<Value> = sqlx::query_scalar(sql).fetch_one(&mut *conn).await.unwrap();
        dump.push(rows.unwrap_or(Value::Null).to_string());
    }
    dump
}

#[sqlx::test(migrator = "crate::startup::MIGRATOR")]
async fn a_folded_batch_leaves_exactly_what_applying_its_records_one_by_one_leaves(pool: PgPool) {
    let records = the_batch_log();
    let full = SchemaRegistry::load().unwrap();
    // What the old, one-record-at-a-time projector made of the log.
    let mut reference = build(&pool, 1).await;
    let expected_outcomes = one_by_one(&mut reference, &full, &records).await;
    let expected = everything(&mut reference).await;
    // The log is what it should be: several events per aggregate, a gap and its fill, two
    // poison records, eight redelivered (one of them poison).
    let count = |label: &str| expected_outcomes.iter().filter(|o| *o == label).count();
    assert_eq!(count("refused"), 3, "{expected_outcomes:?}");
    assert_eq!(count("gap"), 1, "{expected_outcomes:?}");
    assert!(count("duplicate") >= 7, "{expected_outcomes:?}");
    assert!(expected[2].contains("confirmed"), "{expected:?}");
    assert!(
        expected[0].contains("10:00"),
        "the last hours: {expected:?}"
    );

    for (build_number, size) in [(2, records.len()), (3, 7), (4, 2)] {
        let mut conn = build(&pool, build_number).await;
        // A crash mid-way through the first batch: nothing of it stays.
        batched(&mut conn, &full, &records[..size.min(10)], size, false).await;
        let left = everything(&mut conn).await;
        assert!(
            left.iter().all(|table| table.ends_with("null")),
            "a lost batch left something behind: {left:?}"
        );
        let outcomes = batched(&mut conn, &full, &records, size, true).await;
        assert_eq!(outcomes, expected_outcomes, "batches of {size}");
        assert_eq!(everything(&mut conn).await, expected, "batches of {size}");
    }
}

#[sqlx::test(migrator = "crate::startup::MIGRATOR")]
async fn a_batch_parks_an_unknown_event_and_everything_after_it_as_one_by_one_does(pool: PgPool) {
    let records = the_batch_log();
    // A reader of the release before FacilityRegistered v2: two of the three facilities park,
    // with every later record of theirs, while their bookings go on.
    let old = SchemaRegistry::load()
        .unwrap()
        .without("FacilityRegistered", 2);
    let mut reference = build(&pool, 1).await;
    let expected_outcomes = one_by_one(&mut reference, &old, &records).await;
    let expected = everything(&mut reference).await;
    assert!(
        expected_outcomes.iter().any(|o| o == "parked"),
        "{expected_outcomes:?}"
    );
    for (build_number, size) in [(2, records.len()), (3, 5)] {
        let mut conn = build(&pool, build_number).await;
        let outcomes = batched(&mut conn, &old, &records, size, true).await;
        assert_eq!(outcomes, expected_outcomes, "batches of {size}");
        assert_eq!(everything(&mut conn).await, expected, "batches of {size}");
    }
}
