//! Dead letters: writing one, reading one back, and retrying it on its origin topic.
//!
//! A reader that meets a record it cannot use (it breaks the contract, or passes the schemas but
//! does not decode into a domain event) dead-letters it with [`write`]: its original key and
//! bytes and five headers, the reason, the reader and the origin (topic, partition, offset),
//! plus the flow and trace headers it carried. Every reader with a position of its own (the
//! projector, the saga runner) does so for itself, so one bad record may have one dead letter
//! per reader, each naming who refused it and why. Retrying appends the same key and bytes to
//! the origin topic, where every reader meets it again as a new record, with a header naming the
//! dead letter it came from. If it still breaks the contract it is dead-lettered again, with the
//! new reason; if its cause has gone (a reader that learned a new event type, a repaired
//! payload), it is applied. Its sequence decides as for any record: a retried event whose
//! aggregate has moved on is a duplicate, and is reported, not applied.

use std::time::Duration;

use futures::StreamExt;
use rdkafka::{
    Message,
    message::{Header, Headers, OwnedHeaders},
};
use thiserror::Error;

use crate::{
    EventProducer, KafkaSettings, LogError, LogPosition, Record, Topics, consumer,
    producer::headers,
};

/// Header on a retried record: the dead letter it came from, `topic:partition:offset`.
pub const RETRY_OF: &str = "fm-retry-of";

/// A dead letter, as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Where the dead letter itself sits.
    pub position: LogPosition,
    pub reason: String,
    /// The reader that refused the record, if the dead letter says (older ones do not).
    pub reader: Option<String>,
    /// Where the record was when it was dead-lettered.
    pub origin: LogPosition,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
}

/// Why a dead letter could not be read or retried.
#[derive(Debug, Error)]
pub enum DeadLetterError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(
        "no record at offset {offset} of partition {partition} of {topic} (it holds {low}..{high})"
    )]
    NotFound {
        topic: String,
        partition: i32,
        offset: i64,
        low: i64,
        high: i64,
    },
    #[error("the record at {0:?} is not a dead letter: header {1} is missing or not valid")]
    NotADeadLetter(LogPosition, &'static str),
    #[error("the dead letter's origin {0} is not an event topic of this deployment")]
    ForeignOrigin(String),
    #[error("the broker did not deliver the record within {0:?}")]
    Timeout(Duration),
}

/// Sends `record` to the deployment's dead-letter topic with `reason`, the `reader` that refused
/// it and its origin, keeping its key and bytes, and the correlation, causation and trace
/// headers it carried (so a retried dead letter is still part of its booking's history and
/// trace). Returns where it landed.
pub async fn write(
    producer: &EventProducer,
    record: &Record<'_>,
    reader: &str,
    reason: &str,
) -> Result<LogPosition, LogError> {
    let origin = record.position();
    let partition = origin.partition.to_string();
    let offset = origin.offset.to_string();
    let mut record_headers = OwnedHeaders::new()
        .insert(Header {
            key: headers::DEAD_LETTER_REASON,
            value: Some(reason),
        })
        .insert(Header {
            key: headers::DEAD_LETTER_READER,
            value: Some(reader),
        })
        .insert(Header {
            key: headers::ORIGIN_TOPIC,
            value: Some(origin.topic.as_str()),
        })
        .insert(Header {
            key: headers::ORIGIN_PARTITION,
            value: Some(partition.as_str()),
        })
        .insert(Header {
            key: headers::ORIGIN_OFFSET,
            value: Some(offset.as_str()),
        });
    for name in [
        headers::CORRELATION_ID,
        headers::CAUSATION_ID,
        headers::TRACEPARENT,
    ] {
        if let Some(value) = record.header(name) {
            record_headers = record_headers.insert(Header {
                key: name,
                value: Some(value),
            });
        }
    }
    producer
        .send(
            &producer.topics().dead_letter(),
            record.key(),
            record.payload(),
            record_headers,
        )
        .await
}

