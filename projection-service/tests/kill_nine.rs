//! `kill -9` the projection-service mid-batch, many times, while events keep arriving (batches of
//! at most 40 records, so a kill lands inside a transaction most of the time): afterwards
//! the read models equal, row for row, those of a fresh rebuild from the same log.
//!
//! Runs the real binary as a child process against the broker and PostgreSQL of
//! `FM_TEST_KAFKA_BROKERS` / `FM_TEST_DATABASE_URL` (started by `compose/test`).

#![allow(clippy::unwrap_used)] // A test fails loudly on any unexpected error; that is the point.
#![allow(clippy::too_many_lines)] // The story of a booking is long, written out event by event.

use std::{
    collections::BTreeMap,
    process::{Child, Command, Stdio},
    time::Duration,
};

use domain::booking::BookingEvent;
use event_log::{EventProducer, KafkaSettings, consumer};
use schemas::{
    AggregateType, EventEnvelope,
    fixtures::{booking_story, envelope},
};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

/// The whole life of one booking (`schemas::fixtures::booking_story`); every fifth stream also
/// gets a duplicate (a losing writer's record) that must never be applied.
fn story(i: usize) -> Vec<EventEnvelope> {
    let (booking, mut events) = booking_story(i);
    if i.is_multiple_of(5) {
        let failed = BookingEvent::BookingFailed {
            reason: "a losing writer".into(),
        };
        events.push(envelope(
            AggregateType::Booking,
            *booking.as_uuid(),
            2,
            &failed,
        ));
    }
    events
}

