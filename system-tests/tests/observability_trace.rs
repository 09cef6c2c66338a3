//! One booking's events across topics carry one trace id and the right causation chain, and the
//! projection of each event continues the trace of the request that appended it.
//!
//! The client (here: the test, standing in for a family's app and for the saga) sends
//! `traceparent` and `Correlation-Id` with each command, and the saga's `Causation-Id` names the
//! event it reacts to. The test owns the process's tracing subscriber and keeps every finished
//! span (`platform::telemetry::CapturedSpans`).

#![allow(clippy::unwrap_used)] // A test fails loudly on any unexpected error; that is the point.
#![allow(clippy::too_many_lines)] // One story, told in order.

#[path = "observability_support/mod.rs"]
mod support;

use std::time::Duration;

use event_log::Topics;
use platform::{
    settings::LogSettings,
    telemetry::{CapturedSpans, FinishedSpan, Telemetry},
};
use reqwest::StatusCode;
use schemas::{AggregateType, Role};
use serde_json::{Value, json};
use support::{LoggedRecord, facility, read_all};
use system_tests::{TestStack, bodies};
use uuid::Uuid;

fn hex(bytes: usize) -> String {
    Uuid::new_v4().simple().to_string()[..bytes * 2].to_owned()
}

/// (trace id, parent span id) of a `traceparent`.
fn ids(traceparent: &str) -> (String, String) {
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    (parts[1].to_owned(), parts[2].to_owned())
}

async fn post(
    stack: &TestStack,
    path: &str,
    token: &str,
    headers: &[(&str, String)],
    body: Option<&Value>,
) -> reqwest::Response {
    let mut request = stack
        .http
        .post(format!("{}{path}", stack.command_url))
        .bearer_auth(token);
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    if let Some(body) = body {
        request = request.json(body);
    }
    request.send().await.unwrap()
}

