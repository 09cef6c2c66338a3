//! `/metrics` on every service: the named series exist, and they move when requests, commands
//! and projections happen. The three services run in one process and share its recorder, so
//! each scrape shows all of them; the test scrapes each service to prove each one serves it.

#![allow(clippy::unwrap_used)] // A test fails loudly on any unexpected error; that is the point.
#![allow(clippy::too_many_lines)] // One story, told in order.
#![allow(clippy::float_cmp)] // Counters are whole numbers.

#[path = "observability_support/mod.rs"]
mod support;

use std::time::Duration;

use reqwest::StatusCode;
use schemas::Role;
use serde_json::Value;
use support::{Scrape, facility, scrape};
use system_tests::{TestStack, bodies};

/// Polls the projection-service's `/metrics` until `done` holds, or fails after 30 s.
async fn eventually(stack: &TestStack, what: &str, done: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let now = scrape(&stack.http, &stack.projection_url).await;
        if done(&now) {
            return now;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} within 30 s; last scrape:\n{}",
            now.text
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn every_service_serves_metrics_that_move_with_requests_commands_and_projections() {
    let stack = TestStack::spawn().await.unwrap();
    let director = stack.token(Role::Director, "director-1").await;
    let (facility_id, _) = facility(&stack).await;

    // The projector samples its lag as soon as it runs: one series per partition of every event
    // topic, whatever happened before.
    let partitions = usize::try_from(stack.kafka.partitions).unwrap() * 4;
    let before = eventually(&stack, "a lag sample of every partition", |s| {
        s.label_sets("projection_lag_records").len() == partitions
    })
    .await;
    for base in [&stack.command_url, &stack.query_url] {
        let own = scrape(&stack.http, base).await;
        assert!(own.has("http_requests_total", &[]), "{base}: {}", own.text);
    }
    let posts = |s: &Scrape, status: &str| {
        s.sum(
            "http_requests_total",
            &[
                ("method", "POST"),
                ("route", "/bookings"),
                ("status", status),
            ],
        )
    };
    let outcome = |s: &Scrape, command: &str, outcome: &str| {
        s.sum(
            "commands_total",
            &[("command", command), ("outcome", outcome)],
        )
    };
    let applied = |s: &Scrape| s.sum("projection_events_total", &[("outcome", "applied")]);

    // A booking, an invalid booking, a cancel, the same cancel again (nothing left to change),
    // and a read that waits for the projection.
    let response = stack
        .http
        .post(format!("{}/bookings", stack.command_url))
        .bearer_auth(&director)
        .json(&bodies::booking(&facility_id, 14))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let booking: Value = response.json().await.unwrap();
    let booking_id = booking["booking_id"].as_str().unwrap().to_owned();
    let mut invalid = bodies::booking(&facility_id, 15);
    invalid["add_ons"] = serde_json::json!(["Not A Code"]);
    let response = stack
        .http
        .post(format!("{}/bookings", stack.command_url))
        .bearer_auth(&director)
        .json(&invalid)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let mut token = String::new();
    for _ in 0..2 {
        let response = stack
            .http
            .post(format!(
                "{}/bookings/{booking_id}/cancel",
                stack.command_url
            ))
            .bearer_auth(&director)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = response.json().await.unwrap();
        token = body["consistency_token"].as_str().unwrap().to_owned();
    }
    let response = stack
        .http
        .get(format!("{}/bookings/{booking_id}", stack.query_url))
        .bearer_auth(&director)
        .header("consistency-token", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    let after = eventually(&stack, "the projector applies the two events", |s| {
        applied(s) >= applied(&before) + 2.0
    })
    .await;

    // HTTP: rate, errors and duration by route template; the booking id is in no label.
    assert_eq!(posts(&after, "202"), posts(&before, "202") + 1.0);
    assert_eq!(posts(&after, "422"), posts(&before, "422") + 1.0);
    let cancels = &[
        ("method", "POST"),
        ("route", "/bookings/{id}/cancel"),
        ("status", "200"),
    ];
    assert_eq!(
        after.sum("http_request_duration_seconds_count", cancels),
        before.sum("http_request_duration_seconds_count", cancels) + 2.0
    );
    assert!(after.sum("http_request_duration_seconds_sum", cancels) > 0.0);
    let reads = &[("method", "GET"), ("route", "/bookings/{id}")];
    assert_eq!(
        after.sum("http_requests_total", reads),
        before.sum("http_requests_total", reads) + 1.0
    );
    assert!(
        !after.text.contains(&booking_id),
        "a raw id leaked into a label: {}",
        after.text
    );

    // Commands: outcome by command name; append latency.
    assert_eq!(
        outcome(&after, "request_booking", "accepted"),
        outcome(&before, "request_booking", "accepted") + 1.0
    );
    assert_eq!(
        outcome(&after, "request_booking", "invalid"),
        outcome(&before, "request_booking", "invalid") + 1.0
    );
    assert_eq!(
        outcome(&after, "cancel_booking", "accepted"),
        outcome(&before, "cancel_booking", "accepted") + 1.0
    );
    assert_eq!(
        outcome(&after, "cancel_booking", "no_op"),
        outcome(&before, "cancel_booking", "no_op") + 1.0
    );
    let admitted = &[("aggregate", "booking"), ("admission", "admitted")];
    assert_eq!(
        after.sum("command_append_seconds_count", admitted),
        before.sum("command_append_seconds_count", admitted) + 2.0
    );
    let acknowledged = &[("aggregate", "booking"), ("result", "ok")];
    assert_eq!(
        after.sum("event_append_seconds_count", acknowledged),
        before.sum("event_append_seconds_count", acknowledged) + 2.0
    );

    // Projection: events applied, batches committed, lag back to nothing once applied.
    assert!(
        after.sum("projection_batches_total", &[("result", "committed")])
            > before.sum("projection_batches_total", &[("result", "committed")])
    );
    assert!(after.sum("projection_batch_seconds_count", &[]) > 0.0);
    for anomaly in ["duplicate", "gap", "dead_lettered"] {
        assert_eq!(
            after.sum("projection_events_total", &[("outcome", anomaly)]),
            0.0,
            "{anomaly}"
        );
    }
    eventually(&stack, "the lag falls back to 0", |s| {
        s.label_sets("projection_lag_records").len() == partitions
            && s.sum("projection_lag_records", &[]) == 0.0
    })
    .await;

    // Query: the read waited for its token and caught up.
    let waits = &[("result", "caught_up")];
    assert_eq!(
        after.sum("query_consistency_waits_total", waits),
        before.sum("query_consistency_waits_total", waits) + 1.0
    );
}

#[test]
fn labels_with_braces_commas_and_escapes_parse() {
    let scrape = Scrape::parse(
        "# TYPE x counter\nx{route=\"/a/{id},b\",q=\"say \\\"hi\\\"\"} 3\nx{route=\"/c\"} 4\ny 1.5\n",
    );
    assert_eq!(scrape.sum("x", &[("route", "/a/{id},b")]), 3.0);
    assert_eq!(scrape.sum("x", &[("q", "say \"hi\"")]), 3.0);
    assert_eq!(scrape.sum("x", &[]), 7.0);
    assert_eq!(scrape.sum("y", &[]), 1.5);
    assert!(!scrape.has("z", &[]));
}
