//! What the command-service's tests share: a service started in the test process, fresh topics
//! on the test broker, tokens, bodies, and reading the whole log back to check what was
//! admitted.

#![allow(dead_code, clippy::unwrap_used)] // Each test binary uses a different part of this.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{Duration as Days, NaiveTime, TimeZone, Utc};
use command_service::{Application, Settings};
use event_log::{KafkaSettings, consumer};
use futures::StreamExt;
use platform::shutdown::CancellationToken;
use rdkafka::Message;
use schemas::{EventEnvelope, Role, SchemaRegistry};
use serde_json::{Value, json};
use uuid::Uuid;

/// A command-service running in the test process; stopped when dropped.
pub(crate) struct Service {
    pub(crate) url: String,
    shutdown: CancellationToken,
}

impl Drop for Service {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The test stack's settings: the test provider, the shared key database, `kafka`, any free
/// port.
pub(crate) fn settings(kafka: &KafkaSettings) -> Settings {
    let mut settings = Settings::with_auth(
        test_support::auth_settings(),
        test_support::key_database(),
        test_support::privacy_settings(),
    );
    settings.http.port = 0;
    settings.kafka = kafka.clone();
    settings
}

/// Starts a command-service with `settings` and waits until it is ready.
pub(crate) async fn start(settings: Settings) -> Service {
    let shutdown = CancellationToken::new();
    let url = test_support::spawn_app::<Application>(settings, &shutdown)
        .await
        .unwrap();
    wait_ready(&url).await;
    Service { url, shutdown }
}

/// [`start`], then the local realm's homes publish the test price list (a home without one
/// takes no booking: docs/pricing.md). Publishing again changes nothing, and a test must not
/// depend on another test having published first in the shared database.
pub(crate) async fn start_to_book(settings: Settings) -> Service {
    let service = start(settings).await;
    test_support::publish_price_lists(&service.url)
        .await
        .unwrap();
    service
}

/// Waits until the service at `url` answers `/ready` with 200 (at most 15 s).
pub(crate) async fn wait_ready(url: &str) {
    let client = reqwest::Client::new();
    for _ in 0..300 {
        let ready = client.get(format!("{url}/ready")).send().await;
        if ready.is_ok_and(|r| r.status().is_success()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the command-service at {url} did not become ready");
}

/// Kafka settings with topics of this test's own (`test_support::fresh_kafka`).
pub(crate) async fn fresh_kafka() -> KafkaSettings {
    test_support::fresh_kafka().await.unwrap()
}

/// A token of the test provider (`test_support::token`).
pub(crate) async fn token(role: Role, subject: &str) -> String {
    test_support::token(role, subject).await
}

/// A London chapel open 08:00–20:00 every day, 30-minute turnaround.
pub(crate) fn facility() -> Value {
    let hours: Vec<Value> = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
        .iter()
        .map(|day| json!({"weekday": day, "opens": "08:00", "closes": "20:00"}))
        .collect();
    json!({"name": "St Mary's Chapel", "kind": "chapel", "capacity": 120,
           "time_zone": "Europe/London", "opening_hours": hours, "turnaround_minutes": 30})
}

/// `{"start", "end"}` on the London day `days_ahead` from now, `hour`:`minute` for `minutes`.
pub(crate) fn slot(days_ahead: i64, hour: u32, minute: u32, minutes: i64) -> Value {
    let day = (Utc::now() + Days::days(days_ahead)).date_naive();
    let start = chrono_tz::Europe::London
        .from_local_datetime(&day.and_time(NaiveTime::from_hms_opt(hour, minute, 0).unwrap()))
        .single()
        .unwrap();
    let end = start + Days::minutes(minutes);
    json!({"start": start.to_rfc3339(), "end": end.to_rfc3339()})
}

/// A valid booking request for `facility_id`, one hour at 10:00 in `days_ahead` days.
pub(crate) fn booking(facility_id: &str, days_ahead: i64) -> Value {
    let death = (Utc::now() - Days::days(2)).date_naive();
    json!({
        "facility_id": facility_id,
        "service_type": "burial",
        "slot": slot(days_ahead, 10, 0, 60),
        "deceased": {"full_name": "Ada Lovelace", "date_of_death": death.to_string()},
        "family_contacts": [{"name": "Byron King", "relationship": "son",
                             "email": "byron@example.org", "phone": "+447700900123"}],
    })
}

/// Every record of every event topic, as validated envelopes with their positions.
pub(crate) async fn read_log(
    kafka: &KafkaSettings,
) -> Vec<(event_log::LogPosition, EventEnvelope)> {
    // After heavy load the broker may answer metadata requests slowly.
    let kafka = &KafkaSettings {
        request_timeout: Duration::from_secs(30),
        ..kafka.clone()
    };
    let registry = SchemaRegistry::load().unwrap();
    let reader =
        consumer::manual_consumer(kafka, &format!("log-reader-{}", Uuid::new_v4())).unwrap();
    let topics = event_log::Topics::new(&kafka.topic_prefix).event_topics();
    let partitions = consumer::partitions(&reader, &topics, kafka).unwrap();
    let ends = consumer::end_offsets(&reader, &partitions, kafka).unwrap();
    let mut remaining: BTreeMap<_, _> = ends.into_iter().filter(|(_, end)| *end > 0).collect();
    consumer::assign(&reader, &partitions.into_iter().map(|tp| (tp, 0)).collect()).unwrap();
    let mut records = Vec::new();
    let mut stream = reader.stream();
    let mut seen: BTreeMap<(String, i32), i64> = BTreeMap::new();
    while !remaining.is_empty() {
        let Ok(message) = tokio::time::timeout(Duration::from_secs(30), stream.next()).await else {
            panic!(
                "the log stopped short of its end: still waiting for {remaining:?}, last offsets read {seen:?}"
            );
        };
        let message = message.unwrap().unwrap();
        let key = (message.topic().to_owned(), message.partition());
        seen.insert(key.clone(), message.offset());
        if remaining
            .get(&key)
            .is_some_and(|end| message.offset() + 1 >= *end)
        {
            remaining.remove(&key);
        }
        let position = event_log::LogPosition {
            topic: key.0,
            partition: key.1,
            offset: message.offset(),
        };
        records.push((
            position,
            registry.validate_bytes(message.payload().unwrap()).unwrap(),
        ));
    }
    records
}

/// The end offset of every partition of every event topic: a write changes at least one.
pub(crate) async fn log_ends(kafka: &KafkaSettings) -> BTreeMap<(String, i32), i64> {
    let kafka = kafka.clone();
    // Metadata and watermark requests block; keep them off the runtime the service runs on.
    tokio::task::spawn_blocking(move || {
        let reader = consumer::manual_consumer(&kafka, "log-ends").unwrap();
        let topics = event_log::Topics::new(&kafka.topic_prefix).event_topics();
        let partitions = consumer::partitions(&reader, &topics, &kafka).unwrap();
        consumer::end_offsets(&reader, &partitions, &kafka).unwrap()
    })
    .await
    .unwrap()
}
