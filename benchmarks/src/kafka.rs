//! The raw Kafka baselines: produce, produce and read back, consume from offset 0, and the
//! minimal pipeline (consume, `INSERT`) that command-to-query latency is compared with. Every
//! client here uses the services' own settings (`event_log`'s producer and consumer settings).

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use domain::{booking::BookingEvent, fixtures, values::BookingId};
use event_log::{
    KafkaSettings,
    consumer::{self, TopicPartition},
    producer::headers,
};
use futures::StreamExt;
use platform::shutdown::CancellationToken;
use rdkafka::{
    ClientConfig, Message,
    consumer::StreamConsumer,
    message::{Header, OwnedHeaders},
    producer::{FutureProducer, FutureRecord},
};
use schemas::{Actor, AggregateType, EventEnvelope, EventMetadata, Role};
use sqlx::PgPool;
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::{stack::DIRECTOR, stats::Load};

/// How long a raw record may take to be sent or read back: the service's outcome timeout.
const TIMEOUT: Duration = Duration::from_secs(10);

/// A `BookingRequested` envelope as the command-service writes it for a director's request,
/// encoded: the raw baselines send records of exactly this size.
pub(crate) fn booking_requested_record() -> anyhow::Result<Vec<u8>> {
    let BookingEvent::BookingRequested {
        facility_id,
        service_type,
        slot,
        date_of_death,
        personal,
        price,
        statement,
        ..
    } = fixtures::booking_requested()
    else {
        anyhow::bail!("the fixture is a request")
    };
    let booking = BookingId::new();
    let command_id = Uuid::new_v4();
    let metadata = EventMetadata {
        correlation_id: command_id,
        causation_id: command_id,
        actor: Actor {
            subject: DIRECTOR.to_owned(),
            role: Role::Director,
        },
        occurred_at: chrono::Utc::now(),
        idempotency: None,
    };
    let event = BookingEvent::BookingRequested {
        booking_id: booking,
        facility_id,
        service_type,
        slot,
        date_of_death,
        personal,
        price,
        statement,
    };
    let envelope = EventEnvelope::wrap(
        AggregateType::Booking,
        *booking.as_uuid(),
        1,
        &event,
        &metadata,
    )?;
    Ok(serde_json::to_vec(&envelope)?)
}

/// The headers `event_log::EventProducer` puts on a `BookingRequested` record.
fn record_headers() -> OwnedHeaders {
    let (correlation, causation) = (Uuid::new_v4().to_string(), Uuid::new_v4().to_string());
    OwnedHeaders::new()
        .insert(Header {
            key: headers::EVENT_TYPE,
            value: Some("BookingRequested"),
        })
        .insert(Header {
            key: headers::EVENT_VERSION,
            value: Some("1"),
        })
        .insert(Header {
            key: headers::CORRELATION_ID,
            value: Some(correlation.as_str()),
        })
        .insert(Header {
            key: headers::CAUSATION_ID,
            value: Some(causation.as_str()),
        })
}

/// The services' producer linger (`event_log::EventProducer` sets `linger.ms=1`).
pub(crate) const SERVICES_LINGER_MS: u64 = 1;

/// A producer configured as `event_log::EventProducer` configures its own.
pub(crate) fn producer(kafka: &KafkaSettings) -> anyhow::Result<FutureProducer> {
    producer_with_linger(kafka, SERVICES_LINGER_MS)
}

/// The services' producer with another `linger.ms` (the settings section compares them).
pub(crate) fn producer_with_linger(
    kafka: &KafkaSettings,
    linger_ms: u64,
) -> anyhow::Result<FutureProducer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", &kafka.brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", linger_ms.to_string())
        .set(
            "message.timeout.ms",
            kafka.delivery_timeout.as_millis().to_string(),
        )
        .create()?)
}

/// Sends one record keyed by `id` and waits for the broker's acknowledgement.
pub(crate) async fn send(
    producer: &FutureProducer,
    topic: &str,
    id: Uuid,
    payload: &[u8],
) -> anyhow::Result<()> {
    let key = id.to_string();
    let record = FutureRecord::to(topic)
        .key(key.as_bytes())
        .payload(payload)
        .headers(record_headers());
    producer
        .send(record, TIMEOUT)
        .await
        .map_err(|(error, _)| error)
        .context("produce failed")?;
    Ok(())
}

