//! A read with a consistency token is woken by the projector's commit, not by a clock: the
//! query-api here re-reads the offsets only every minute on its own and waits at most 30 s, yet
//! a token for a record written while the read waits is answered in far less. Were the
//! projector's notification or the query-api's listener missing (or on different channels),
//! the read would be answered only by the last look at the wait's end, after 30 s.

#![allow(clippy::unwrap_used)] // A test fails loudly on any unexpected error; that is the point.

use std::time::{Duration, Instant};

use platform::{
    settings::{DatabaseSettings, HttpSettings},
    shutdown::CancellationToken,
};
use reqwest::StatusCode;
use schemas::{ConsistencyToken, Role};
use serde_json::{Value, json};
use system_tests::{TestStack, bodies};
use test_support::spawn_app;

/// The slow query-api's longest wait.
const WAIT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn a_token_wait_is_woken_by_the_projectors_commit_not_by_polling() {
    let stack = TestStack::spawn().await.unwrap();
    let director = stack.token(Role::Director, "director-1").await;

    let shutdown = CancellationToken::new();
    let slow_query = start_query_api_that_never_polls(&stack, &shutdown).await;

    let created: Value = stack
        .http
        .post(format!("{}/facilities", stack.command_url))
        .bearer_auth(&director)
        .json(&bodies::facility())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let facility_id = created["facility_id"].as_str().unwrap().to_owned();
    let registered: ConsistencyToken = created["consistency_token"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    // The facility's next record goes to the same partition, at the next offset (nothing else
    // writes to this test's topics).
    let next = ConsistencyToken {
        offset: registered.offset + 1,
        ..registered.clone()
    };

    // Wait until the slow query-api answers at all (its read models exist, its listener is
    // up: a connection wakes every wait once), then start a read for a record not yet written.
    let path = format!("{slow_query}/facilities/{facility_id}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let response = stack
            .http
            .get(&path)
            .bearer_auth(&director)
            .header("consistency-token", registered.to_string())
            .send()
            .await
            .unwrap();
        if response.status() == StatusCode::OK {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the second query-api never answered: {}",
            response.status()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let waiting = {
        let http = stack.http.clone();
        let director = director.clone();
        let next = next.to_string();
        tokio::spawn(async move {
            let started = Instant::now();
            let response = http
                .get(&path)
                .bearer_auth(&director)
                .header("consistency-token", next)
                .send()
                .await
                .unwrap();
            (response.status(), started.elapsed())
        })
    };
    // Sequencing, not an assertion: give the read time to find the offset missing and wait.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let written = change_opening_hours(&stack, &director, &facility_id).await;
    assert_eq!(
        written,
        next.to_string(),
        "the change is the record the read waits for"
    );

    let (status, waited) = waiting.await.unwrap();
    assert_eq!(status, StatusCode::OK, "waited {waited:?}");
    // Without a wake-up the read is answered by its last look at WAIT; projecting one record
    // takes milliseconds, so two thirds of WAIT leave a loaded machine room.
    assert!(
        waited < WAIT * 2 / 3,
        "the read was not woken by the commit: answered after {waited:?} of its {WAIT:?} wait"
    );
    shutdown.cancel();
}

/// A query-api on `stack`'s read models that re-reads offsets only every minute on its own and
/// waits at most [`WAIT`].
async fn start_query_api_that_never_polls(
    stack: &TestStack,
    shutdown: &CancellationToken,
) -> String {
    let mut settings = query_api::Settings::new(
        test_support::auth_settings(),
        DatabaseSettings {
            url: stack.database_url.clone().into(),
            ..DatabaseSettings::default()
        },
    );
    settings.http = HttpSettings::on_port(0);
    settings.consistency.poll_interval = Duration::from_mins(1);
    settings.consistency.max_wait = WAIT;
    settings.http.request_timeout = WAIT * 2;
    spawn_app::<query_api::Application>(settings, shutdown)
        .await
        .unwrap()
}

/// Changes the facility's opening hours (its version 1 to 2); returns the change's token.
async fn change_opening_hours(stack: &TestStack, director: &str, facility_id: &str) -> String {
    let hours: Vec<Value> = ["mon", "tue", "wed", "thu", "fri"]
        .iter()
        .map(|day| json!({"weekday": day, "opens": "09:00", "closes": "17:00"}))
        .collect();
    let changed = stack
        .http
        .put(format!(
            "{}/facilities/{facility_id}/opening-hours",
            stack.command_url
        ))
        .bearer_auth(director)
        .header("if-match", "\"1\"")
        .json(&json!({ "opening_hours": hours }))
        .send()
        .await
        .unwrap();
    assert_eq!(changed.status(), StatusCode::OK);
    let changed: Value = changed.json().await.unwrap();
    changed["consistency_token"].as_str().unwrap().to_owned()
}
