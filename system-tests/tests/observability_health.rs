//! `/ready` goes false while a dependency is gone and comes back on its own when it returns,
//! with nothing lost. Each test stops and restarts a server of its own (`PrivatePostgres`,
//! `PrivateBroker`), never the shared test servers; the services are not restarted.

#![allow(clippy::unwrap_used)] // A test fails loudly on any unexpected error; that is the point.
#![allow(clippy::too_many_lines)] // One story, told in order.

#[path = "observability_support/mod.rs"]
mod support;

use std::time::Duration;

use event_log::{KafkaSettings, Topics};
use platform::{
    settings::{DatabaseSettings, HttpSettings},
    shutdown::CancellationToken,
};
use reqwest::StatusCode;
use schemas::Role;
use secrecy::SecretString;
use serde_json::Value;
use sqlx::{Connection, PgConnection};
use support::{read_all, scrape};
use system_tests::{
    bodies,
    private::{PrivateBroker, PrivatePostgres},
};
use uuid::Uuid;

/// The three services on `kafka` and `database_url`, in this process.
struct Services {
    command: String,
    query: String,
    projection: String,
    http: reqwest::Client,
    shutdown: CancellationToken,
}

impl Drop for Services {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A director's token for the stack.
async fn director() -> String {
    test_support::token(Role::Director, "director-1").await
}

impl Services {
    async fn spawn(kafka: &KafkaSettings, database_url: &str) -> Self {
        let shutdown = CancellationToken::new();
        let database = DatabaseSettings {
            url: SecretString::from(database_url.to_owned()),
            // Short, so that a query against a stopped server fails fast rather than hanging
            // until the probe's own deadline.
            acquire_timeout: Duration::from_secs(2),
            ..DatabaseSettings::default()
        };
        let mut projection = projection_service::Settings {
            http: HttpSettings::on_port(0),
            kafka: kafka.clone(),
            database: database.clone(),
            privacy: Some(test_support::privacy_settings()),
            ..projection_service::Settings::default()
        };
        projection.projector.lag_interval = Duration::from_millis(200);
        let projection_url =
            test_support::spawn_app::<projection_service::Application>(projection, &shutdown)
                .await
                .unwrap();
        let mut command = command_service::Settings::with_auth(
            test_support::auth_settings(),
            test_support::key_database(),
            test_support::privacy_settings(),
        );
        command.http = HttpSettings::on_port(0);
        command.kafka = kafka.clone();
        let command_url =
            test_support::spawn_app::<command_service::Application>(command, &shutdown)
                .await
                .unwrap();
        let mut query = query_api::Settings::new(test_support::auth_settings(), database);
        query.http = HttpSettings::on_port(0);
        let query_url = test_support::spawn_app::<query_api::Application>(query, &shutdown)
            .await
            .unwrap();
        let services = Self {
            command: command_url,
            query: query_url,
            projection: projection_url,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
            shutdown,
        };
        for base in [&services.command, &services.query, &services.projection] {
            services.wait_ready(base, true, "starts").await;
        }
        services
    }

    /// `/ready`'s status and body.
    async fn ready(&self, base: &str) -> (StatusCode, Value) {
        let response = self.http.get(format!("{base}/ready")).send().await.unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or_default())
    }

