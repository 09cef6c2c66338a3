//! Gaps and duplicates in an aggregate stream are detected and reported (metric, log, and a row
//! in `projection_anomalies` for gaps), never applied out of order: a gap parks the aggregate
//! (visible in `/ready`'s detail and `projection_parked_aggregates`) and the event after it
//! waits; once the missing event arrives, it and everything parked behind it are applied in
//! order (docs/evolution.md).

#![allow(clippy::unwrap_used)] // A test fails loudly on any unexpected error; that is the point.

mod read_side_support;

use domain::{booking::BookingEvent, fixtures, values::BookingId};
use event_log::EventProducer;
use read_side_support::append;
use reqwest::StatusCode;
use schemas::{AggregateType, Role};
use serde_json::Value;
use sqlx::PgPool;
use system_tests::TestStack;

/// The projection-service's metrics, and how many records it committed with each outcome.
async fn projected(stack: &TestStack) -> (String, impl Fn(&str) -> u64) {
    let metrics = stack
        .http
        .get(format!("{}/metrics", stack.projection_url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let lines = metrics.clone();
    let count = move |outcome: &str| {
        lines
            .lines()
            .find(|line| {
                line.starts_with("projection_events_total")
                    && line.contains(&format!("outcome=\"{outcome}\""))
            })
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (metrics, count)
}

/// The projection-service's `/ready` and the detail of its `parked` check.
async fn parked_detail(stack: &TestStack) -> (Value, String) {
    let ready: Value = stack
        .http
        .get(format!("{}/ready", stack.projection_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let detail = ready["checks"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|check| check["name"] == "parked")
        .and_then(|check| check["detail"].as_str())
        .unwrap_or_default()
        .to_owned();
    (ready, detail)
}

#[tokio::test]
async fn a_gap_parks_the_aggregate_until_the_missing_event_arrives_and_a_duplicate_is_not_applied()
{
    let stack = TestStack::spawn().await.expect("stack starts");
    let director = stack.token(Role::Director, "director-1").await;
    let producer = EventProducer::new(&stack.kafka).unwrap();
    let pool = PgPool::connect(&stack.database_url).await.unwrap();
    let booking = BookingId::new();
    let id = *booking.as_uuid();
    let BookingEvent::BookingRequested {
        facility_id,
        service_type,
        slot,
        date_of_death,
        personal,
        price,
        statement,
        ..
    } = fixtures::booking_requested()
    else {
        unreachable!()
    };
    let requested = BookingEvent::BookingRequested {
        booking_id: booking,
        facility_id,
        service_type,
        slot,
        date_of_death,
        personal,
        price,
        statement,
    };
    // The booking's facility first: a director sees a booking through its facility's home (here
    // the default home, home A, as the fixture names none; docs/identity.md, "Tenancy").
    append(
        &producer,
        AggregateType::Facility,
        *fixtures::facility_id().as_uuid(),
        1,
        &fixtures::facility_registered(),
    )
    .await;
    let kind = AggregateType::Booking;
    append(&producer, kind, id, 1, &requested).await;
    // Sequence 2 is missing: 3 is a gap.
    let gap = append(&producer, kind, id, 3, &BookingEvent::BookingConfirmed {}).await;
    let read = |token: String| {
        let stack = &stack;
        let director = &director;
        async move {
            let response = stack
                .http
                .get(format!("{}/bookings/{id}", stack.query_url))
                .bearer_auth(director)
                .header("consistency-token", token)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            response.json::<Value>().await.unwrap()
        }
    };
    let view = read(gap.clone()).await;
    assert_eq!(
        (view["status"].as_str(), view["version"].as_i64()),
        (Some("requested"), Some(1))
    );
    let anomalies: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT kind, sequence, expected FROM live.projection_anomalies WHERE aggregate_id = $1",
    )
    .bind(id)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(anomalies, [("gap".to_owned(), 3, 2)]);
    // The booking is parked, and `/ready` says so while staying ready.
    let (ready, detail) = parked_detail(&stack).await;
    assert_eq!(ready["ready"], true, "{ready}");
    assert!(
        detail.contains("1 aggregates parked") && detail.contains(&id.to_string()),
        "{ready}"
    );

    // The missing event arrives: it and the parked 3 are applied, in order. Then a duplicate
    // of 2 (a losing writer's record) and 3 again, neither applied.
    let filled = append(&producer, kind, id, 2, &BookingEvent::BookingSlotHeld {}).await;
    let view = read(filled).await;
    assert_eq!(
        (view["status"].as_str(), view["version"].as_i64()),
        (Some("confirmed"), Some(3))
    );
    append(
        &producer,
        kind,
        id,
        2,
        &BookingEvent::BookingFailed {
            reason: "a losing writer".into(),
        },
    )
    .await;
    let last = append(&producer, kind, id, 3, &BookingEvent::BookingConfirmed {}).await;
    let view = read(last).await;
    assert_eq!(
        (view["status"].as_str(), view["version"].as_i64()),
        (Some("confirmed"), Some(3))
    );

    let (metrics, count) = projected(&stack).await;
    assert_eq!(count("gap"), 1, "{metrics}");
    assert_eq!(count("duplicate"), 2, "{metrics}");
}
