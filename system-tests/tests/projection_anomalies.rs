//! Gaps and duplicates in an aggregate stream are detected and reported (metric, log, and a row
//! in `projection_anomalies` for gaps), never applied; the stream resumes once the missing event
//! arrives.

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

#[tokio::test]
async fn a_gap_or_a_duplicate_is_reported_and_not_applied() {
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
        deceased,
        family_contacts,
        price,
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
        deceased,
        family_contacts,
        price,
    };
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

    // The missing event arrives, then a duplicate of it (a losing writer's record), then 3 again.
    append(&producer, kind, id, 2, &BookingEvent::BookingSlotHeld {}).await;
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

    let metrics = stack
        .http
        .get(format!("{}/metrics", stack.projection_url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let count = |outcome: &str| {
        metrics
            .lines()
            .find(|line| {
                line.starts_with("projection_events_total")
                    && line.contains(&format!("outcome=\"{outcome}\""))
            })
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
    };
    assert_eq!(count("gap"), 1, "{metrics}");
    assert_eq!(count("duplicate"), 1, "{metrics}");
}
