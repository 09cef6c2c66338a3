//! The Kafka adapter every service shares. It speaks plain Kafka protocol (no transactions), so
//! the same code runs against Apache Kafka, a managed Kafka or Redpanda.
//!
//! - [`settings`] — broker address, topic prefix, timeouts.
//! - [`topics`] — topic names (one per aggregate type, plus the dead-letter topic), the settings
//!   every topic must have on a cluster of a given size, their creation and drift checks.
//! - [`producer`] — appending envelopes with the idempotent producer, `acks=all`, key = aggregate
//!   id; every answer is the record's [`LogPosition`].
//! - [`consumer`] — reading topics from given offsets and learning where they end.
//! - [`record`] — one record as a consumer sees it (position, key, bytes, headers).
//! - [`trace`] — the trace context a record carries in its headers.
//! - [`dead_letters`] — writing a record that breaks the contract to the dead-letter topic,
//!   reading a dead letter back, and retrying it on its origin topic.
//! - [`resolution`] — the one rule by which every reader admits or refuses an event, so that
//!   racing writers are resolved the same way everywhere (`docs/consistency.md`).

pub mod consumer;
pub mod dead_letters;
pub mod producer;
pub mod record;
pub mod resolution;
pub mod settings;
pub mod topics;
pub mod trace;

use rdkafka::error::KafkaError;
use schemas::ConsistencyToken;
use thiserror::Error;

pub use producer::EventProducer;
pub use record::Record;
pub use settings::KafkaSettings;
pub use topics::Topics;

/// Where one record sits in the log.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct LogPosition {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

impl From<LogPosition> for ConsistencyToken {
    fn from(position: LogPosition) -> Self {
        Self {
            topic: position.topic,
            partition: position.partition,
            offset: position.offset,
        }
    }
}

/// The log could not do what was asked. Callers treat this as "infrastructure broke", never as
/// a rejection of the command.
#[derive(Debug, Error)]
pub enum LogError {
    #[error("the broker refused or timed out: {0}")]
    Kafka(#[from] KafkaError),
    #[error("could not encode the event: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("topic {0} is not known to the broker")]
    UnknownTopic(String),
    /// An event topic has another partition count than the deployment is configured with:
    /// reading it would break the per-aggregate order (`topics::verify_partitions`).
    #[error(
        "topic {topic} has {found} partitions but FM_KAFKA__PARTITIONS is {configured}: \
         records are placed by key, so the count must never change (docs/operations.md)"
    )]
    PartitionCount {
        topic: String,
        configured: i32,
        found: i32,
    },
    #[error("a blocking call to the broker failed: {0}")]
    Blocking(String),
    /// Topics whose partitions still have no leader after `ensure_topics` waited for them.
    #[error("partitions of {} have no leader yet (is a broker down?)", .0.join(", "))]
    TopicsNotReady(Vec<String>),
}
