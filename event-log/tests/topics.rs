//! The topics the deployment creates keep every record (the log is the system of record), and
//! every way an existing topic differs from the policy is found.

#![allow(clippy::unwrap_used)] // A test fails loudly on any unexpected error; that is the point.

use std::collections::BTreeMap;

use event_log::{
    KafkaSettings, LogError, Topics,
    topics::{TopicState, ensure_topics, verify_partitions},
};
use rdkafka::{
    ClientConfig,
    admin::{AdminClient, AdminOptions, AlterConfig, ResourceSpecifier},
    client::DefaultClientContext,
};

fn fresh_settings() -> KafkaSettings {
    KafkaSettings {
        brokers: std::env::var("FM_TEST_KAFKA_BROKERS")
            .expect("FM_TEST_KAFKA_BROKERS is not set: run the suite with compose/test"),
        topic_prefix: format!("test-{}", uuid::Uuid::new_v4().simple()),
        ..KafkaSettings::default()
    }
}

fn admin(settings: &KafkaSettings) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", &settings.brokers)
        .create()
        .unwrap()
}

/// Every config of a topic, as the broker describes it.
async fn configs(settings: &KafkaSettings, topic: &str) -> BTreeMap<String, String> {
    let described = admin(settings)
        .describe_configs(&[ResourceSpecifier::Topic(topic)], &AdminOptions::new())
        .await
        .unwrap();
    described
        .into_iter()
        .next()
        .unwrap()
        .unwrap()
        .entries
        .into_iter()
        .map(|entry| (entry.name, entry.value.unwrap_or_default()))
        .collect()
}

#[tokio::test]
async fn created_topics_keep_every_record_and_follow_the_cluster_size() {
    let settings = fresh_settings();
    let report = ensure_topics(&settings, false).await.unwrap();
    let topics = Topics::new(&settings.topic_prefix).all();
    assert_eq!(report.created(), topics);
    // The test broker is a single node: one replica, which must hold every write.
    assert_eq!(report.brokers, 1);
    assert_eq!(report.policy.replication_factor, 1);

    for topic in &topics {
        let config = configs(&settings, topic).await;
        assert_eq!(
            config["retention.ms"], "-1",
            "{topic} must keep records forever"
        );
        assert_eq!(
            config["retention.bytes"], "-1",
            "{topic} must not be capped by size"
        );
        assert_eq!(
            config["cleanup.policy"], "delete",
            "{topic} must not be compacted"
        );
        assert_eq!(config["unclean.leader.election.enable"], "false", "{topic}");
        assert_eq!(config["min.insync.replicas"], "1", "{topic}");
    }

    // Ensuring again is harmless, creates nothing and finds every topic as it should be.
    let again = ensure_topics(&settings, false).await.unwrap();
    assert!(again.created().is_empty());
    assert!(
        again
            .topics
            .iter()
            .all(|(_, state)| *state == TopicState::Conforms),
        "{again:?}"
    );
}

#[tokio::test]
async fn drift_is_reported_and_configs_are_repaired_but_partitions_are_not() {
    let settings = fresh_settings();
    ensure_topics(&settings, false).await.unwrap();
    let booking = Topics::new(&settings.topic_prefix).events(schemas::AggregateType::Booking);

    // An operator (or an old release) shortened retention on one topic.
    let change = AlterConfig::new(ResourceSpecifier::Topic(&booking))
        .set("retention.ms", "604800000")
        .set("cleanup.policy", "delete")
        .set("unclean.leader.election.enable", "false")
        .set("retention.bytes", "-1")
        .set("min.insync.replicas", "1");
    for result in admin(&settings)
        .alter_configs(&[change], &AdminOptions::new())
        .await
        .unwrap()
    {
        result.unwrap();
    }
    for _ in 0..100 {
        if configs(&settings, &booking).await["retention.ms"] == "604800000" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let report = ensure_topics(&settings, false).await.unwrap();
    assert!(report.drifted());
    let drifted: Vec<_> = report
        .topics
        .iter()
        .filter_map(|(topic, state)| match state {
            TopicState::Drifted(drifts) => Some((topic.clone(), drifts.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(drifted.len(), 1, "{drifted:?}");
    assert_eq!(drifted[0].0, booking);
    assert_eq!(drifted[0].1.len(), 1);
    assert_eq!(drifted[0].1[0].setting, "retention.ms");
    assert_eq!(drifted[0].1[0].found, "604800000");

    let repaired = ensure_topics(&settings, true).await.unwrap();
    assert!(!repaired.drifted(), "{repaired:?}");
    // The broker applies an altered config through its metadata log: a moment later.
    let mut retention = String::new();
    for _ in 0..100 {
        retention = configs(&settings, &booking).await["retention.ms"].clone();
        if retention == "-1" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(retention, "-1", "the repair reached the broker");
    assert!(!ensure_topics(&settings, false).await.unwrap().drifted());

    // The deployment now says 4 partitions where the topics have 3: reported, never repaired,
    // and a service refuses to read them.
    let more = KafkaSettings {
        partitions: settings.partitions + 1,
        ..settings.clone()
    };
    let report = ensure_topics(&more, true).await.unwrap();
    assert!(report.drifted());
    assert!(report.topics.iter().all(|(_, state)| matches!(
        state,
        TopicState::Drifted(drifts) if drifts.iter().any(|d| d.setting == "partitions")
    )));
    match verify_partitions(&more).await {
        Err(LogError::PartitionCount {
            topic,
            configured,
            found,
        }) => {
            assert!(settings.partitions == found && configured == found + 1);
            assert!(topic.starts_with(&settings.topic_prefix), "{topic}");
        }
        other => panic!("expected a partition-count refusal, got {other:?}"),
    }
    verify_partitions(&settings).await.unwrap();
}
