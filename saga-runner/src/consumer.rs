//! Log → facts. Reads the booking, facility and payment topics from the offsets stored in the
//! `saga` schema and, for each batch, changes the saga rows and stores the next offsets in
//! **one** transaction (`batch_consumer`, the loop the projector uses too): a crash never skips an event's effect on a
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

use batch_consumer::{BatchApplier, BatchConsumer, ConsumerConfig, RecordOutcome};
use domain::{
    booking::BookingEvent, facility::FacilityEvent, payment::PaymentEvent, values::BookingId,
};
use event_log::{Record, Topics, consumer::TopicPartition, resolution::Admission};
use platform::shutdown::CancellationToken;
use schemas::{AggregateType, EventEnvelope, SchemaRegistry};
use sqlx::{Connection, PgConnection, PgPool};
use uuid::Uuid;

use crate::{
    saga::{Observed, Saga},
    store,
};

/// The consumer's settings: the three event topics, read as `saga-runner`.
pub fn config(kafka: &event_log::KafkaSettings, batch_size: usize) -> ConsumerConfig {
    let topics = Topics::new(&kafka.topic_prefix);
    ConsumerConfig {
        kafka: kafka.clone(),
        client_id: "saga-runner".to_owned(),
        topics: vec![
            topics.events(AggregateType::Booking),
            topics.events(AggregateType::Facility),
            topics.events(AggregateType::Payment),
        ],
        batch_size,
        backoff: batch_consumer::Backoff::default(),
    }
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
    let topics = Topics::new(&config.kafka.topic_prefix);
    let consumer = loop {
        let facts = Facts {
            registry: registry.clone(),
            topics: topics.clone(),
        };
        match BatchConsumer::start(config.clone(), pool.clone(), store::OFFSETS, facts).await {
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
    consumer.run(shutdown).await;
    drop(leader);
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

/// The sagas' facts, as the batch consumer's applier.
struct Facts {
    registry: Arc<SchemaRegistry>,
    topics: Topics,
}

impl BatchApplier for Facts {
    type Error = anyhow::Error;

    async fn apply(
        &self,
        tx: &mut PgConnection,
        record: &Record<'_>,
    ) -> anyhow::Result<RecordOutcome> {
        self.apply_record(tx, record).await
    }

    /// Idle workers wake at once when the batch commits.
    async fn before_commit(&self, tx: &mut PgConnection) -> anyhow::Result<()> {
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(store::WAKE_CHANNEL)
            .execute(&mut *tx)
            .await?;
        Ok(())
    }

    fn committed(&self, _: &BTreeMap<TopicPartition, i64>, outcomes: &[RecordOutcome]) {
        for outcome in outcomes {
            metrics::counter!("saga_events_total", "outcome" => outcome.label()).increment(1);
        }
    }

    fn attempted(&self, committed: bool, _: Duration) {
        if !committed {
            metrics::counter!("saga_runner_errors_total", "part" => "consumer").increment(1);
        }
    }
}

impl Facts {
    async fn apply_record(
        &self,
        tx: &mut PgConnection,
        record: &Record<'_>,
    ) -> anyhow::Result<RecordOutcome> {
        let position = record.position();
        let envelope = match self.registry.validate_bytes(record.payload()) {
            Ok(envelope) => envelope,
            Err(violation) => {
                tracing::warn!(%violation, topic = %position.topic, partition = position.partition, offset = position.offset, "skipping a record that breaks the contract (the projection-service dead-letters it)");
                return Ok(RecordOutcome::Skipped);
            }
        };
        if self.topics.aggregate_of(&position.topic) != Some(envelope.aggregate_type) {
            return Ok(RecordOutcome::Skipped);
        }
        match store::admit(tx, envelope.aggregate_id, envelope.sequence).await? {
            Admission::Next => {}
            Admission::Stale => return Ok(RecordOutcome::Duplicate),
            Admission::Gap { expected } => {
                tracing::error!(aggregate_id = %envelope.aggregate_id, sequence = envelope.sequence, expected, "gap in an aggregate stream; the saga does not act on it");
                return Ok(RecordOutcome::Gap);
            }
        }
        let applied = match envelope.aggregate_type {
            AggregateType::Booking => {
                let observed = self.observed::<BookingEvent>(&envelope, record)?;
                self.change(tx, envelope.aggregate_id, |saga| {
                    saga.on_booking(&observed);
                })
                .await?
            }
            AggregateType::Facility => {
                let observed = self.observed::<FacilityEvent>(&envelope, record)?;
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
                let observed = self.observed::<PaymentEvent>(&envelope, record)?;
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
        Ok(if applied {
            RecordOutcome::Applied
        } else {
            RecordOutcome::Ignored
        })
    }

    fn observed<E: domain::aggregate::DomainEvent>(
        &self,
        envelope: &EventEnvelope,
        record: &Record<'_>,
    ) -> anyhow::Result<Observed<E>> {
        let traceparent = record
            .header_str(platform::trace::TRACEPARENT)
            .map(str::to_owned);
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
