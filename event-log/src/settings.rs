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
    /// How long the producer keeps trying to write a record before it reports it failed
    /// (librdkafka's `message.timeout.ms`). Longer than a leader's failover on a cluster (the
    /// controller moves leadership after the broker session timeout, 9 s, and the clients take
    /// a few seconds more to find the new leader) and than the HTTP request timeout (15 s): a
    /// write that meets a failover is then answered by the HTTP timeout (503, the client
    /// retries with its `Idempotency-Key`) or succeeds, and librdkafka never times out a record
    /// in flight, which makes it bump the idempotent producer's epoch and resend what else was
    /// in flight: that wrote events twice (docs/reliability.md, "Broker faults").
    #[serde(with = "millis")]
    pub delivery_timeout: Duration,
    /// How long metadata and watermark requests may take.
    #[serde(with = "millis")]
    pub request_timeout: Duration,
    /// How long a request to one broker may go unanswered before the client drops that
    /// connection and asks the cluster again who leads what (librdkafka's `socket.timeout.ms`,
    /// 60 s by default; a fetch may take `fetch_wait` longer, and librdkafka wants this at least
    /// 1 s above `fetch_wait`). A broker that stops answering without closing its connections
    /// (stalled, cut off, its machine gone) holds the partitions it led in the clients for this
    /// long, even after the cluster has moved their leadership: with 60 s a broker cut off for
    /// 30 s kept writes to its partitions failing for all of it (docs/reliability.md, "Broker
    /// faults").
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
            delivery_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(5),
            socket_timeout: Duration::from_secs(5),
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::KafkaSettings;

    /// What the chaos soak on three brokers measured (docs/reliability.md, broker findings 2
    /// and 3), held as relations between the defaults: the producer outlasts a leader's
    /// failover (the broker session timeout, 9 s, and the search for the new leader) and the
    /// HTTP request timeout, and a client gives up on a silent broker well before the controller
    /// has fenced it, and not before a fetch may wait.
    #[test]
    fn the_defaults_outlast_a_failover_and_give_up_on_a_silent_broker() {
        let kafka = KafkaSettings::default();
        let http = platform::settings::HttpSettings::default();
        let session_timeout = Duration::from_secs(9);
        assert!(kafka.delivery_timeout > http.request_timeout);
        assert!(kafka.delivery_timeout > 2 * session_timeout);
        assert!(kafka.socket_timeout < session_timeout);
        assert!(kafka.socket_timeout >= kafka.fetch_wait + Duration::from_secs(1));
    }
}
