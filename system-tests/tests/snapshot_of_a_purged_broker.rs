//! A snapshot belongs to one log. The broker's data is purged (a new cluster with the same
//! topics, empty), the command-service restarts with the snapshot it wrote before: it must
//! discard the snapshot and replay the new, empty log, so a booking on a facility that exists
//! only in the old log gets 404, not 202 (issue: "a snapshot belongs to one log").

#![allow(clippy::unwrap_used)] // A test fails loudly on any unexpected error; that is the point.

use platform::startup::Service as _;
use std::{path::Path, time::Duration};

use command_service::{Application, Settings, startup::StartupReport};
use event_log::KafkaSettings;
use platform::shutdown::CancellationToken;
use reqwest::StatusCode;
use schemas::Role;
use serde_json::Value;
use system_tests::bodies;
use system_tests::private::PrivateBroker;
use uuid::Uuid;

struct Running {
    url: String,
    startup: StartupReport,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn start(kafka: &KafkaSettings, snapshot: &Path) -> Running {
    let mut settings = Settings::with_auth(
        test_support::auth_settings(),
        test_support::key_database(),
        test_support::privacy_settings(),
    );
    settings.http.port = 0;
    settings.kafka = kafka.clone();
    settings.commands.snapshot_path = Some(snapshot.to_path_buf());
    let shutdown = CancellationToken::new();
    let app = Application::build(settings, shutdown.clone())
        .await
        .unwrap();
    let (url, startup) = (format!("http://127.0.0.1:{}", app.port()), app.startup());
    let task = tokio::spawn(app.run_until_stopped());
    // Generous: on a loaded 2-core machine a fresh broker and a replay can take a while.
    for _ in 0..2400 {
        let ready = reqwest::get(format!("{url}/ready")).await;
        if ready.is_ok_and(|r| r.status().is_success()) {
            return Running {
                url,
                startup,
                shutdown,
                task,
            };
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("command-service did not become ready");
}

async fn post(url: &str, body: &Value) -> (StatusCode, Value) {
    let token = test_support::token(Role::Director, "director-1").await;
    let response = reqwest::Client::new()
        .post(url)
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .unwrap();
    (
        response.status(),
        response.json().await.unwrap_or(Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_of_a_purged_broker_is_discarded_and_the_new_log_replayed() {
    let mut broker = tokio::task::block_in_place(PrivateBroker::start);
    let kafka = KafkaSettings {
        brokers: broker.address(),
        topic_prefix: format!("purge-{}", Uuid::new_v4().simple()),
        ..KafkaSettings::default()
    };
    event_log::topics::ensure_topics(&kafka, false)
        .await
        .unwrap();
    let directory = std::env::temp_dir().join(format!("fm-purge-{}", Uuid::new_v4().simple()));
    let snapshot = directory.join("snapshot.json");

    let before = start(&kafka, &snapshot).await;
    let (status, created) = post(&format!("{}/facilities", before.url), &bodies::facility()).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let facility_id = created["facility_id"].as_str().unwrap().to_owned();
    let (status, _) = post(
        &format!("{}/bookings", before.url),
        &bodies::booking(&facility_id, 10),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    before.shutdown.cancel();
    before.task.await.unwrap().unwrap();
    assert!(snapshot.exists(), "a snapshot was written at shutdown");

    // Only the broker's data goes: same address, same topic names, a new cluster.
    tokio::task::block_in_place(|| broker.purge());
    event_log::topics::ensure_topics(&kafka, false)
        .await
        .unwrap();

    let after = start(&kafka, &snapshot).await;
    assert_eq!(
        after.startup,
        StartupReport {
            restored_from_snapshot: false,
            backlog: 0
        },
        "the snapshot of the purged cluster was discarded"
    );
    let (status, problem) = post(
        &format!("{}/bookings", after.url),
        &bodies::booking(&facility_id, 11),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "the facility is not in the new log: {problem}"
    );
    after.shutdown.cancel();
    after.task.await.unwrap().unwrap();
    std::fs::remove_dir_all(&directory).unwrap();
}