fn spawn_projector(database_url: &str, kafka: &KafkaSettings) -> Child {
    Command::new(env!("CARGO_BIN_EXE_projection-service"))
        .env("FM_DATABASE__URL", database_url)
        .envs(test_support::privacy_env())
        .env("FM_KAFKA__BROKERS", &kafka.brokers)
        .env("FM_KAFKA__TOPIC_PREFIX", &kafka.topic_prefix)
        .env("FM_HTTP__PORT", "0")
        .env("FM_PROJECTOR__BATCH_SIZE", "40")
        .env("FM_LOG__FILTER", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// The schema of the first build of this release's read-model version: on a fresh database, the
/// one the projection-service fills.
fn first_build() -> String {
    projection_service::versions::build_schema(projection_service::READ_MODEL.version, 1)
}

/// Waits until the first build of `database_url` has stored the end offset of every partition.
async fn wait_caught_up(pool: &PgPool, kafka: &KafkaSettings) {
    let reader = consumer::manual_consumer(kafka, "kill-nine-test").unwrap();
    let topics = event_log::Topics::new(&kafka.topic_prefix).event_topics();
    let partitions = consumer::partitions(&reader, &topics, kafka).unwrap();
    let ends = consumer::end_offsets(&reader, &partitions, kafka).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_mins(4);
    loop {
        let stored: BTreeMap<(String, i32), i64> =
            sqlx::query_as::<_, (String, i32, i64)>(&format!(
                "SELECT topic, partition, next_offset FROM {}.projection_offsets",
                first_build()
            ))
            .fetch_all(pool)
            .await
            .unwrap_or_default()
            .into_iter()
            .map(|(t, p, o)| ((t, p), o))
            .collect();
        if ends
            .iter()
            .all(|(tp, end)| *end == 0 || stored.get(tp) == Some(end))
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "projector did not catch up: {stored:?} vs {ends:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every row of every table of version 1, ordered by key; bookkeeping times and ids left out.
async fn dump(pool: &PgPool) -> Vec<(String, Vec<Value>)> {
    let tables = [
        ("facilities", "facility_id", ""),
        ("reservations", "facility_id, booking_id", ""),
        ("bookings", "booking_id", ""),
        ("payments", "payment_id", ""),
        ("projection_offsets", "topic, partition", " - 'updated_at'"),
        (
            "projection_anomalies",
            "topic, partition, log_offset",
            " - 'id' - 'detected_at'",
        ),
    ];
    let mut all = Vec::new();
    for (table, key, minus) in tables {
        let sql = format!(
            "SELECT to_jsonb(t){minus} FROM {}.{table} t ORDER BY {key}",
            first_build()
        );
        all.push((
            table.to_owned(),
            sqlx::query_scalar(&sql).fetch_all(pool).await.unwrap(),
        ));
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_models_after_repeated_kill_nine_equal_a_fresh_rebuild() {
    let kafka = test_support::fresh_kafka().await.unwrap();
    let producer = EventProducer::new(&kafka).unwrap();
    let stories = 300;

    // Events keep arriving (paced, for several seconds) while the projector is killed again and
    // again.
    let writer = {
        let producer = producer.clone();
        tokio::spawn(async move {
            for chunk in (0..stories).collect::<Vec<_>>().chunks(5) {
                futures::future::join_all(chunk.iter().map(|i| {
                    let producer = producer.clone();
                    async move {
                        // One story's events in order: same keys land in order on their partition.
                        for event in story(*i) {
                            producer.append(&event).await.unwrap();
                        }
                    }
                }))
                .await;
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        })
    };
    let crashed_url = test_support::fresh_database().await.unwrap();
    let mut kills_under_load = 0;
    while !writer.is_finished() {
        let mut child = spawn_projector(&crashed_url, &kafka);
        let alive_ms = 300 + u64::try_from(Uuid::new_v4().as_u128() % 700).unwrap();
        tokio::time::sleep(Duration::from_millis(alive_ms)).await;
        child.kill().unwrap(); // SIGKILL: no shutdown, no flush, the open transaction is lost.
        child.wait().unwrap();
        kills_under_load += 1;
    }
    writer.await.unwrap();
    assert!(
        kills_under_load >= 6,
        "the projector was killed only {kills_under_load} times under load"
    );

    // Let it finish, then kill it once more for good measure after it caught up.
    let crashed = PgPool::connect(&crashed_url).await.unwrap();
    let mut child = spawn_projector(&crashed_url, &kafka);
    wait_caught_up(&crashed, &kafka).await;
    child.kill().unwrap();
    child.wait().unwrap();

    // A fresh rebuild from the same log, undisturbed.
    let fresh_url = test_support::fresh_database().await.unwrap();
    let fresh = PgPool::connect(&fresh_url).await.unwrap();
    let mut child = spawn_projector(&fresh_url, &kafka);
    wait_caught_up(&fresh, &kafka).await;
    child.kill().unwrap();
    child.wait().unwrap();

    let (crashed_rows, fresh_rows) = (dump(&crashed).await, dump(&fresh).await);
    let count = |rows: &[(String, Vec<Value>)], table: &str| {
        rows.iter()
            .find(|(t, _)| t == table)
            .map_or(0, |(_, r)| r.len())
    };
    assert_eq!(count(&fresh_rows, "facilities"), stories);
    assert_eq!(count(&fresh_rows, "bookings"), stories);
    assert_eq!(count(&fresh_rows, "payments"), stories);
    assert_eq!(
        count(&fresh_rows, "reservations"),
        stories - stories.div_ceil(3)
    );
    for ((table, crashed_table), (_, fresh_table)) in crashed_rows.iter().zip(&fresh_rows) {
        assert_eq!(
            crashed_table.len(),
            fresh_table.len(),
            "{table}: row counts differ"
        );
        for (crashed_row, fresh_row) in crashed_table.iter().zip(fresh_table) {
            assert_eq!(crashed_row, fresh_row, "{table}: rows differ");
        }
    }
    // Duplicates were reported, never applied: every fifth booking is confirmed or cancelled,
    // not failed.
    let failed: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM {}.bookings WHERE status = 'failed'",
        first_build()
    ))
    .fetch_one(&fresh)
    .await
    .unwrap();
    assert_eq!(failed, 0);
}