/// Who waits for which key to be read back.
type Waiting = Arc<Mutex<HashMap<Uuid, oneshot::Sender<()>>>>;

/// A consumer reading one topic from offset 0, with the services' consumer settings, that
/// wakes whoever waits for each record's key.
pub(crate) struct ReadBack {
    waiting: Waiting,
    stop: CancellationToken,
}

impl ReadBack {
    pub(crate) async fn start(kafka: &KafkaSettings, topic: &str) -> anyhow::Result<Self> {
        let reader = assigned_from_start(kafka, &[topic.to_owned()], "bench-read-back").await?;
        let waiting: Waiting = Arc::default();
        let stop = CancellationToken::new();
        let (map, token) = (waiting.clone(), stop.clone());
        tokio::spawn(async move {
            let mut stream = reader.stream();
            loop {
                let message = tokio::select! {
                    () = token.cancelled() => break,
                    message = stream.next() => message,
                };
                let Some(Ok(message)) = message else { continue };
                if let Some(waiter) = key_of(&message).and_then(|id| {
                    map.lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .remove(&id)
                }) {
                    let _ = waiter.send(());
                }
            }
        });
        Ok(Self { waiting, stop })
    }

    /// Registers `id` as awaited; the receiver fires once a record with that key is read.
    pub(crate) fn expect(&self, id: Uuid) -> oneshot::Receiver<()> {
        let (sender, receiver) = oneshot::channel();
        self.waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, sender);
        receiver
    }
}

impl Drop for ReadBack {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn key_of<M: Message>(message: &M) -> Option<Uuid> {
    message
        .key()
        .and_then(|key| std::str::from_utf8(key).ok())
        .and_then(|key| key.parse().ok())
}

/// A consumer with the services' settings, assigned every partition of `topics` from offset 0.
async fn assigned_from_start(
    kafka: &KafkaSettings,
    topics: &[String],
    client_id: &'static str,
) -> anyhow::Result<StreamConsumer> {
    let (settings, topics) = (kafka.clone(), topics.to_vec());
    tokio::task::spawn_blocking(move || {
        let reader = consumer::manual_consumer(&settings, client_id)?;
        let partitions = consumer::partitions(&reader, &topics, &settings)?;
        consumer::assign(&reader, &partitions.into_iter().map(|tp| (tp, 0)).collect())?;
        Ok::<_, event_log::LogError>(reader)
    })
    .await
    .context("a consumer's set-up panicked")?
    .context("Failed to assign a consumer")
}

/// A broker just started spends about as much CPU compiling its own code (the JVM's JIT) as
/// serving requests, for its first minute or so (a thread-by-thread census of the broker during
/// the write section, 4 Dec 2026), so the first measurement would count compilation. It serves
/// produce + read back of booking-sized records on topics of its own for `time` first, and the
/// figures are thrown away.
pub(crate) async fn warm_up_broker(
    bench: &crate::config::Bench,
    time: std::time::Duration,
) -> anyhow::Result<()> {
    let kafka = bench.kafka("warm-up");
    bench.topics(&kafka).await?;
    let topic = event_log::Topics::new(&kafka.topic_prefix).events(schemas::AggregateType::Booking);
    let producer = producer(&kafka)?;
    let reader = Arc::new(ReadBack::start(&kafka, &topic).await?);
    let payload = Arc::new(booking_requested_record()?);
    let started = Instant::now();
    while started.elapsed() < time {
        let load = produce_load(
            &producer,
            &topic,
            &payload,
            2_000,
            bench.sizes.clients,
            Some(&reader),
        )
        .await?;
        anyhow::ensure!(
            load.failed() == 0,
            "warming the broker up failed: {:?}",
            load.first_failure
        );
    }
    Ok(())
}

/// `clients` tasks send `records` records of `payload` to `topic`, one in flight each; with
/// `read_back`, each send also waits until its record has been read back.
pub(crate) async fn produce_load(
    producer: &FutureProducer,
    topic: &str,
    payload: &Arc<Vec<u8>>,
    records: usize,
    clients: usize,
    read_back: Option<&Arc<ReadBack>>,
) -> anyhow::Result<Load> {
    let next = Arc::new(AtomicUsize::new(0));
    let census = crate::cpu::Census::take();
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (producer, topic, payload, next, read_back) = (
                producer.clone(),
                topic.to_owned(),
                payload.clone(),
                next.clone(),
                read_back.cloned(),
            );
            tokio::spawn(async move {
                let (mut ok, mut failed) = (Vec::new(), Vec::new());
                while next.fetch_add(1, Ordering::Relaxed) < records {
                    let id = Uuid::new_v4();
                    let read = read_back.as_ref().map(|r| r.expect(id));
                    let sent = Instant::now();
                    if let Err(error) = send(&producer, &topic, id, &payload).await {
                        failed.push(("produce".to_owned(), format!("{error:#}")));
                        continue;
                    }
                    if let Some(read) = read
                        && !matches!(tokio::time::timeout(TIMEOUT, read).await, Ok(Ok(())))
                    {
                        failed.push(("not read back".to_owned(), "within 10 s".to_owned()));
                        continue;
                    }
                    ok.push(sent.elapsed());
                }
                (ok, failed)
            })
        })
        .collect();
    let (mut ok, mut failed) = (Vec::new(), Vec::new());
    for task in tasks {
        let (o, f) = task.await.context("a producer task panicked")?;
        ok.extend(o);
        failed.extend(f);
    }
    Ok(Load::from_samples(ok, started.elapsed(), failed).with_cpu(census.as_ref()))
}

