//! Poison messages don't stop the world: records that cannot be decoded or break their schema go
//! to the dead-letter topic with the reason and their origin, and later good events are applied.

#![allow(clippy::unwrap_used)] // A test fails loudly on any unexpected error; that is the point.

use std::time::Duration;

use event_log::{EventProducer, consumer, producer::headers};
use futures::StreamExt;
use rdkafka::{
    Message,
    message::{Headers, OwnedHeaders},
};
use reqwest::StatusCode;
use schemas::{AggregateType, ConsistencyToken, Role};
use serde_json::{Value, json};
use system_tests::{TestStack, bodies};
use uuid::Uuid;

fn header(message: &rdkafka::message::BorrowedMessage<'_>, name: &str) -> String {
    let headers = message.headers().expect("dead letters carry headers");
    headers
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .map_or_else(
            || panic!("header {name} missing"),
            |v| String::from_utf8_lossy(v).into_owned(),
        )
}

#[tokio::test]
#[allow(clippy::too_many_lines)] // One story: poison in, good events after, dead letters out.
async fn poison_records_are_dead_lettered_with_a_reason_and_the_projector_goes_on() {
    let stack = TestStack::spawn().await.expect("stack starts");
    let producer = EventProducer::new(&stack.kafka).unwrap();
    let topic = producer.topics().events(AggregateType::Facility);
    let key = Uuid::new_v4().to_string();

    let valid_shape = json!({
        "event_id": Uuid::new_v4(), "event_type": "FacilityRegistered", "event_version": 1,
        "aggregate_type": "facility", "aggregate_id": Uuid::new_v4(), "sequence": 1,
        "occurred_at": "2027-01-05T09:30:00Z", "correlation_id": Uuid::new_v4(),
        "causation_id": Uuid::new_v4(), "actor": {"subject": "d", "role": "director"},
        "data": {"facility_id": Uuid::new_v4(), "name": "Chapel"}
    });
    // An event type this release does not know is not poison: a later release may have written
    // it. It parks its aggregate instead (docs/evolution.md) and is never dead-lettered.
    let mut unknown_type = valid_shape.clone();
    unknown_type["event_type"] = json!("FacilityDemolished");
    unknown_type["aggregate_id"] = json!(Uuid::new_v4());
    let unknown = serde_json::to_vec(&unknown_type).unwrap();
    let poison: [(Vec<u8>, &str); 2] = [
        (b"\xff\xfe not json".to_vec(), "not a JSON document"),
        (serde_json::to_vec(&valid_shape).unwrap(), "payload invalid"),
    ];
    let mut poison_partition = None;
    let mut last_poison_offset = 0;
    for payload in poison.iter().map(|(payload, _)| payload).chain([&unknown]) {
        let position = producer
            .send(&topic, Some(key.as_bytes()), payload, OwnedHeaders::new())
            .await
            .unwrap();
        poison_partition = Some(position.partition);
        last_poison_offset = position.offset;
    }
    let poison_partition = poison_partition.unwrap();

    // Register facilities until one lands after the poison on the same partition, and read it
    // back through the query-api: the projector went past the poison.
    let director = stack.token(Role::Director, "director-1").await;
    let mut proved = false;
    for _ in 0..40 {
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
        let token: ConsistencyToken = created["consistency_token"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        if token.partition == poison_partition && token.offset > last_poison_offset {
            let response = stack
                .http
                .get(format!(
                    "{}/facilities/{}",
                    stack.query_url,
                    created["facility_id"].as_str().unwrap()
                ))
                .bearer_auth(&director)
                .header("consistency-token", token.to_string())
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            proved = true;
            break;
        }
    }
    assert!(
        proved,
        "no facility landed after the poison on its partition"
    );

    // The dead-letter topic holds the three records, each with its reason and origin.
    let reader = consumer::manual_consumer(&stack.kafka, "dead-letter-test").unwrap();
    let dead_letter_topic = producer.topics().dead_letter();
    let partitions = consumer::partitions(&reader, &[dead_letter_topic], &stack.kafka).unwrap();
    consumer::assign(&reader, &partitions.into_iter().map(|tp| (tp, 0)).collect()).unwrap();
    let mut stream = reader.stream();
    let mut reasons = Vec::new();
    while reasons.len() < poison.len() {
        let message = tokio::time::timeout(Duration::from_secs(20), stream.next())
            .await
            .expect("dead letters arrive")
            .unwrap()
            .unwrap();
        assert_eq!(header(&message, headers::ORIGIN_TOPIC), topic);
        assert_eq!(
            header(&message, headers::ORIGIN_PARTITION),
            poison_partition.to_string()
        );
        assert_eq!(message.key(), Some(key.as_bytes()));
        let offset: i64 = header(&message, headers::ORIGIN_OFFSET).parse().unwrap();
        reasons.push((
            offset,
            header(&message, headers::DEAD_LETTER_REASON),
            message.payload().unwrap().to_vec(),
        ));
    }
    // And nothing more: the unknown event type was parked, not dead-lettered.
    assert!(
        tokio::time::timeout(Duration::from_secs(3), stream.next())
            .await
            .is_err(),
        "only the poison is dead-lettered"
    );
    let ready: Value = stack
        .http
        .get(format!("{}/ready", stack.projection_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let parked = ready["checks"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|check| check["name"] == "parked")
        .and_then(|check| check["detail"].as_str())
        .unwrap_or_default()
        .to_owned();
    assert!(
        parked.contains("1 aggregates parked")
            && parked.contains(unknown_type["aggregate_id"].as_str().unwrap())
            && parked.contains("FacilityDemolished v1"),
        "{ready}"
    );
    reasons.sort_by_key(|(offset, _, _)| *offset);
    for ((_, reason, payload), (original, expected)) in reasons.iter().zip(&poison) {
        assert!(
            reason.contains(expected),
            "reason {reason:?} should mention {expected:?}"
        );
        assert_eq!(
            payload, original,
            "the dead letter keeps the original bytes"
        );
    }
}
