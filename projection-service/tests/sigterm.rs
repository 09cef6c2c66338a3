//! SIGTERM drains: the projection-service, stopped with SIGTERM while events keep arriving,
//! finishes the batch in hand, stores its offsets with it, says so and exits 0 promptly; started
//! again it goes on from those offsets and the read models end with every event once.
//!
//! Runs the real binary against the broker and PostgreSQL of `FM_TEST_KAFKA_BROKERS` /
//! `FM_TEST_DATABASE_URL` (started by `compose/test`).

#![allow(clippy::unwrap_used)] // A test fails loudly on any unexpected error; that is the point.

use std::{
    io::Read,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use event_log::{EventProducer, KafkaSettings, consumer};
use schemas::fixtures::booking_story;
use sqlx::PgPool;

fn spawn_projector(database_url: &str, kafka: &KafkaSettings) -> Child {
    Command::new(env!("CARGO_BIN_EXE_projection-service"))
        .env("FM_DATABASE__URL", database_url)
        .envs(test_support::privacy_env())
        .env("FM_KAFKA__BROKERS", &kafka.brokers)
        .env("FM_KAFKA__TOPIC_PREFIX", &kafka.topic_prefix)
        .env("FM_HTTP__PORT", "0")
        .env("FM_PROJECTOR__BATCH_SIZE", "40")
        .env("FM_LOG__FILTER", "info")
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// The schema of the first build of this release's read-model version: on a fresh database, the
/// one the projection-service fills.
fn first_build() -> String {
    projection_service::versions::build_schema(projection_service::READ_MODEL.version, 1)
}

/// Records stored as read by the first build, over every partition.
async fn stored(pool: &PgPool) -> i64 {
    sqlx::query_scalar::<_, Option<i64>>(&format!(
        "SELECT sum(next_offset)::BIGINT FROM {}.projection_offsets",
        first_build()
    ))
    .fetch_one(pool)
    .await
    .ok()
    .flatten()
    .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_the_batch_in_hand_stores_offsets_and_exits_zero() {
    let kafka = test_support::fresh_kafka().await.unwrap();
    let producer = EventProducer::new(&kafka).unwrap();
    let stories = 120;
    let writer = {
        let producer = producer.clone();
        tokio::spawn(async move {
            for i in 0..stories {
                for event in booking_story(i).1 {
                    producer.append(&event).await.unwrap();
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let database_url = test_support::fresh_database().await.unwrap();
    let mut child = spawn_projector(&database_url, &kafka);
    // Read the logs as they come, so a full pipe can never block the child.
    let mut stdout = child.stdout.take().unwrap();
    let log_reader = std::thread::spawn(move || {
        let mut logs = String::new();
        stdout.read_to_string(&mut logs).unwrap();
        logs
    });
    let pool = PgPool::connect(&database_url).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_mins(1);
    while stored(&pool).await == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the projector stored nothing within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let signalled = Instant::now();
    let sent = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(15),
            "still running 15 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let logs = log_reader.join().unwrap();
    assert!(status.success(), "exit {status:?}; logs:\n{logs}");
    let requested = logs.find("shutdown requested; draining");
    let stopped = logs.find("projector stopped");
    assert!(
        requested.is_some() && stopped > requested,
        "the drain is not in the logs:\n{logs}"
    );
    let at_exit = stored(&pool).await;
    assert!(at_exit > 0);

    // Started again, it goes on from the stored offsets: every story exactly once.
    writer.await.unwrap();
    let mut child = spawn_projector(&database_url, &kafka);
    let reader = consumer::manual_consumer(&kafka, "sigterm-test").unwrap();
    let topics = event_log::Topics::new(&kafka.topic_prefix).event_topics();
    let partitions = consumer::partitions(&reader, &topics, &kafka).unwrap();
    let end: i64 = consumer::end_offsets(&reader, &partitions, &kafka)
        .unwrap()
        .values()
        .sum();
    let deadline = tokio::time::Instant::now() + Duration::from_mins(2);
    while stored(&pool).await < end {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the restarted projector did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(at_exit <= end);
    let bookings: i64 =
        sqlx::query_scalar(&format!("SELECT count(*) FROM {}.bookings", first_build()))
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(bookings, i64::try_from(stories).unwrap());
    let anomalies: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM {}.projection_anomalies",
        first_build()
    ))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        anomalies, 0,
        "a replayed or skipped event would show as a gap"
    );
}