/// Waits until the span capture holds one `name` span with `parent` as its parent.
async fn child_of(spans: &CapturedSpans, name: &str, parent: &str) -> FinishedSpan {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(span) = spans
            .spans()
            .into_iter()
            .find(|s| s.name == name && s.parent_span_id == parent)
        {
            return span;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {name} span under {parent} within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The ancestors of `span` as far as the capture knows them, nearest first.
fn ancestors(spans: &[FinishedSpan], span: &FinishedSpan) -> Vec<FinishedSpan> {
    let mut chain = Vec::new();
    let mut parent = span.parent_span_id.clone();
    while let Some(next) = spans.iter().find(|s| s.span_id == parent) {
        chain.push(next.clone());
        parent = next.parent_span_id.clone();
    }
    chain
}

#[tokio::test]
async fn one_bookings_events_across_topics_carry_one_trace_id_and_the_right_causation_chain() {
    let spans = CapturedSpans::default();
    assert!(
        Telemetry::new(&LogSettings::default())
            .with_writer(std::io::sink)
            .with_captured_spans(&spans)
            .install()
            .unwrap(),
        "the test's subscriber is the process's first"
    );
    let stack = TestStack::spawn().await.unwrap();
    let (facility_id, _) = facility(&stack).await;
    let family = stack.token(Role::Family, "family-7").await;
    let saga = stack.token(Role::System, "booking-saga").await;

    let trace = hex(16);
    let correlation = Uuid::new_v4();
    let (request_span, reserve_span, cancel_span) = (hex(8), hex(8), hex(8));
    let flow = |span: &str| {
        vec![
            ("traceparent", format!("00-{trace}-{span}-01")),
            ("Correlation-Id", correlation.to_string()),
        ]
    };

    // 1. The family asks for the booking.
    let booking_body = bodies::booking(&facility_id, 14);
    let response = post(
        &stack,
        "/bookings",
        &family,
        &flow(&request_span),
        Some(&booking_body),
    )
    .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let booking: Value = response.json().await.unwrap();
    let booking_id: Uuid = booking["booking_id"].as_str().unwrap().parse().unwrap();
    let topics = Topics::new(&stack.kafka.topic_prefix);
    let booking_topic = topics.events(AggregateType::Booking);
    let facility_topic = topics.events(AggregateType::Facility);
    let requested_event = read_all(&stack.kafka, vec![booking_topic.clone()])
        .await
        .into_iter()
        .find(|r| r.envelope.as_ref().unwrap().aggregate_id == booking_id)
        .unwrap()
        .envelope
        .unwrap();

    // 2. The saga, reacting to BookingRequested, holds the slot: its command names the event.
    let mut headers = flow(&reserve_span);
    headers.push(("Causation-Id", requested_event.event_id.to_string()));
    let response = post(
        &stack,
        &format!("/facilities/{facility_id}/reservations"),
        &saga,
        &headers,
        Some(&json!({"booking_id": booking_id, "slot": booking_body["slot"]})),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);

    // 3. The family cancels.
    let response = post(
        &stack,
        &format!("/bookings/{booking_id}/cancel"),
        &family,
        &flow(&cancel_span),
        None,
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let cancelled: Value = response.json().await.unwrap();

    // A booking by another client that names no flow: it starts its own.
    let response = post(
        &stack,
        "/bookings",
        &family,
        &[],
        Some(&bodies::booking(&facility_id, 20)),
    )
    .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let other: Value = response.json().await.unwrap();
    let other_id: Uuid = other["booking_id"].as_str().unwrap().parse().unwrap();

    let records = read_all(&stack.kafka, vec![booking_topic, facility_topic]).await;
    let of = |event_type: &str, aggregate: Uuid| -> LoggedRecord {
        records
            .iter()
            .find(|r| {
                r.envelope.as_ref().is_some_and(|e| {
                    e.event_type == event_type
                        && (e.aggregate_id == aggregate
                            || e.data["booking_id"] == json!(aggregate.to_string()))
                })
            })
            .unwrap_or_else(|| panic!("no {event_type} of {aggregate}"))
            .clone()
    };
    let requested = of("BookingRequested", booking_id);
    let reserved = of("SlotReserved", booking_id);
    let cancelled_record = of("BookingCancelled", booking_id);
    assert_eq!(reserved.topic, topics.events(AggregateType::Facility));

    // One trace and one correlation id across both topics.
    for (record, client_span) in [
        (&requested, &request_span),
        (&reserved, &reserve_span),
        (&cancelled_record, &cancel_span),
    ] {
        let envelope = record.envelope.as_ref().unwrap();
        let (trace_id, parent) = ids(&record.headers["traceparent"]);
        assert_eq!(trace_id, trace, "{}", envelope.event_type);
        // The record names the service's own span that appended it, inside the client's trace.
        assert_ne!(&parent, client_span);
        assert_eq!(envelope.correlation_id, correlation);
        assert_eq!(record.headers["fm-correlation-id"], correlation.to_string());
        assert_eq!(
            record.headers["fm-causation-id"],
            envelope.causation_id.to_string()
        );
    }

    // The causation chain: each client command caused its own event; the saga's command was
    // caused by the event it reacted to.
    let causation = |r: &LoggedRecord| r.envelope.as_ref().unwrap().causation_id;
    let event_ids: Vec<Uuid> = records
        .iter()
        .filter_map(|r| r.envelope.as_ref().map(|e| e.event_id))
        .collect();
    for command_caused in [&requested, &cancelled_record] {
        let id = causation(command_caused);
        assert_ne!(id, correlation, "a command of the flow is not the flow");
        assert!(
            !event_ids.contains(&id),
            "caused by a command, not an event"
        );
    }
    assert_ne!(causation(&requested), causation(&cancelled_record));
    assert_eq!(causation(&reserved), requested_event.event_id);
    assert_eq!(
        cancelled["version"], 2,
        "the cancel appended the booking's second event"
    );

    // The booking that named no flow: its command started one, in a trace of its own.
    let own = of("BookingRequested", other_id);
    let own_envelope = own.envelope.as_ref().unwrap();
    assert_eq!(own_envelope.correlation_id, own_envelope.causation_id);
    assert_ne!(ids(&own.headers["traceparent"]).0, trace);

    // Spans: each request span continues its client's span, and each record's projection
    // continues the span named in the record's traceparent.
    for (client_span, route) in [
        (&request_span, "/bookings"),
        (&reserve_span, "/facilities/{id}/reservations"),
        (&cancel_span, "/bookings/{id}/cancel"),
    ] {
        let span = child_of(&spans, "http_request", client_span).await;
        assert_eq!(span.trace_id, trace);
        assert_eq!(span.attribute("route"), Some(route));
    }
    for record in [&requested, &reserved, &cancelled_record] {
        let (_, appended_by) = ids(&record.headers["traceparent"]);
        let projected = child_of(&spans, "project_event", &appended_by).await;
        assert_eq!(projected.trace_id, trace);
        assert_eq!(projected.attribute("trace_id"), Some(trace.as_str()));
        let all = spans.spans();
        let appender = all.iter().find(|s| s.span_id == appended_by).unwrap();
        let chain = ancestors(&all, appender);
        assert!(
            chain.iter().any(|s| s.name == "http_request"),
            "the appending span descends from a request: {chain:?}"
        );
    }
}

#[tokio::test]
async fn malformed_flow_headers_are_refused_naming_the_header_and_a_malformed_traceparent_is_ignored()
 {
    let stack = TestStack::spawn().await.unwrap();
    let (facility_id, _) = facility(&stack).await;
    let family = stack.token(Role::Family, "family-8").await;
    let body = bodies::booking(&facility_id, 14);
    for header in ["Correlation-Id", "Causation-Id"] {
        for bad in ["not-a-uuid", "00000000-0000-0000-0000-000000000000", ""] {
            let response = post(
                &stack,
                "/bookings",
                &family,
                &[(header, bad.to_owned())],
                Some(&body),
            )
            .await;
            assert_eq!(
                response.status(),
                StatusCode::UNPROCESSABLE_ENTITY,
                "{header}: {bad:?}"
            );
            let problem: Value = response.json().await.unwrap();
            assert_eq!(problem["errors"][0]["field"], header, "{problem}");
        }
    }
    // Nothing was appended by the refused requests.
    let topics = Topics::new(&stack.kafka.topic_prefix);
    let booking_topic = topics.events(AggregateType::Booking);
    assert!(
        read_all(&stack.kafka, vec![booking_topic.clone()])
            .await
            .is_empty()
    );

    // A proxy's broken traceparent does not fail the request (W3C: start a new trace).
    let response = post(
        &stack,
        "/bookings",
        &family,
        &[("traceparent", "00-abc-def-01".to_owned())],
        Some(&body),
    )
    .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
}
