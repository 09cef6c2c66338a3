//! Kafka configuration, part of each service's `Settings`.

use std::time::Duration;

use serde::Deserialize;

/// How to reach the broker and name the topics.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct KafkaSettings {
    /// Comma-separated `host:port` list.
    pub brokers: String,
    /// Prepended to every topic name, so that several deployments (or tests) share a broker.
    pub topic_prefix: String,
    /// Partitions for topics this deployment creates.
    pub partitions: i32,
    /// Replication factor for topics this deployment creates; unset, it follows the cluster:
    /// 3 on three or more brokers, else one per broker (`topics::TopicPolicy`).
    pub replication_factor: Option<i32>,
    /// `min.insync.replicas` of those topics: how many replicas must hold a write before it is
    /// acknowledged. Unset: 2 when the replication factor is 3 or more, else 1.
    pub min_insync_replicas: Option<i32>,
    /// How long a produce may take before it is reported as failed.
    #[serde(with = "millis")]
    pub delivery_timeout: Duration,
    /// How long metadata and watermark requests may take.
    #[serde(with = "millis")]
    pub request_timeout: Duration,
    /// How long a request to one broker may go unanswered before the client drops that
    /// connection and asks the cluster again who leads what (librdkafka's `socket.timeout.ms`;
    /// a fetch may take `fetch_wait` longer). A broker that stops answering without closing its
    /// connections (stalled, cut off, its machine gone) holds the partitions it led in the
    /// clients for this long, even after the cluster has moved their leadership
    /// (docs/reliability.md, "Broker faults").
    #[serde(with = "millis")]
    pub socket_timeout: Duration,
    /// How long a consumer's fetch may wait at the broker for new records. Apache Kafka answers a
    /// waiting fetch as soon as a record arrives, so this costs no latency there (librdkafka's
    /// default); a broker that answers only when the wait expires (Tansu 0.6 did) would add it
    /// to every write, which reads its own record back before it answers.
    #[serde(with = "millis")]
    pub fetch_wait: Duration,
}

impl Default for KafkaSettings {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".to_owned(),
            topic_prefix: "fm".to_owned(),
            partitions: 3,
            replication_factor: None,
            min_insync_replicas: None,
            delivery_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(5),
            socket_timeout: Duration::from_secs(60),
            fetch_wait: Duration::from_millis(500),
        }
    }
}

/// Durations in configuration are whole milliseconds (`FM_KAFKA__DELIVERY_TIMEOUT=10000`).
mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}
