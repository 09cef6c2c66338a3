//! Appending events: idempotent producer, `acks=all`, key = aggregate id.

use std::sync::{Arc, PoisonError, RwLock};

use rdkafka::{
    ClientConfig,
    message::{Header, OwnedHeaders},
    producer::{FutureProducer, FutureRecord, Producer as _},
};
use schemas::EventEnvelope;

use crate::{KafkaSettings, LogError, LogPosition, Topics};

/// Record header names. Consumers can filter on them without decoding the value.
pub mod headers {
    pub const EVENT_TYPE: &str = "fm-event-type";
    pub const EVENT_VERSION: &str = "fm-event-version";
    pub const CORRELATION_ID: &str = "fm-correlation-id";
    pub const CAUSATION_ID: &str = "fm-causation-id";
    /// The W3C trace context of the span that appended the record; a consumer continues the
    /// trace from it (`crate::Record::trace_context`).
    pub const TRACEPARENT: &str = platform::trace::TRACEPARENT;
    /// On dead letters: why the record could not be used.
    pub const DEAD_LETTER_REASON: &str = "fm-dead-letter-reason";
    /// On dead letters: where the record came from (`topic`, `partition`, `offset`).
    pub const ORIGIN_TOPIC: &str = "fm-origin-topic";
    pub const ORIGIN_PARTITION: &str = "fm-origin-partition";
    pub const ORIGIN_OFFSET: &str = "fm-origin-offset";
    /// On a dead letter: the reader that refused the record (`projection-service`,
    /// `saga-runner`). Each reader with a position of its own dead-letters what it cannot use.
    pub const DEAD_LETTER_READER: &str = "fm-dead-letter-reader";
}

/// Appends envelopes to their aggregate's topic and answers with where they landed.
///
/// The producer is idempotent with `acks=all`: once `append` returns `Ok`, every in-sync replica
/// has the record, and librdkafka's retries keep the order. They may still write a record twice
/// after a timeout (an epoch bump resends what was in flight); readers treat the copy as stale.
///
/// After a fatal error of the idempotent producer (librdkafka gives up on guaranteeing the order
/// and refuses every later record: seen on a cluster whose partitions fell below
/// `min.insync.replicas`, docs/reliability.md, broker finding 5) a new producer takes the failed
/// one's place; the write that met the error fails, and the next one goes through.
#[derive(Clone)]
pub struct EventProducer {
    producer: Arc<RwLock<FutureProducer>>,
    topics: Topics,
    settings: KafkaSettings,
}

impl std::fmt::Debug for EventProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventProducer")
            .field("brokers", &self.settings.brokers)
            .finish_non_exhaustive()
    }
}

impl EventProducer {
    /// Creates the producer; no connection is made until the first append.
    pub fn new(settings: &KafkaSettings) -> Result<Self, LogError> {
        Ok(Self {
            producer: Arc::new(RwLock::new(Self::client(settings)?)),
            topics: Topics::new(&settings.topic_prefix),
            settings: settings.clone(),
        })
    }

    fn client(settings: &KafkaSettings) -> Result<FutureProducer, LogError> {
        Ok(ClientConfig::new()
            .set("bootstrap.servers", &settings.brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "1")
            .set(
                "message.timeout.ms",
                settings.delivery_timeout.as_millis().to_string(),
            )
            .set(
                "socket.timeout.ms",
                settings.socket_timeout.as_millis().to_string(),
            )
            .create()?)
    }

    /// The librdkafka producer in use.
    fn current(&self) -> FutureProducer {
        self.producer
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// If `failed` has met a fatal error, puts a new producer in its place (once, however many
    /// writes saw the error). Returns whether it did.
    fn renew_if_fatal(&self, failed: &FutureProducer) -> bool {
        let Some((code, reason)) = failed.client().fatal_error() else {
            return false;
        };
        let mut producer = self
            .producer
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if producer.client().native_ptr() != failed.client().native_ptr() {
            return true; // another write renewed it already
        }
        match Self::client(&self.settings) {
            Ok(fresh) => {
                tracing::error!(?code, %reason, "the producer met a fatal error; a new producer takes its place");
                metrics::counter!("event_producer_renewals_total").increment(1);
                *producer = fresh;
                true
            }
            Err(error) => {
                tracing::error!(?code, %reason, %error, "the producer met a fatal error, and a new one could not be created");
                false
            }
        }
    }

    /// The topic names this producer writes to.
    pub fn topics(&self) -> &Topics {
        &self.topics
    }

    /// Appends one event to its aggregate's topic, with its type, version, correlation and
    /// causation ids and the current trace context in the record headers.
    #[tracing::instrument(skip_all, fields(event_type = %envelope.event_type, aggregate_id = %envelope.aggregate_id, sequence = envelope.sequence))]
    pub async fn append(&self, envelope: &EventEnvelope) -> Result<LogPosition, LogError> {
        let topic = self.topics.events(envelope.aggregate_type);
        let payload = serde_json::to_vec(envelope)?;
        let key = envelope.aggregate_id.to_string();
        let version = envelope.event_version.to_string();
        let correlation = envelope.correlation_id.to_string();
        let causation = envelope.causation_id.to_string();
        let traceparent = platform::trace::current_traceparent();
        let mut record_headers = OwnedHeaders::new()
            .insert(Header {
                key: headers::EVENT_TYPE,
                value: Some(envelope.event_type.as_str()),
            })
            .insert(Header {
                key: headers::EVENT_VERSION,
                value: Some(version.as_str()),
            })
            .insert(Header {
                key: headers::CORRELATION_ID,
                value: Some(correlation.as_str()),
            })
            .insert(Header {
                key: headers::CAUSATION_ID,
                value: Some(causation.as_str()),
            });
        if let Some(traceparent) = &traceparent {
            record_headers = record_headers.insert(Header {
                key: headers::TRACEPARENT,
                value: Some(traceparent.as_str()),
            });
        }
        let started = std::time::Instant::now();
        let landed = self
            .send(&topic, Some(key.as_bytes()), &payload, record_headers)
            .await;
        metrics::histogram!(
            "event_append_seconds",
            "aggregate" => envelope.aggregate_type.as_str(),
            "result" => if landed.is_ok() { "ok" } else { "error" },
        )
        .record(started.elapsed().as_secs_f64());
        landed
    }

    /// Sends raw bytes with the given headers (dead letters, retries of dead letters).
    pub async fn send(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: &[u8],
        headers: OwnedHeaders,
    ) -> Result<LogPosition, LogError> {
        let mut record = FutureRecord::to(topic).payload(payload).headers(headers);
        if let Some(key) = key {
            record = record.key(key);
        }
        let producer = self.current();
        let delivery = match producer.send(record, self.settings.delivery_timeout).await {
            Ok(delivery) => delivery,
            Err((error, _message)) => {
                self.renew_if_fatal(&producer);
                return Err(LogError::Kafka(error));
            }
        };
        Ok(LogPosition {
            topic: topic.to_owned(),
            partition: delivery.partition,
            offset: delivery.offset,
        })
    }
}

impl EventProducer {
    /// Asks the broker for cluster metadata: `Ok` if it answers within the request timeout.
    pub async fn ping(&self) -> Result<(), LogError> {
        let producer = self.current();
        let timeout = self.settings.request_timeout;
        tokio::task::spawn_blocking(move || {
            producer.client().fetch_metadata(None, timeout).map(|_| ())
        })
        .await
        .map_err(|_| LogError::Kafka(rdkafka::error::KafkaError::Canceled))?
        .map_err(LogError::from)
    }
}
