//! No personal data in logs: a booking with recognisable names, e-mail address and phone number
//! goes through every service (written, read back, refused when invalid, and a record carrying
//! them dead-lettered), with every log line at `debug` captured; none of them appears.
//!
//! The test owns the process's tracing subscriber (`platform::telemetry::CapturedLogs`).

#![allow(clippy::unwrap_used)] // A test fails loudly on any unexpected error; that is the point.
#![allow(clippy::too_many_lines)] // One story, told in order.

#[path = "observability_support/mod.rs"]
mod support;

use std::time::Duration;

use event_log::{EventProducer, Topics};
use platform::{
    settings::{LogFormat, LogSettings},
    telemetry::{CapturedLogs, Telemetry},
};
use rdkafka::message::OwnedHeaders;
use reqwest::StatusCode;
use schemas::{AggregateType, Role};
use serde_json::{Value, json};
use support::{facility, read_all};
use system_tests::{TestStack, bodies};
use uuid::Uuid;

/// Strings that are personal data in the requests below, and must never be logged.
const DECEASED: &str = "Philippa Quatermass";
const CONTACT: &str = "Zebedee Quackenbush";
const EMAIL: &str = "zebedee.quackenbush@example.org";
const PHONE: &str = "+447700900987";
const BAD_EMAIL: &str = "quackenbush-at-example";
const POISON_EMAIL: &str = "zebedee.poisoned.at.example.org";

#[tokio::test]
async fn a_booking_with_names_email_and_phone_leaves_none_of_them_in_the_logs() {
    let logs = CapturedLogs::default();
    let settings = LogSettings {
        format: LogFormat::Json,
        filter: "debug".to_owned(),
        ..LogSettings::default()
    };
    assert!(
        Telemetry::new(&settings)
            .with_writer(logs.clone())
            .install()
            .unwrap(),
        "the test's subscriber is the process's first"
    );
    let stack = TestStack::spawn().await.unwrap();
    let (facility_id, _) = facility(&stack).await;
    let family = stack.token(Role::Family, "family-pii").await;

    let mut body = bodies::booking(&facility_id, 14);
    body["deceased"]["full_name"] = json!(DECEASED);
    body["family_contacts"] = json!([{
        "name": CONTACT, "relationship": "son", "email": EMAIL, "phone": PHONE,
    }]);
    let response = stack
        .http
        .post(format!("{}/bookings", stack.command_url))
        .bearer_auth(&family)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let booking: Value = response.json().await.unwrap();
    let booking_id = booking["booking_id"].as_str().unwrap();
    let response = stack
        .http
        .get(format!("{}/bookings/{booking_id}", stack.query_url))
        .bearer_auth(&family)
        .header(
            "consistency-token",
            booking["consistency_token"].as_str().unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let read: Value = response.json().await.unwrap();
    assert_eq!(read["family_contacts"][0]["email"], EMAIL, "{read}");

    // Refused at the edge: the problem names the field to the client; the log learns nothing.
    let mut invalid = body.clone();
    invalid["family_contacts"][0]["email"] = json!(BAD_EMAIL);
    let response = stack
        .http
        .post(format!("{}/bookings", stack.command_url))
        .bearer_auth(&family)
        .json(&invalid)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);

    // A record that breaks the contract because of a personal value: every reader refuses it
    // (the command-service's tailer skips it, the projector dead-letters it), and says why.
    let topics = Topics::new(&stack.kafka.topic_prefix);
    let booking_topic = topics.events(AggregateType::Booking);
    let mut poison: Value = serde_json::from_slice(
        &read_all(&stack.kafka, vec![booking_topic.clone()]).await[0].payload,
    )
    .unwrap();
    let poison_id = Uuid::new_v4();
    poison["aggregate_id"] = json!(poison_id);
    poison["event_id"] = json!(Uuid::new_v4());
    poison["data"]["booking_id"] = json!(poison_id);
    // The booking's people are sealed in v2: the personal-looking value goes where a reader
    // still checks a format (the date of death).
    poison["data"]["date_of_death"] = json!(POISON_EMAIL);
    EventProducer::new(&stack.kafka)
        .unwrap()
        .send(
            &booking_topic,
            Some(poison_id.to_string().as_bytes()),
            &serde_json::to_vec(&poison).unwrap(),
            OwnedHeaders::new(),
        )
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let dead_letter = loop {
        let letters = read_all(&stack.kafka, vec![topics.dead_letter()]).await;
        if let Some(letter) = letters.into_iter().next() {
            break letter;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the poison record was not dead-lettered within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // The dead letter names the place and the rule, never the value (docs/privacy.md, "Dead
    // letters"); its bytes are the record's, whose personal data is sealed.
    let reason = &dead_letter.headers["fm-dead-letter-reason"];
    assert!(reason.contains("/date_of_death"), "{reason}");
    assert!(!reason.contains(POISON_EMAIL), "{reason}");
    let bytes = String::from_utf8_lossy(&dead_letter.payload);
    for personal in [DECEASED, CONTACT, EMAIL, PHONE] {
        assert!(!bytes.contains(personal), "{personal:?} in the dead letter");
    }

    let text = logs.text();
    // The capture saw the paths that handled the data: requests, the projection, both refusals.
    for expected in [
        booking_id,
        "/bookings/{id}",
        "dead-lettering a record",
        "skipping an invalid record",
        "date_of_death",
    ] {
        assert!(
            text.contains(expected),
            "the captured logs lack {expected:?}; did the capture miss a service?"
        );
    }
    for personal in [DECEASED, CONTACT, EMAIL, PHONE, BAD_EMAIL, POISON_EMAIL] {
        let at = text.find(personal);
        assert!(
            at.is_none(),
            "{personal:?} is in the logs: …{}…",
            at.map(|i| &text[i.saturating_sub(300)..(i + 100).min(text.len())])
                .unwrap_or_default()
        );
    }
    // Not even in parts (a logger that escaped or split the value).
    for fragment in ["Quatermass", "Quackenbush", "7700900987"] {
        assert!(!text.contains(fragment), "{fragment:?} is in the logs");
    }
}
