//! Log → facts. Reads the booking, facility and payment topics from the offsets stored in the
//! `saga` schema and, for each batch, changes the saga rows and stores the next offsets in
//! **one** transaction (the projector's pattern): a crash never skips an event's effect on a
//! saga nor applies it twice. Every event passes the admission rule first, so a losing
//! writer's record is never taken as a fact.
//!
//! The consumer only changes facts; acting on them is the worker's job. Records that break the
//! contract are skipped here: the projection-service dead-letters them (one dead letter per
//! record, not one per reader).
//!
//! One consumer per database: it runs in the replica that holds a session advisory lock;
//! other replicas stand by and only run workers.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use domain::{
    booking::BookingEvent, facility::FacilityEvent, payment::PaymentEvent, values::BookingId,
};
use event_log::{
    LogPosition, Topics,
    consumer::{self, TopicPartition},
    resolution::Admission,
};
use futures::StreamExt;
use platform::shutdown::CancellationToken;
use rdkafka::{
    Message,
    consumer::StreamConsumer,
    message::{BorrowedMessage, Headers},
};
use schemas::{AggregateType, EventEnvelope, SchemaRegistry};
use sqlx::{Connection, PgConnection, PgPool};
use uuid::Uuid;

use crate::{
    saga::{Observed, Saga},
    store,
};

/// What the consumer needs.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    pub kafka: event_log::KafkaSettings,
    pub batch_size: usize,
}

/// Waits until this replica holds the consumer lock, then reads the log until shut down.
pub async fn run(
    pool: PgPool,
    leader: PgConnection,
    registry: Arc<SchemaRegistry>,
    config: ConsumerConfig,
    shutdown: CancellationToken,
) {
    let Some(leader) = become_leader(leader, &shutdown).await else {
        return;
    };
    let consumer = loop {
        match start(&pool, &config).await {
            Ok(consumer) => break consumer,
            Err(error) => {
                tracing::error!(%error, "could not start the saga's consumer; retrying");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(2)) => {}
                }
            }
        }
    };
    let applier = Applier {
        pool,
        registry,
        topics: Topics::new(&config.kafka.topic_prefix),
    };
    let mut batches = consumer.stream().ready_chunks(config.batch_size.max(1));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            batch = batches.next() => {
                let Some(batch) = batch else { break };
                let messages: Vec<BorrowedMessage<'_>> = batch
                    .into_iter()
                    .filter_map(|message| {
                        message
                            .inspect_err(|error| tracing::warn!(%error, "error reading the log; going on"))
                            .ok()
                    })
                    .collect();
                if !messages.is_empty() {
                    applier.apply_until_done(&messages, &shutdown).await;
                }
            }
        }
    }
    drop(leader);
    tracing::info!("saga consumer stopped");
}

