//! Reading topics from chosen offsets, and learning where they end.

use std::collections::BTreeMap;

use rdkafka::{ClientConfig, Offset, TopicPartitionList, consumer::Consumer};

pub use rdkafka::consumer::StreamConsumer;

use crate::{KafkaSettings, LogError};

/// A `(topic, partition)` pair.
pub type TopicPartition = (String, i32);

/// A consumer that reads partitions it is explicitly given, and never commits offsets to the
/// broker: whoever uses it keeps its own position (in memory, or in Postgres beside the read
/// model), so the position can never run ahead of the effect.
pub fn manual_consumer(
    settings: &KafkaSettings,
    client_id: &str,
) -> Result<StreamConsumer, LogError> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &settings.brokers)
        .set("client.id", client_id)
        // librdkafka wants a group id even for manual assignment; nothing is committed to it.
        .set("group.id", format!("{client_id}-manual"))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set(
            "fetch.wait.max.ms",
            settings.fetch_wait.as_millis().to_string(),
        )
        .set(
            "socket.timeout.ms",
            settings.socket_timeout.as_millis().to_string(),
        )
        .create()?;
    Ok(consumer)
}

/// The partitions of each topic, as the broker reports them.
pub fn partitions(
    consumer: &StreamConsumer,
    topics: &[String],
    settings: &KafkaSettings,
) -> Result<Vec<TopicPartition>, LogError> {
    let mut all = Vec::new();
    for topic in topics {
        let metadata = consumer.fetch_metadata(Some(topic), settings.request_timeout)?;
        let found = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
            .filter(|t| !t.partitions().is_empty())
            .ok_or_else(|| LogError::UnknownTopic(topic.clone()))?;
        all.extend(found.partitions().iter().map(|p| (topic.clone(), p.id())));
    }
    Ok(all)
}

/// Assigns the given partitions, each starting at its offset (the next record to read).
pub fn assign(
    consumer: &StreamConsumer,
    positions: &BTreeMap<TopicPartition, i64>,
) -> Result<(), LogError> {
    let mut list = TopicPartitionList::new();
    for ((topic, partition), offset) in positions {
        list.add_partition_offset(topic, *partition, Offset::Offset(*offset))?;
    }
    consumer.assign(&list)?;
    Ok(())
}

/// The end of each partition: the offset the next record written will get.
pub fn end_offsets(
    consumer: &StreamConsumer,
    partitions: &[TopicPartition],
    settings: &KafkaSettings,
) -> Result<BTreeMap<TopicPartition, i64>, LogError> {
    Ok(watermarks(consumer, partitions, settings)?
        .into_iter()
        .map(|(partition, (_low, high))| (partition, high))
        .collect())
}

/// The low and high watermarks of each partition: the first offset still held, and the offset
/// the next record written will get (`high - low` records are held).
///
/// A partition whose leadership is moving answers "not leader" for a moment: a new topic's
/// partitions just after their leaders were chosen, any partition during a broker's restart or
/// a leader election. Such answers are retried (with the metadata refreshed by librdkafka) for
/// up to six request timeouts before the error is returned.
pub fn watermarks(
    consumer: &StreamConsumer,
    partitions: &[TopicPartition],
    settings: &KafkaSettings,
) -> Result<BTreeMap<TopicPartition, (i64, i64)>, LogError> {
    let deadline = std::time::Instant::now() + settings.request_timeout * 6;
    partitions
        .iter()
        .map(|(topic, partition)| loop {
            match consumer.fetch_watermarks(topic, *partition, settings.request_timeout) {
                Ok(marks) => return Ok(((topic.clone(), *partition), marks)),
                Err(error)
                    if leadership_moving(&error) && std::time::Instant::now() < deadline =>
                {
                    tracing::debug!(%topic, partition, %error, "watermarks not yet answered; retrying");
                    std::thread::sleep(std::time::Duration::from_millis(200));
                }
                Err(error) => return Err(error.into()),
            }
        })
        .collect()
}

/// Whether a broker's error means "ask again in a moment": leadership is moving or not yet
/// known, or the request timed out.
fn leadership_moving(error: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as Code;
    matches!(
        error.rdkafka_error_code(),
        Some(
            Code::NotLeaderForPartition
                | Code::LeaderNotAvailable
                | Code::NotCoordinator
                | Code::RequestTimedOut
                | Code::OperationTimedOut
                | Code::FencedLeaderEpoch
                | Code::UnknownLeaderEpoch
                | Code::OffsetNotAvailable
        )
    )
}