fn header(headers: Option<&rdkafka::message::BorrowedHeaders>, name: &str) -> Option<String> {
    headers?
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// Reads the dead letter at `partition`/`offset` of the deployment's dead-letter topic.
pub async fn read(
    settings: &KafkaSettings,
    partition: i32,
    offset: i64,
) -> Result<DeadLetter, DeadLetterError> {
    let topic = Topics::new(&settings.topic_prefix).dead_letter();
    let reader = consumer::manual_consumer(settings, "fm-dead-letter-reader")?;
    let (reader, marks) = {
        let topic = topic.clone();
        let timeout = settings.request_timeout;
        tokio::task::spawn_blocking(move || {
            use rdkafka::consumer::Consumer;
            let marks = reader.fetch_watermarks(&topic, partition, timeout);
            (reader, marks)
        })
        .await
        .map_err(|_| LogError::Kafka(rdkafka::error::KafkaError::Canceled))?
    };
    let (low, high) = marks.map_err(LogError::from)?;
    if offset < low || offset >= high {
        return Err(DeadLetterError::NotFound {
            topic,
            partition,
            offset,
            low,
            high,
        });
    }
    consumer::assign(
        &reader,
        &[((topic.clone(), partition), offset)].into_iter().collect(),
    )?;
    let wait = settings.request_timeout * 2;
    let message = tokio::time::timeout(wait, reader.stream().next())
        .await
        .map_err(|_| DeadLetterError::Timeout(wait))?
        .ok_or(DeadLetterError::Timeout(wait))?
        .map_err(LogError::from)?;
    let position = LogPosition {
        topic,
        partition,
        offset: message.offset(),
    };
    let headers = message.headers();
    let missing = |name| DeadLetterError::NotADeadLetter(position.clone(), name);
    let reason =
        header(headers, headers::DEAD_LETTER_REASON).ok_or(missing(headers::DEAD_LETTER_REASON))?;
    let origin = LogPosition {
        topic: header(headers, headers::ORIGIN_TOPIC).ok_or(missing(headers::ORIGIN_TOPIC))?,
        partition: header(headers, headers::ORIGIN_PARTITION)
            .and_then(|p| p.parse().ok())
            .ok_or(missing(headers::ORIGIN_PARTITION))?,
        offset: header(headers, headers::ORIGIN_OFFSET)
            .and_then(|o| o.parse().ok())
            .ok_or(missing(headers::ORIGIN_OFFSET))?,
    };
    Ok(DeadLetter {
        reason,
        reader: header(headers, headers::DEAD_LETTER_READER),
        origin,
        key: message.key().map(<[u8]>::to_vec),
        payload: message.payload().unwrap_or_default().to_vec(),
        position,
    })
}

/// Appends the dead letter at `partition`/`offset` to its origin topic again, same key and
/// bytes, with an [`RETRY_OF`] header. Returns the dead letter and where the retry landed.
pub async fn retry(
    settings: &KafkaSettings,
    partition: i32,
    offset: i64,
) -> Result<(DeadLetter, LogPosition), DeadLetterError> {
    let letter = read(settings, partition, offset).await?;
    let topics = Topics::new(&settings.topic_prefix);
    if topics.aggregate_of(&letter.origin.topic).is_none() {
        return Err(DeadLetterError::ForeignOrigin(letter.origin.topic));
    }
    let retry_of = format!(
        "{}:{}:{}",
        letter.position.topic, letter.position.partition, letter.position.offset
    );
    let record_headers = OwnedHeaders::new().insert(Header {
        key: RETRY_OF,
        value: Some(retry_of.as_str()),
    });
    let producer = EventProducer::new(settings)?;
    let landed = producer
        .send(
            &letter.origin.topic,
            letter.key.as_deref(),
            &letter.payload,
            record_headers,
        )
        .await?;
    tracing::info!(dead_letter = %retry_of, topic = %landed.topic, partition = landed.partition, offset = landed.offset, "dead letter retried");
    Ok((letter, landed))
}
