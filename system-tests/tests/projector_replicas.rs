//! Several projection-service replicas on one database: exactly one projects each build (it
//! holds the build's advisory lock); when it stops, another takes over and nothing is lost.

#![allow(clippy::unwrap_used)] // A test fails loudly on any unexpected error; that is the point.

mod read_side_support;

use platform::startup::Service as _;
use std::time::Duration;

use event_log::{EventProducer, KafkaSettings};
use platform::{
    settings::{DatabaseSettings, HttpSettings},
    shutdown::CancellationToken,
};
use read_side_support::{eventually, register_facilities};
use secrecy::SecretString;
use sqlx::PgPool;
use tokio::task::JoinHandle;

async fn replica(kafka: &KafkaSettings, database_url: &str) -> (CancellationToken, JoinHandle<()>) {
    let stop = CancellationToken::new();
    let settings = projection_service::Settings {
        http: HttpSettings::on_port(0),
        kafka: kafka.clone(),
        database: DatabaseSettings {
            url: SecretString::from(database_url.to_owned()),
            ..DatabaseSettings::default()
        },
        privacy: Some(test_support::privacy_settings()),
        ..projection_service::Settings::default()
    };
    let app = projection_service::Application::build(settings, stop.clone())
        .await
        .unwrap();
    let task = tokio::spawn(async move { app.run_until_stopped().await.unwrap() });
    (stop, task)
}

async fn projected(pool: &PgPool, expected: i64) {
    eventually(
        Duration::from_secs(20),
        "the facilities are projected",
        || async {
            // The views appear when the first build switches live.
            let count: i64 = sqlx::query_scalar("SELECT count(*) FROM live.facilities")
                .fetch_one(pool)
                .await
                .unwrap_or_default();
            count == expected
        },
    )
    .await;
}

/// Holders of build 1's lock in this test's database (other tests' databases have their own).
async fn lock_holders(pool: &PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = $1::oid AND objid = 1 AND granted \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .bind(projection_service::versions::BUILD_LOCK)
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_projects_and_another_takes_over_when_it_stops() {
    let kafka = system_tests::fresh_kafka().await.unwrap();
    let database_url = system_tests::fresh_database().await.unwrap();
    let producer = EventProducer::new(&kafka).unwrap();
    let (stop_a, a) = replica(&kafka, &database_url).await;
    let (stop_b, b) = replica(&kafka, &database_url).await;
    let pool = PgPool::connect(&database_url).await.unwrap();

    register_facilities(&producer, 20).await;
    projected(&pool, 20).await;
    assert_eq!(lock_holders(&pool).await, 1, "exactly one replica projects");

    // Stop A, then (with C started) B: whichever was projecting, one of the two stops hands
    // the version over, and every event written after it is still applied.
    stop_a.cancel();
    a.await.unwrap();
    register_facilities(&producer, 20).await;
    projected(&pool, 40).await;
    let (stop_c, c) = replica(&kafka, &database_url).await;
    stop_b.cancel();
    b.await.unwrap();
    register_facilities(&producer, 20).await;
    projected(&pool, 60).await;
    assert_eq!(lock_holders(&pool).await, 1, "exactly one replica projects");
    let anomalies: i64 = sqlx::query_scalar("SELECT count(*) FROM live.projection_anomalies")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(anomalies, 0);
    stop_c.cancel();
    c.await.unwrap();
}