    /// Waits until `base`'s `/ready` says `ready`; returns the last body.
    async fn wait_ready(&self, base: &str, ready: bool, why: &str) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_mins(1);
        loop {
            let (status, body) = self.ready(base).await;
            let wanted = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            if status == wanted {
                return body;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{base}/ready is still {status} 60 s after it {why}: {body}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn facility(&self) -> String {
        let response = self
            .http
            .post(format!("{}/facilities", self.command))
            .bearer_auth(director().await)
            .json(&bodies::facility())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        let body: Value = response.json().await.unwrap();
        body["facility_id"].as_str().unwrap().to_owned()
    }

    /// Requests a booking; returns its id and consistency token.
    async fn book(&self, facility_id: &str, days_ahead: i64) -> (String, String) {
        let response = self
            .http
            .post(format!("{}/bookings", self.command))
            .bearer_auth(director().await)
            .json(&bodies::booking(facility_id, days_ahead))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        let body: Value = response.json().await.unwrap();
        (
            body["booking_id"].as_str().unwrap().to_owned(),
            body["consistency_token"].as_str().unwrap().to_owned(),
        )
    }

    /// Reads a booking once the read models have its token's position.
    async fn read(&self, booking_id: &str, token: &str) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_mins(1);
        loop {
            let response = self
                .http
                .get(format!("{}/bookings/{booking_id}", self.query))
                .bearer_auth(director().await)
                .header("consistency-token", token)
                .send()
                .await
                .unwrap();
            if response.status() == StatusCode::OK {
                return response.json().await.unwrap();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "booking {booking_id} not readable 60 s on: {}",
                response.status()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn lag(&self) -> f64 {
        scrape(&self.http, &self.projection)
            .await
            .sum("projection_lag_records", &[])
    }
}

fn failed_checks(body: &Value) -> Vec<String> {
    body["checks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|check| check["ok"] == false)
        .map(|check| check["name"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_fails_while_postgres_is_stopped_and_recovers_on_its_own_with_no_event_lost() {
    let postgres = tokio::task::block_in_place(PrivatePostgres::start);
    let mut admin = PgConnection::connect(&postgres.url("postgres"))
        .await
        .unwrap();
    sqlx::query("CREATE DATABASE funeral_manager")
        .execute(&mut admin)
        .await
        .unwrap();
    drop(admin);
    let kafka = system_tests::fresh_kafka().await.unwrap();
    let services = Services::spawn(&kafka, &postgres.url("funeral_manager")).await;
    let facility_id = services.facility().await;
    let (first, token) = services.book(&facility_id, 10).await;
    assert_eq!(services.read(&first, &token).await["status"], "requested");

    tokio::task::block_in_place(|| postgres.stop());
    for base in [&services.projection, &services.query] {
        let body = services.wait_ready(base, false, "PostgreSQL stopped").await;
        assert!(
            failed_checks(&body).contains(&"postgres".to_owned()),
            "{base}: {body}"
        );
    }
    // The command-service has no database: it goes on taking writes into the log.
    assert_eq!(services.ready(&services.command).await.0, StatusCode::OK);
    let mut written = Vec::new();
    for day in 11..21 {
        written.push(services.book(&facility_id, day).await);
    }
    // Nothing can be projected: the lag grows to the ten new events and the service stays
    // not ready all along.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while services.lag().await < 10.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the lag did not reach 10 while PostgreSQL was down"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for base in [&services.projection, &services.query] {
        assert_eq!(
            services.ready(base).await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }

    tokio::task::block_in_place(|| postgres.start_again());
    for base in [&services.projection, &services.query] {
        let body = services
            .wait_ready(base, true, "PostgreSQL restarted")
            .await;
        assert_eq!(body["ready"], true);
    }
    // Every event written during the outage is projected, and the lag is gone.
    for (booking, token) in &written {
        let read = services.read(booking, token).await;
        assert_eq!(read["status"], "requested", "{read}");
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while services.lag().await != 0.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the lag did not fall back to 0"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut db = PgConnection::connect(&postgres.url("funeral_manager"))
        .await
        .unwrap();
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM live.bookings")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(rows, 11);
    let anomalies: i64 = sqlx::query_scalar("SELECT count(*) FROM live.projection_anomalies")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(anomalies, 0);
    let dead_letters = read_all(&kafka, vec![Topics::new(&kafka.topic_prefix).dead_letter()]).await;
    assert!(dead_letters.is_empty(), "{dead_letters:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_fails_while_the_broker_is_stopped_and_recovers_on_its_own_with_no_event_lost() {
    let mut broker = tokio::task::block_in_place(PrivateBroker::start);
    let kafka = KafkaSettings {
        brokers: broker.address(),
        topic_prefix: format!("health-{}", Uuid::new_v4().simple()),
        ..KafkaSettings::default()
    };
    event_log::topics::ensure_topics(&kafka, false)
        .await
        .unwrap();
    let database_url = system_tests::fresh_database().await.unwrap();
    let services = Services::spawn(&kafka, &database_url).await;
    let facility_id = services.facility().await;
    let (first, token) = services.book(&facility_id, 10).await;
    assert_eq!(services.read(&first, &token).await["status"], "requested");

    tokio::task::block_in_place(|| broker.stop());
    for base in [&services.projection, &services.command] {
        let body = services.wait_ready(base, false, "the broker stopped").await;
        assert!(
            failed_checks(&body).contains(&"kafka".to_owned()),
            "{base}: {body}"
        );
    }
    // The query-api reads PostgreSQL only: it stays ready and answers, from what it has.
    assert_eq!(services.ready(&services.query).await.0, StatusCode::OK);
    assert_eq!(services.read(&first, &token).await["status"], "requested");

    tokio::task::block_in_place(|| broker.start_again());
    for base in [&services.projection, &services.command] {
        services
            .wait_ready(base, true, "the broker restarted")
            .await;
    }
    // The log survived the restart, and both sides of it work again: a new write is accepted,
    // read back by the command-service and projected.
    let (second, token) = services.book(&facility_id, 11).await;
    assert_eq!(services.read(&second, &token).await["status"], "requested");
    let records = read_all(
        &kafka,
        vec![Topics::new(&kafka.topic_prefix).events(schemas::AggregateType::Booking)],
    )
    .await;
    assert_eq!(records.len(), 2, "both bookings are in the log once each");
}