/// The end offset of every partition of `kafka`'s event topics.
pub(crate) async fn end_offsets(
    kafka: &KafkaSettings,
) -> anyhow::Result<BTreeMap<TopicPartition, i64>> {
    let settings = kafka.clone();
    tokio::task::spawn_blocking(move || {
        let probe = consumer::manual_consumer(&settings, "bench-ends")?;
        let topics = event_log::Topics::new(&settings.topic_prefix).event_topics();
        let partitions = consumer::partitions(&probe, &topics, &settings)?;
        consumer::end_offsets(&probe, &partitions, &settings)
    })
    .await
    .context("reading end offsets panicked")?
    .context("Failed to read the end offsets")
}

/// One consumer, with the services' settings, reads every event topic from offset 0 until it
/// has `total` records: what the broker can deliver to one reader.
pub(crate) async fn consume_all(kafka: &KafkaSettings, total: i64) -> anyhow::Result<Duration> {
    let topics = event_log::Topics::new(&kafka.topic_prefix).event_topics();
    let started = Instant::now();
    let reader = assigned_from_start(kafka, &topics, "bench-raw-consume").await?;
    let mut stream = reader.stream();
    let mut seen = 0;
    while seen < total {
        tokio::time::timeout(Duration::from_mins(2), stream.next())
            .await
            .with_context(|| format!("raw consume read nothing for 120 s after {seen} of {total}"))?
            .context("the stream ended")?
            .context("the raw consumer failed")?;
        seen += 1;
    }
    Ok(started.elapsed())
}

/// The latency baseline's pipeline: a consumer with the services' settings reads `topic` from
/// offset 0 and `INSERT`s each record (autocommit) into `bench_pipeline`, which the bare server
/// serves. The least any "log → PostgreSQL → HTTP" path can do.
pub(crate) struct Pipeline {
    stop: CancellationToken,
}

impl Pipeline {
    pub(crate) async fn start(
        kafka: &KafkaSettings,
        topic: &str,
        pool: PgPool,
    ) -> anyhow::Result<Self> {
        sqlx::query("CREATE TABLE IF NOT EXISTS bench_pipeline (id UUID PRIMARY KEY, payload JSONB NOT NULL)")
            .execute(&pool)
            .await?;
        let reader = assigned_from_start(kafka, &[topic.to_owned()], "bench-pipeline").await?;
        let stop = CancellationToken::new();
        let token = stop.clone();
        tokio::spawn(async move {
            let mut stream = reader.stream();
            loop {
                let message = tokio::select! {
                    () = token.cancelled() => break,
                    message = stream.next() => message,
                };
                let Some(Ok(message)) = message else { continue };
                let (Some(id), Some(payload)) = (key_of(&message), message.payload()) else {
                    continue;
                };
                let Ok(payload) = serde_json::from_slice::<serde_json::Value>(payload) else {
                    continue;
                };
                let inserted = sqlx::query(
                    "INSERT INTO bench_pipeline (id, payload) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                )
                .bind(id)
                .bind(payload)
                .execute(&pool)
                .await;
                if let Err(error) = inserted {
                    eprintln!("    pipeline insert failed: {error}");
                }
            }
        });
        Ok(Self { stop })
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
