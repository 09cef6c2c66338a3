//! Topic names and topic creation.

use rdkafka::{
    ClientConfig,
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    types::RDKafkaErrorCode,
};
use schemas::AggregateType;

use crate::{KafkaSettings, LogError};

/// The topic names of one deployment: `<prefix>.<aggregate>.events` and `<prefix>.dead-letter`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    prefix: String,
}

impl Topics {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    /// The topic holding the streams of one aggregate type.
    pub fn events(&self, aggregate: AggregateType) -> String {
        format!("{}.{}.events", self.prefix, aggregate.as_str())
    }

    /// The aggregate type whose events a topic holds, if it is one of ours.
    pub fn aggregate_of(&self, topic: &str) -> Option<AggregateType> {
        AggregateType::ALL
            .into_iter()
            .find(|aggregate| self.events(*aggregate) == topic)
    }

    /// Where records that cannot be decoded or applied go, with the reason in a header.
    pub fn dead_letter(&self) -> String {
        format!("{}.dead-letter", self.prefix)
    }

    /// Every event topic, in a stable order.
    pub fn event_topics(&self) -> Vec<String> {
        AggregateType::ALL
            .into_iter()
            .map(|aggregate| self.events(aggregate))
            .collect()
    }

    /// Every topic this deployment owns.
    pub fn all(&self) -> Vec<String> {
        let mut topics = self.event_topics();
        topics.push(self.dead_letter());
        topics
    }
}

/// `retention.ms` for topics that must keep every record: the log is the system of record.
///
/// Apache Kafka reads `-1` as "forever", but Tansu reads it as an age every record already
/// exceeds and deletes the records within minutes. The largest value both read as a duration
/// keeps records for 292 million years on either. `cleanup.policy` is left at the broker's
/// default (`delete`, not `compact`).
pub const NEVER_DELETE_MS: &str = "9223372036854775807";

/// Creates every topic of the deployment that does not exist yet. Safe to run repeatedly and from
/// several processes at once.
pub async fn ensure_topics(settings: &KafkaSettings) -> Result<Vec<String>, LogError> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &settings.brokers)
        .create()?;
    let names = Topics::new(&settings.topic_prefix).all();
    let new_topics: Vec<NewTopic<'_>> = names
        .iter()
        .map(|name| {
            let topic = NewTopic::new(
                name,
                settings.partitions,
                TopicReplication::Fixed(settings.replication_factor),
            );
            topic.set("retention.ms", NEVER_DELETE_MS)
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(settings.request_timeout));
    let results = admin.create_topics(&new_topics, &options).await?;
    let mut created = Vec::new();
    for result in results {
        match result {
            Ok(name) => created.push(name),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(LogError::Kafka(rdkafka::error::KafkaError::AdminOp(code)))
                    .inspect_err(
                        |_| tracing::error!(topic = %name, %code, "topic creation failed"),
                    );
            }
        }
    }
    Ok(created)
}