/// Takes the database-wide consumer lock on `conn`, waiting while another replica holds it.
/// The lock lives as long as the connection.
async fn become_leader(
    mut conn: PgConnection,
    shutdown: &CancellationToken,
) -> Option<PgConnection> {
    let mut announced = false;
    loop {
        let locked: Result<bool, _> = sqlx::query_scalar("SELECT pg_try_advisory_lock(84, 0)")
            .fetch_one(&mut conn)
            .await;
        match locked {
            Ok(true) => return Some(conn),
            Ok(false) if !announced => {
                tracing::info!("another replica consumes the log; standing by");
                announced = true;
            }
            Ok(false) => {}
            Err(error) => tracing::warn!(%error, "could not ask for the consumer lock"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return None,
            () = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
        if conn.ping().await.is_err() {
            // The connection died (PostgreSQL restarted): the caller's pool reconnects next time.
            return None;
        }
    }
}

async fn start(pool: &PgPool, config: &ConsumerConfig) -> anyhow::Result<StreamConsumer> {
    let topics = Topics::new(&config.kafka.topic_prefix);
    let consumer = consumer::manual_consumer(&config.kafka, "saga-runner")?;
    let names = [
        topics.events(AggregateType::Booking),
        topics.events(AggregateType::Facility),
        topics.events(AggregateType::Payment),
    ];
    let settings = config.kafka.clone();
    let (consumer, partitions) = tokio::task::spawn_blocking(move || {
        let partitions = consumer::partitions(&consumer, &names, &settings)?;
        Ok::<_, event_log::LogError>((consumer, partitions))
    })
    .await??;
    let stored = store::stored_offsets(pool).await?;
    let offsets: BTreeMap<TopicPartition, i64> = partitions
        .iter()
        .map(|tp| (tp.clone(), stored.get(tp).copied().unwrap_or(0)))
        .collect();
    consumer::assign(&consumer, &offsets)?;
    tracing::info!(?offsets, "saga consumer assigned");
    Ok(consumer)
}

struct Applier {
    pool: PgPool,
    registry: Arc<SchemaRegistry>,
    topics: Topics,
}

impl Applier {
    async fn apply_until_done(
        &self,
        messages: &[BorrowedMessage<'_>],
        shutdown: &CancellationToken,
    ) {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.apply_batch(messages).await {
                Ok(()) => return,
                Err(error) => {
                    metrics::counter!("saga_runner_errors_total", "part" => "consumer")
                        .increment(1);
                    tracing::error!(%error, records = messages.len(), "could not apply a batch to the sagas; retrying");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn apply_batch(&self, messages: &[BorrowedMessage<'_>]) -> anyhow::Result<()> {
        let mut tx = self.pool.begin().await?;
        let mut next_offsets: BTreeMap<TopicPartition, i64> = BTreeMap::new();
        let mut outcomes = Vec::with_capacity(messages.len());
        for message in messages {
            let position = LogPosition {
                topic: message.topic().to_owned(),
                partition: message.partition(),
                offset: message.offset(),
            };
            outcomes.push(self.apply_record(&mut tx, message, &position).await?);
            let next = next_offsets
                .entry((position.topic.clone(), position.partition))
                .or_insert(0);
            *next = (*next).max(position.offset + 1);
        }
        for (tp, next) in &next_offsets {
            store::store_offset(&mut tx, tp, *next).await?;
        }
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(store::WAKE_CHANNEL)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        for outcome in outcomes {
            metrics::counter!("saga_events_total", "outcome" => outcome).increment(1);
        }
        Ok(())
    }

    async fn apply_record(
        &self,
        tx: &mut PgConnection,
        message: &BorrowedMessage<'_>,
        position: &LogPosition,
    ) -> anyhow::Result<&'static str> {
        let envelope = match self
            .registry
            .validate_bytes(message.payload().unwrap_or_default())
        {
            Ok(envelope) => envelope,
            Err(violation) => {
                tracing::warn!(%violation, topic = %position.topic, partition = position.partition, offset = position.offset, "skipping a record that breaks the contract (the projection-service dead-letters it)");
                return Ok("skipped");
            }
        };
        if self.topics.aggregate_of(&position.topic) != Some(envelope.aggregate_type) {
            return Ok("skipped");
        }
        match store::admit(tx, envelope.aggregate_id, envelope.sequence).await? {
            Admission::Next => {}
            Admission::Stale => return Ok("duplicate"),
            Admission::Gap { expected } => {
                tracing::error!(aggregate_id = %envelope.aggregate_id, sequence = envelope.sequence, expected, "gap in an aggregate stream; the saga does not act on it");
                return Ok("gap");
            }
        }
        let applied = match envelope.aggregate_type {
            AggregateType::Booking => {
                let observed = self.observed::<BookingEvent>(&envelope, message)?;
                self.change(tx, envelope.aggregate_id, |saga| {
                    saga.on_booking(&observed);
                })
                .await?
            }
            AggregateType::Facility => {
                let observed = self.observed::<FacilityEvent>(&envelope, message)?;
                match &observed.event {
                    FacilityEvent::FacilityRegistered { name, .. } => {
                        store::remember_facility(tx, envelope.aggregate_id, name.as_str()).await?;
                        false
                    }
                    FacilityEvent::SlotReserved { booking_id, .. }
                    | FacilityEvent::SlotRejected { booking_id, .. }
                    | FacilityEvent::SlotReleased { booking_id } => {
                        self.change(tx, *booking_id.as_uuid(), |saga| {
                            saga.on_facility(&observed);
                        })
                        .await?
                    }
                    FacilityEvent::OpeningHoursChanged { .. } => false,
                }
            }
            AggregateType::Payment => {
                let observed = self.observed::<PaymentEvent>(&envelope, message)?;
                let booking = match &observed.event {
                    PaymentEvent::PaymentCaptured { booking_id, .. }
                    | PaymentEvent::PaymentDeclined { booking_id, .. } => {
                        Some(*booking_id.as_uuid())
                    }
                    PaymentEvent::PaymentRefunded { .. } => {
                        store::booking_of_payment(tx, envelope.aggregate_id).await?
                    }
                };
                if let Some(booking) = booking {
                    self.change(tx, booking, |saga| {
                        saga.on_payment(&observed);
                    })
                    .await?
                } else {
                    tracing::warn!(payment_id = %envelope.aggregate_id, "a refund of a payment no saga knows; ignored");
                    false
                }
            }
        };
        Ok(if applied { "applied" } else { "ignored" })
    }

    fn observed<E: domain::aggregate::DomainEvent>(
        &self,
        envelope: &EventEnvelope,
        message: &BorrowedMessage<'_>,
    ) -> anyhow::Result<Observed<E>> {
        let traceparent = message.headers().and_then(|headers| {
            headers
                .iter()
                .find(|header| header.key == platform::trace::TRACEPARENT)
                .and_then(|header| header.value)
                .and_then(|value| std::str::from_utf8(value).ok())
                .map(str::to_owned)
        });
        Ok(Observed {
            event: self.registry.decode(envelope)?,
            event_id: envelope.event_id,
            correlation_id: envelope.correlation_id,
            occurred_at: envelope.occurred_at,
            traceparent,
        })
    }

    /// Loads (or starts) a booking's saga, changes its facts, stores them.
    async fn change(
        &self,
        tx: &mut PgConnection,
        booking_id: Uuid,
        change: impl FnOnce(&mut Saga),
    ) -> anyhow::Result<bool> {
        let mut saga = store::facts_for_update(tx, booking_id).await?.map_or_else(
            || Saga::new(BookingId::from_uuid(booking_id)),
            |(saga, _)| saga,
        );
        change(&mut saga);
        store::save_facts(tx, &saga).await?;
        Ok(true)
    }
}
