//! The producer after a fatal error of librdkafka's idempotent producer, on librdkafka's own mock
//! cluster (no broker needed): the write that meets the error fails, and the next one goes
//! through on a new producer. Without that, every later write of the process failed
//! (docs/reliability.md, broker finding 5: a command-service answered 503 to every write for
//! minutes after two brokers had been down).

use std::time::Duration;

use event_log::{EventProducer, KafkaSettings};
use rdkafka::{
    message::OwnedHeaders,
    mocking::MockCluster,
    types::{RDKafkaApiKey, RDKafkaErrorCode, RDKafkaRespErr},
};

const TOPIC: &str = "fm.booking.events";

#[tokio::test]
async fn a_fatal_error_of_the_idempotent_producer_costs_one_write_not_all_later_ones() {
    let cluster = MockCluster::new(1).expect("a mock cluster");
    cluster.create_topic(TOPIC, 1, 1).expect("a topic");
    let settings = KafkaSettings {
        brokers: cluster.bootstrap_servers(),
        delivery_timeout: Duration::from_secs(10),
        ..KafkaSettings::default()
    };
    let producer = EventProducer::new(&settings).expect("a producer");
    let send = |n: u8| {
        let producer = producer.clone();
        async move {
            producer
                .send(TOPIC, Some(b"key"), &[n], OwnedHeaders::new())
                .await
        }
    };
    send(1).await.expect("the first write goes through");

    // The head-of-line request answered "out of order sequence": librdkafka can no longer
    // guarantee the order and raises a fatal error (rdkafka_request.c, "sequence
    // desynchronization"), after which that producer refuses every record.
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER],
    );
    let failed = send(2)
        .await
        .expect_err("the write that meets the error fails");
    assert!(
        format!("{failed}").contains("Out of order sequence")
            || matches!(
                failed,
                event_log::LogError::Kafka(rdkafka::error::KafkaError::MessageProduction(
                    RDKafkaErrorCode::OutOfOrderSequenceNumber | RDKafkaErrorCode::Fatal
                ))
            ),
        "{failed:?}"
    );

    for n in 3..6 {
        let landed = send(n)
            .await
            .expect("later writes go through on a new producer");
        assert_eq!(landed.topic, TOPIC);
    }
}
