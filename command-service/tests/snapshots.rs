//! Start-up from a snapshot: the service restores its store from the snapshot, reads only the
//! records written after it, and serves exactly the state a full replay would. A snapshot of
//! another deployment, or a damaged one, is refused and the log is replayed instead.

#![allow(clippy::unwrap_used)] // A test fails loudly on any unexpected error; that is the point.

mod support;

use platform::startup::Service as _;
use std::{path::Path, time::Duration};

use command_service::{Application, Settings, startup::StartupReport};
use event_log::KafkaSettings;
use platform::shutdown::CancellationToken;
use reqwest::{Client, StatusCode};
use schemas::Role;
use serde_json::{Value, json};
use support::{booking, facility, fresh_kafka, token};
use tokio::task::JoinHandle;
use uuid::Uuid;

struct Running {
    url: String,
    startup: StartupReport,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Stops the service the way SIGTERM does, and waits for its last snapshot.
    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
    }
}

async fn start(kafka: &KafkaSettings, snapshot: Option<&Path>) -> Running {
    let mut settings = support::settings(kafka);
    settings.commands.snapshot_path = snapshot.map(Path::to_path_buf);
    settings.commands.snapshot_interval = Duration::from_millis(100);
    let shutdown = CancellationToken::new();
    let app = Application::build(settings, shutdown.clone())
        .await
        .unwrap();
    let (url, startup) = (format!("http://127.0.0.1:{}", app.port()), app.startup());
    let task = tokio::spawn(app.run_until_stopped());
    support::wait_ready(&url).await;
    test_support::publish_price_lists(&url).await.unwrap();
    Running {
        url,
        startup,
        shutdown,
        task,
    }
}

async fn post(url: String, token: &str, key: Option<&str>, body: &Value) -> (StatusCode, Value) {
    let mut request = Client::new().post(url).bearer_auth(token).json(body);
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    let response = request.send().await.unwrap();
    (
        response.status(),
        response.json().await.unwrap_or(Value::Null),
    )
}

