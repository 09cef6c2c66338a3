//! A lagging replica leaves the load balancer (issue 18 item 4): on the real broker, a
//! command-service whose tailer is held still (the debug-only test hook
//! `CommandSettings::pause_tailer`) while records are written answers `/ready` 503 with a detail
//! saying how many records it is behind, its gauge `command_tailer_lag_records` says the same,
//! and it is ready again once the tailer has caught up.

// The hook that holds the tailer exists in debug builds only.
#![cfg(debug_assertions)]
#![allow(clippy::unwrap_used)] // A test fails loudly on any unexpected error; that is the point.

mod support;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use command_service::{Application, Settings};
use platform::shutdown::CancellationToken;
use reqwest::{Client, StatusCode};
use schemas::Role;
use serde_json::Value;
use support::{facility, fresh_kafka, token};

/// `/ready`'s status and the detail of its `tailer_lag` check.
async fn readiness(client: &Client, url: &str) -> (StatusCode, String) {
    let response = client.get(format!("{url}/ready")).send().await.unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    let detail = body["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|check| check["name"] == "tailer_lag")
        .map(|check| check["detail"].as_str().unwrap_or_default().to_owned())
        .unwrap();
    (status, detail)
}

/// The value of the gauge `command_tailer_lag_records` on `/metrics`.
async fn lag_gauge(client: &Client, url: &str) -> Option<f64> {
    let text = client
        .get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix("command_tailer_lag_records "))
        .and_then(|value| value.trim().parse().ok())
}

/// Polls `/ready` until `want(status, detail)` holds; the last answer.
async fn ready_until(
    client: &Client,
    url: &str,
    want: impl Fn(StatusCode, &str) -> bool,
) -> (StatusCode, String) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, detail) = readiness(client, url).await;
        if want(status, &detail) {
            return (status, detail);
        }
        assert!(
            Instant::now() < deadline,
            "/ready never got there: {status} {detail}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_replica_whose_tailer_lags_is_not_ready_until_it_catches_up() {
    const MAX_LAG: u64 = 5;
    const WRITES: usize = 12;
    let pause = Arc::new(AtomicBool::new(false));
    let mut settings = Settings::with_auth(
        test_support::auth_settings(),
        test_support::key_database(),
        test_support::privacy_settings(),
    );
    settings.http.port = 0;
    settings.kafka = fresh_kafka().await;
    settings.commands.max_tailer_lag = MAX_LAG;
    settings.commands.lag_check_interval = Duration::from_millis(100);
    // The writes below are not read back while the tailer is held: answer them soon.
    settings.commands.outcome_timeout = Duration::from_millis(300);
    settings.commands.pause_tailer = Some(pause.clone());
    let shutdown = CancellationToken::new();
    let url = test_support::spawn_app::<Application>(settings, &shutdown)
        .await
        .unwrap();
    let client = Client::new();
    let director = token(Role::Director, "director-1").await;

    let (_, detail) = ready_until(&client, &url, |status, detail| {
        status == StatusCode::OK && detail.starts_with("0 records")
    })
    .await;
    assert_eq!(detail, "0 records behind the end of the log");

    // The tailer held still; the writes reach the log (each answers 503 when its writer gives
    // up waiting to read it back).
    pause.store(true, Ordering::Release);
    let writes = (0..WRITES).map(|_| {
        client
            .post(format!("{url}/facilities"))
            .bearer_auth(&director)
            .json(&facility())
            .send()
    });
    for response in futures::future::join_all(writes).await {
        assert_eq!(response.unwrap().status(), StatusCode::SERVICE_UNAVAILABLE);
    }
    let (_, detail) = ready_until(&client, &url, |status, detail| {
        status == StatusCode::SERVICE_UNAVAILABLE && detail.starts_with(&format!("{WRITES} "))
    })
    .await;
    assert_eq!(
        detail,
        format!("{WRITES} records behind the end of the log (more than the {MAX_LAG} allowed)")
    );
    #[allow(clippy::cast_precision_loss)]
    let expected = WRITES as f64;
    assert_eq!(lag_gauge(&client, &url).await, Some(expected));

    // Let go: it reads the records, and is ready again.
    pause.store(false, Ordering::Release);
    let (_, detail) = ready_until(&client, &url, |status, _| status == StatusCode::OK).await;
    assert_eq!(detail, "0 records behind the end of the log");
    assert_eq!(lag_gauge(&client, &url).await, Some(0.0));
    shutdown.cancel();
}
