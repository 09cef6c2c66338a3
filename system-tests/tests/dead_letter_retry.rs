//! Retrying a dead letter: it goes back to its origin topic with the same key and bytes; if its
//! cause has gone it is applied, and if not it is dead-lettered again with the new position.

#![allow(clippy::unwrap_used)] // A test fails loudly on any unexpected error; that is the point.

mod read_side_support;

use std::time::Duration;

use event_log::{
    EventProducer, consumer,
    dead_letters::{self, DeadLetterError},
    producer::headers,
};
use futures::StreamExt;
use rdkafka::{
    Message,
    message::{Header, Headers, OwnedHeaders},
};
use read_side_support::{envelope, facility_registered};
use reqwest::StatusCode;
use schemas::{AggregateType, ConsistencyToken, Role};
use system_tests::TestStack;
use uuid::Uuid;

/// Reads the dead-letter topic from the start until `count` records with `key` are found;
/// returns (partition, offset, origin offset, reason) of each.
async fn dead_letters_with_key(
    stack: &TestStack,
    key: &str,
    count: usize,
) -> Vec<(i32, i64, i64, String)> {
    let reader = consumer::manual_consumer(&stack.kafka, "dead-letter-retry-test").unwrap();
    let topic = event_log::Topics::new(&stack.kafka.topic_prefix).dead_letter();
    let partitions = consumer::partitions(&reader, &[topic], &stack.kafka).unwrap();
    consumer::assign(&reader, &partitions.into_iter().map(|tp| (tp, 0)).collect()).unwrap();
    let mut stream = reader.stream();
    let mut found = Vec::new();
    while found.len() < count {
        let message = tokio::time::timeout(Duration::from_secs(20), stream.next())
            .await
            .expect("dead letters arrive")
            .unwrap()
            .unwrap();
        if message.key() != Some(key.as_bytes()) {
            continue;
        }
        let header = |name: &str| {
            message
                .headers()
                .unwrap()
                .iter()
                .find(|h| h.key == name)
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap()
        };
        found.push((
            message.partition(),
            message.offset(),
            header(headers::ORIGIN_OFFSET).parse().unwrap(),
            header(headers::DEAD_LETTER_REASON),
        ));
    }
    found.sort_by_key(|(_, _, origin, _)| *origin);
    found
}

#[tokio::test]
async fn a_retried_dead_letter_is_applied_once_its_cause_is_gone_and_dead_lettered_again_if_not() {
    let stack = TestStack::spawn().await.expect("stack starts");
    let producer = EventProducer::new(&stack.kafka).unwrap();
    let topics = producer.topics().clone();
    let facility_topic = topics.events(AggregateType::Facility);

    // 1. Garbage is dead-lettered by the projector; retried, it is dead-lettered again, and the
    //    second dead letter names the retried record as its origin.
    let garbage_key = Uuid::new_v4().to_string();
    let poisoned = producer
        .send(
            &facility_topic,
            Some(garbage_key.as_bytes()),
            b"{\"not\": \"an envelope\"}",
            OwnedHeaders::new(),
        )
        .await
        .unwrap();
    let first = dead_letters_with_key(&stack, &garbage_key, 1).await;
    assert_eq!(first[0].2, poisoned.offset);
    let (letter, landed) = dead_letters::retry(&stack.kafka, first[0].0, first[0].1)
        .await
        .unwrap();
    assert_eq!(letter.origin, poisoned);
    assert_eq!(landed.topic, facility_topic);
    assert_eq!(
        landed.partition, poisoned.partition,
        "same key, same partition"
    );
    let both = dead_letters_with_key(&stack, &garbage_key, 2).await;
    assert_eq!(both[1].2, landed.offset);
    assert!(both[1].3.contains("envelope invalid"), "{}", both[1].3);

    // 2. A valid registration that an older projector dead-lettered (as if it had not known the
    //    event yet): retried, it is applied and readable with the retry's consistency token.
    let facility_id = Uuid::new_v4();
    let event = envelope(
        AggregateType::Facility,
        facility_id,
        1,
        &facility_registered(facility_id),
    );
    let key = facility_id.to_string();
    let dead = producer
        .send(
            &topics.dead_letter(),
            Some(key.as_bytes()),
            &serde_json::to_vec(&event).unwrap(),
            OwnedHeaders::new()
                .insert(Header {
                    key: headers::DEAD_LETTER_REASON,
                    value: Some("unknown event type FacilityRegistered v1"),
                })
                .insert(Header {
                    key: headers::ORIGIN_TOPIC,
                    value: Some(facility_topic.as_str()),
                })
                .insert(Header {
                    key: headers::ORIGIN_PARTITION,
                    value: Some("0"),
                })
                .insert(Header {
                    key: headers::ORIGIN_OFFSET,
                    value: Some("0"),
                }),
        )
        .await
        .unwrap();
    let (_, landed) = dead_letters::retry(&stack.kafka, dead.partition, dead.offset)
        .await
        .unwrap();
    let director = stack.token(Role::Director, "director-1").await;
    let response = stack
        .http
        .get(format!("{}/facilities/{facility_id}", stack.query_url))
        .bearer_auth(&director)
        .header(
            "consistency-token",
            ConsistencyToken::from(landed).to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    // 3. Offsets that hold no dead letter are refused, saying what the partition holds.
    let missing = dead_letters::retry(&stack.kafka, dead.partition, dead.offset + 1000).await;
    assert!(
        matches!(missing, Err(DeadLetterError::NotFound { .. })),
        "{missing:?}"
    );
}