#[tokio::test]
#[allow(clippy::too_many_lines)] // One story: before, after, restart, damage, elsewhere.
async fn a_restart_from_the_snapshot_reads_only_newer_records_and_serves_the_same_state() {
    let kafka = fresh_kafka().await;
    let directory = std::env::temp_dir().join(format!("fm-snapshot-{}", Uuid::new_v4()));
    let snapshot = directory.join("command-store.json");
    let director = token(Role::Director, "director-1").await;

    // History before the snapshot: a facility and three bookings, one with a retry key.
    let first = start(&kafka, Some(&snapshot)).await;
    let (_, created) = post(
        format!("{}/facilities", first.url),
        &director,
        None,
        &facility(),
    )
    .await;
    let facility_id = created["facility_id"].as_str().unwrap().to_owned();
    let keyed = booking(&facility_id, 12);
    let (status, keyed_answer) = post(
        format!("{}/bookings", first.url),
        &director,
        Some("snap-1"),
        &keyed,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let mut bookings = Vec::new();
    for days in [13, 14] {
        let (_, answer) = post(
            format!("{}/bookings", first.url),
            &director,
            None,
            &booking(&facility_id, days),
        )
        .await;
        bookings.push(answer["booking_id"].as_str().unwrap().to_owned());
    }
    first.stop().await;
    assert!(snapshot.exists(), "a snapshot was written at shutdown");

    // History after it, written by a replica without a snapshot: one booking, one cancel.
    let other = start(&kafka, None).await;
    assert_eq!(
        other.startup,
        StartupReport {
            restored_from_snapshot: false,
            backlog: 4
        }
    );
    post(
        format!("{}/bookings", other.url),
        &director,
        None,
        &booking(&facility_id, 15),
    )
    .await;
    let cancel = format!("{}/bookings/{}/cancel", other.url, bookings[0]);
    let (status, _) = post(cancel, &director, None, &json!({})).await;
    assert_eq!(status, StatusCode::OK);
    other.stop().await;

    // The restart restores the snapshot and reads only the two newer records.
    let restarted = start(&kafka, Some(&snapshot)).await;
    assert_eq!(
        restarted.startup,
        StartupReport {
            restored_from_snapshot: true,
            backlog: 2
        }
    );
    let (status, replay) = post(
        format!("{}/bookings", restarted.url),
        &director,
        Some("snap-1"),
        &keyed,
    )
    .await;
    assert_eq!(
        (status, &replay),
        (StatusCode::ACCEPTED, &keyed_answer),
        "the idempotency index came back"
    );
    let cancel = format!("{}/bookings/{}/cancel", restarted.url, bookings[0]);
    let (status, cancelled) = post(cancel, &director, None, &json!({})).await;
    assert_eq!(
        (status, cancelled["version"].clone()),
        (StatusCode::OK, json!(2)),
        "the newer cancel was read"
    );
    let cancel = format!("{}/bookings/{}/cancel", restarted.url, bookings[1]);
    let (status, cancelled) = post(cancel, &director, None, &json!({})).await;
    assert_eq!(
        (status, cancelled["version"].clone()),
        (StatusCode::OK, json!(2)),
        "the snapshot's booking is live"
    );
    restarted.stop().await;

    // A damaged snapshot is refused: the log is replayed from the start.
    std::fs::write(&snapshot, b"{\"format\": 1, \"topic_prefix\": ").unwrap();
    let after_damage = start(&kafka, Some(&snapshot)).await;
    assert_eq!(
        after_damage.startup,
        StartupReport {
            restored_from_snapshot: false,
            backlog: 7
        }
    );
    after_damage.stop().await;

    // A snapshot of another deployment's topics is refused too.
    let elsewhere = fresh_kafka().await;
    let foreign = start(&elsewhere, Some(&snapshot)).await;
    assert_eq!(
        foreign.startup,
        StartupReport {
            restored_from_snapshot: false,
            backlog: 0
        }
    );
    foreign.stop().await;
    std::fs::remove_dir_all(&directory).unwrap();
}

#[tokio::test]
async fn the_service_refuses_to_start_on_event_topics_with_another_partition_count() {
    let kafka = fresh_kafka().await;
    let mut settings = Settings::with_auth(
        test_support::auth_settings(),
        test_support::key_database(),
        test_support::privacy_settings(),
    );
    settings.http.port = 0;
    settings.kafka = KafkaSettings {
        partitions: kafka.partitions + 1,
        ..kafka.clone()
    };
    let Err(error) = Application::build(settings, CancellationToken::new()).await else {
        panic!("the command-service started on topics with the wrong partition count");
    };
    let message = format!("{error:#}");
    let facility_topic =
        event_log::Topics::new(&kafka.topic_prefix).events(schemas::AggregateType::Facility);
    assert!(
        message.contains(&facility_topic)
            && message.contains(&format!("has {} partitions", kafka.partitions)),
        "{message}"
    );
}

#[tokio::test]
async fn a_snapshot_whose_offsets_lie_past_the_end_of_the_log_is_discarded() {
    let kafka = fresh_kafka().await;
    let directory = std::env::temp_dir().join(format!("fm-snapshot-{}", Uuid::new_v4()));
    let snapshot = directory.join("command-store.json");
    let director = token(Role::Director, "director-1").await;
    let first = start(&kafka, Some(&snapshot)).await;
    let (status, created) = post(
        format!("{}/facilities", first.url),
        &director,
        None,
        &facility(),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let facility_id = created["facility_id"].as_str().unwrap().to_owned();
    first.stop().await;

    // The snapshot claims to have read far past the end of the log (as one of a log that lost
    // records would): it cannot be a cut of this log.
    let mut file: Value = serde_json::from_slice(&std::fs::read(&snapshot).unwrap()).unwrap();
    let positions = file["folded"]["positions"].as_object_mut().unwrap();
    assert_eq!(
        positions.len(),
        1,
        "the facility's partition: {positions:?}"
    );
    for offset in positions.values_mut() {
        *offset = json!(offset.as_i64().unwrap() + 1000);
    }
    std::fs::write(&snapshot, serde_json::to_vec(&file).unwrap()).unwrap();

    let again = start(&kafka, Some(&snapshot)).await;
    assert_eq!(
        again.startup,
        StartupReport {
            restored_from_snapshot: false,
            backlog: 1
        },
        "the snapshot was discarded and the log (one record) replayed"
    );
    let (status, _) = post(
        format!("{}/bookings", again.url),
        &director,
        None,
        &booking(&facility_id, 12),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::ACCEPTED,
        "the replayed log holds the facility"
    );
    again.stop().await;
    std::fs::remove_dir_all(&directory).unwrap();
}
