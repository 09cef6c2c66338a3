//! The topics the deployment creates keep every record: the log is the system of record.

#![allow(clippy::unwrap_used)] // A test fails loudly on any unexpected error; that is the point.

use event_log::{KafkaSettings, Topics, topics::ensure_topics};
use rdkafka::{
    ClientConfig,
    admin::{AdminClient, AdminOptions, ResourceSpecifier},
    client::DefaultClientContext,
};

#[tokio::test]
async fn created_topics_are_configured_never_to_delete_records() {
    let settings = KafkaSettings {
        brokers: std::env::var("FM_TEST_KAFKA_BROKERS")
            .expect("FM_TEST_KAFKA_BROKERS is not set: run the suite with compose/test"),
        topic_prefix: format!("test-{}", uuid::Uuid::new_v4().simple()),
        ..KafkaSettings::default()
    };
    let created = ensure_topics(&settings).await.unwrap();
    let topics = Topics::new(&settings.topic_prefix).all();
    assert_eq!(created.len(), topics.len());

    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &settings.brokers)
        .create()
        .unwrap();
    let resources: Vec<_> = topics
        .iter()
        .map(|topic| ResourceSpecifier::Topic(topic))
        .collect();
    let described = admin
        .describe_configs(&resources, &AdminOptions::new())
        .await
        .unwrap();
    for (topic, result) in topics.iter().zip(described) {
        let config = result.unwrap();
        let retention = config
            .get("retention.ms")
            .and_then(|entry| entry.value.clone());
        let retention: i64 = retention.as_deref().unwrap_or("-1").parse().unwrap();
        // -1 would be "forever" to Apache Kafka but "already expired" to Tansu, which then
        // deletes every record; anything short of centuries loses the log eventually.
        assert!(
            retention > 100 * 365 * 24 * 60 * 60 * 1000,
            "{topic} keeps records only {retention} ms"
        );
        let policy = config
            .get("cleanup.policy")
            .and_then(|entry| entry.value.clone());
        assert!(
            !policy.unwrap_or_default().contains("compact"),
            "{topic} must not be compacted"
        );
    }

    // Ensuring again is harmless and creates nothing.
    assert!(ensure_topics(&settings).await.unwrap().is_empty());
}
