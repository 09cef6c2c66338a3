//! Writing a large, valid history straight to the topics, as fast as the broker takes it.
//!
//! The records are what the services would have written: `schemas::fixtures::booking_story`
//! envelopes (valid against their schemas, sequences 1, 2, 3 … per aggregate), keyed by
//! aggregate id, with the producer's headers. Order within an aggregate matters (a reader
//! refuses a gap), so records are handed to librdkafka one after the other from one task, which
//! keeps them in order per partition; only the deliveries are awaited concurrently.

use std::time::{Duration, Instant};

use anyhow::Context;
use domain::values::BookingId;
use event_log::{KafkaSettings, Topics, producer::headers};
use futures::{StreamExt, stream::FuturesUnordered};
use rdkafka::{
    ClientConfig,
    error::{KafkaError, RDKafkaErrorCode},
    message::{Header, OwnedHeaders},
    producer::{FutureProducer, FutureRecord},
};
use schemas::EventEnvelope;

/// One encoded record, ready to send.
struct Encoded {
    topic: String,
    key: String,
    payload: Vec<u8>,
    event_type: String,
    version: String,
    correlation: String,
    causation: String,
}

impl Encoded {
    fn new(topics: &Topics, envelope: &EventEnvelope) -> anyhow::Result<Self> {
        Ok(Self {
            topic: topics.events(envelope.aggregate_type),
            key: envelope.aggregate_id.to_string(),
            payload: serde_json::to_vec(envelope)?,
            event_type: envelope.event_type.clone(),
            version: envelope.event_version.to_string(),
            correlation: envelope.correlation_id.to_string(),
            causation: envelope.causation_id.to_string(),
        })
    }

    fn headers(&self) -> OwnedHeaders {
        OwnedHeaders::new()
            .insert(Header {
                key: headers::EVENT_TYPE,
                value: Some(self.event_type.as_str()),
            })
            .insert(Header {
                key: headers::EVENT_VERSION,
                value: Some(self.version.as_str()),
            })
            .insert(Header {
                key: headers::CORRELATION_ID,
                value: Some(self.correlation.as_str()),
            })
            .insert(Header {
                key: headers::CAUSATION_ID,
                value: Some(self.causation.as_str()),
            })
    }
}

/// What a seeding wrote.
#[derive(Debug, Clone)]
pub(crate) struct Seeded {
    /// Every booking, in story order.
    pub bookings: Vec<BookingId>,
    pub events: u64,
    pub bytes: u64,
    pub elapsed: Duration,
}

/// A producer for bulk loading: idempotent with `acks=all` like the services' (so order per
/// partition holds under retries), but with larger batches and a longer linger.
fn bulk_producer(kafka: &KafkaSettings) -> anyhow::Result<FutureProducer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", &kafka.brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "20")
        .set("batch.num.messages", "2000")
        .set("queue.buffering.max.messages", "200000")
        .set("message.timeout.ms", "300000")
        .create()?)
}

/// Appends booking stories until at least `events` events are written: 6 or 9 events per
/// story (7 on average), over the facility, booking and payment topics. A third of the
/// bookings are cancelled; the others are confirmed for a service ahead.
pub(crate) async fn stories(kafka: &KafkaSettings, events: u64) -> anyhow::Result<Seeded> {
    seed(kafka, events, Services::Ahead).await
}

/// As [`stories`], with 95 % of the bookings finished, as a store sees them once they are
/// done with (issue 18): every third one cancelled, and of the others all but one in twenty
/// confirmed for a service held a year before the fixture's (in the past), so only one
/// booking in twenty can still change.
pub(crate) async fn finished_stories(kafka: &KafkaSettings, events: u64) -> anyhow::Result<Seeded> {
    seed(kafka, events, Services::MostlyOver).await
}

/// When the stories' services are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Services {
    /// The fixture's slot, ahead.
    Ahead,
    /// A year earlier for all but every twentieth story.
    MostlyOver,
}

/// The fixture's slot and date of death, a year earlier (the same weekday and hours do not
/// matter to a reader: a record is folded, not decided).
fn a_year_before(envelope: &mut EventEnvelope) {
    let Some(data) = envelope.data.as_object_mut() else {
        return;
    };
    for field in ["slot", "date_of_death"] {
        match data.get_mut(field) {
            Some(serde_json::Value::Object(slot)) => {
                for end in ["start", "end"] {
                    if let Some(serde_json::Value::String(at)) = slot.get_mut(end) {
                        *at = at.replacen("2027-", "2026-", 1);
                    }
                }
            }
            Some(serde_json::Value::String(day)) => *day = day.replacen("2027-", "2026-", 1),
            _ => {}
        }
    }
}

async fn seed(kafka: &KafkaSettings, events: u64, services: Services) -> anyhow::Result<Seeded> {
    let producer = bulk_producer(kafka)?;
    let topics = Topics::new(&kafka.topic_prefix);
    let mut bookings = Vec::new();
    let mut in_flight = FuturesUnordered::new();
    let (mut written, mut bytes) = (0_u64, 0_u64);
    let started = Instant::now();
    let mut last_report = Instant::now();
    let mut story = 0_usize;
    while written < events {
        let (booking, mut envelopes) = schemas::fixtures::booking_story(story);
        if services == Services::MostlyOver && !story.is_multiple_of(20) {
            envelopes.iter_mut().for_each(a_year_before);
        }
        story += 1;
        bookings.push(booking);
        for envelope in &envelopes {
            let record = Encoded::new(&topics, envelope)?;
            bytes += record.payload.len() as u64;
            loop {
                let future = FutureRecord::to(&record.topic)
                    .key(record.key.as_bytes())
                    .payload(record.payload.as_slice())
                    .headers(record.headers());
                match producer.send_result(future) {
                    Ok(delivery) => {
                        in_flight.push(delivery);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                        // The local queue is full: let some deliveries finish, then retry the
                        // same record (so that the order per partition is kept).
                        match in_flight.next().await {
                            Some(delivery) => check(delivery)?,
                            None => tokio::time::sleep(Duration::from_millis(5)).await,
                        }
                    }
                    Err((error, _)) => return Err(error).context("Failed to enqueue a record"),
                }
            }
            written += 1;
        }
        // Settle finished deliveries without waiting, so failures show early.
        while let Some(Some(delivery)) = futures::FutureExt::now_or_never(in_flight.next()) {
            check(delivery)?;
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            last_report = Instant::now();
            #[allow(clippy::cast_precision_loss)] // Progress for people to read.
            let rate = written as f64 / started.elapsed().as_secs_f64();
            eprintln!("  seeding: {written} of {events} events enqueued ({rate:.0}/s)");
        }
    }
    while let Some(delivery) = in_flight.next().await {
        check(delivery)?;
    }
    Ok(Seeded {
        bookings,
        events: written,
        bytes,
        elapsed: started.elapsed(),
    })
}

fn check(
    delivery: Result<
        rdkafka::producer::future_producer::OwnedDeliveryResult,
        futures::channel::oneshot::Canceled,
    >,
) -> anyhow::Result<()> {
    delivery
        .context("a delivery was cancelled")?
        .map_err(|(error, _)| error)
        .context("the broker refused a record")?;
    Ok(())
}
