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
    /// Replication factor for topics this deployment creates (1 on a single broker).
    pub replication_factor: i32,
    /// How long a produce may take before it is reported as failed.
    #[serde(with = "millis")]
    pub delivery_timeout: Duration,
    /// How long metadata and watermark requests may take.
    #[serde(with = "millis")]
    pub request_timeout: Duration,
    /// How long a consumer's fetch may wait at the broker for new records. A writer reads its
    /// own record back before it answers, so this bounds write latency on brokers that do not
    /// answer a waiting fetch as soon as data arrives.
    #[serde(with = "millis")]
    pub fetch_wait: Duration,
}

impl Default for KafkaSettings {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".to_owned(),
            topic_prefix: "fm".to_owned(),
            partitions: 3,
            replication_factor: 1,
            delivery_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(5),
            fetch_wait: Duration::from_millis(10),
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
