//! Log → facts. Reads the booking, facility, payment and saga topics from the offsets stored in
//! the `saga` schema and, for each batch, changes the saga rows and stores the next offsets in
//! **one** transaction (`batch_consumer`, the loop the projector uses too): a crash never skips
//! an event's effect on a saga nor applies it twice. Every event passes the admission rule
//! first, so a losing writer's record is never taken as a fact.
//!
//! A record the saga cannot use — it breaks the contract, sits on another aggregate's topic,
//! or passes its schemas but does not decode into a domain event — is **dead-lettered** (with
//! `fm-dead-letter-reader: saga-runner`) and its offset stored with the batch: one poison
//! record never stops the sagas of everything after it (issue 14: the runner used to fail its
//! whole batch on such a record and retry it for ever). It is decoded *before* it is admitted,
//! so a poison record never takes an aggregate's next sequence.
//!
//! The consumer only changes facts; acting on them is the worker's job.
//!
//! One consumer per database: it runs in the replica that holds a session advisory lock;
//! other replicas stand by and only run workers. A consumer whose lock connection breaks stops
//! and stands by again; a standby whose connection breaks connects again.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use batch_consumer::{BatchApplier, BatchConsumer, ConsumerConfig, RecordOutcome};
use domain::{
    booking::BookingEvent,
    facility::FacilityEvent,
    payment::PaymentEvent,
    saga::SagaEvent,
    values::{BookingId, SagaId},
};
use event_log::{
    EventProducer, Record, Topics, consumer::TopicPartition, dead_letters, resolution::Admission,
};
use platform::{settings::DatabaseSettings, shutdown::CancellationToken};
use schemas::{AggregateType, ContractViolation, EventEnvelope, SchemaRegistry};
use secrecy::ExposeSecret;
use sqlx::{Connection, PgConnection, PgPool};
use uuid::Uuid;

use crate::{
    saga::{Observed, Saga},
    store,
};

/// The saga runner's name on the dead letters it writes (`fm-dead-letter-reader`).
pub const READER: &str = "saga-runner";

/// How often the lock holder checks that its lock connection is alive, and a standby asks for
/// the lock again.
const LEADERSHIP_CHECK: Duration = Duration::from_secs(2);

/// The consumer's settings: the four event topics, read as `saga-runner`.
pub fn config(kafka: &event_log::KafkaSettings, batch_size: usize) -> ConsumerConfig {
    let topics = Topics::new(&kafka.topic_prefix);
    ConsumerConfig {
        kafka: kafka.clone(),
        client_id: "saga-runner".to_owned(),
        topics: vec![
            topics.events(AggregateType::Booking),
            topics.events(AggregateType::Facility),
            topics.events(AggregateType::Payment),
            topics.events(AggregateType::Saga),
        ],
        batch_size,
        backoff: batch_consumer::Backoff::default(),
    }
}

/// Stands by until this replica holds the consumer lock, reads the log while it holds it, and
/// stands by again when it loses it, until shut down.
pub async fn run(
    pool: PgPool,
    database: DatabaseSettings,
    registry: Arc<SchemaRegistry>,
    producer: EventProducer,
    config: ConsumerConfig,
    shutdown: CancellationToken,
) {
    let topics = Topics::new(&config.kafka.topic_prefix);
    while !shutdown.is_cancelled() {
        let Some(leader) = become_leader(&database, &shutdown).await else {
            continue;
        };
        // Cancelled when the lock's connection dies (the lock with it) or at shutdown.
        let holding = shutdown.child_token();
        let watch = tokio::spawn(hold(leader, holding.clone()));
        let facts = Facts {
            registry: registry.clone(),
            topics: topics.clone(),
            dead_letters: producer.clone(),
        };
        if let Some(consumer) = start(&config, &pool, facts, &holding).await {
            tracing::info!("this replica consumes the log");
            consumer.run(holding.clone()).await;
        }
        holding.cancel();
        // Drops the lock's connection, and with it the lock.
        let _ = watch.await;
        if !shutdown.is_cancelled() {
            tracing::warn!("lost the consumer lock (its connection broke); standing by again");
        }
    }
}

/// Starts the batch consumer, retrying while the broker or PostgreSQL does not answer.
async fn start(
    config: &ConsumerConfig,
    pool: &PgPool,
    facts: Facts,
    stop: &CancellationToken,
) -> Option<BatchConsumer<Facts>> {
    let mut facts = Some(facts);
    loop {
        let applier = facts.take()?;
        let kept = applier.clone();
        match BatchConsumer::start(config.clone(), pool.clone(), store::OFFSETS, applier).await {
            Ok(consumer) => return Some(consumer),
            Err(error) => {
                tracing::error!(%error, "could not start the saga's consumer; retrying");
                facts = Some(kept);
                tokio::select! {
                    () = stop.cancelled() => return None,
                    () = tokio::time::sleep(LEADERSHIP_CHECK) => {}
                }
            }
        }
    }
}

/// Keeps the lock's connection, checking it every few seconds; cancels `holding` when it dies.
async fn hold(mut leader: PgConnection, holding: CancellationToken) {
    loop {
        tokio::select! {
            () = holding.cancelled() => return,
            () = tokio::time::sleep(LEADERSHIP_CHECK) => {}
        }
        if leader.ping().await.is_err() {
            holding.cancel();
            return;
        }
    }
}

/// Connects and takes the database-wide consumer lock, waiting while another replica holds it
/// and connecting again when the connection breaks. `None` at shutdown. The lock lives as long
/// as the returned connection.
async fn become_leader(
    database: &DatabaseSettings,
    shutdown: &CancellationToken,
) -> Option<PgConnection> {
    let mut announced = false;
    let mut conn: Option<PgConnection> = None;
    loop {
        if conn.is_none() {
            match PgConnection::connect(database.url.expose_secret()).await {
                Ok(connected) => conn = Some(connected),
                Err(error) => tracing::warn!(%error, "could not connect for the consumer lock"),
            }
        }
        if let Some(connection) = conn.as_mut() {
            let locked: Result<bool, _> = sqlx::query_scalar("SELECT pg_try_advisory_lock(84, 0)")
                .fetch_one(&mut *connection)
                .await;
            match locked {
                Ok(true) => return conn,
                Ok(false) if !announced => {
                    tracing::info!("another replica consumes the log; standing by");
                    announced = true;
                }
                Ok(false) => {}
                Err(error) => {
                    tracing::warn!(%error, "could not ask for the consumer lock; connecting again");
                    conn = None;
                }
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return None,
            () = tokio::time::sleep(LEADERSHIP_CHECK) => {}
        }
    }
}

/// The sagas' facts, as the batch consumer's applier.
#[derive(Clone)]
struct Facts {
    registry: Arc<SchemaRegistry>,
    topics: Topics,
    dead_letters: EventProducer,
}

/// A record decoded into the event of its aggregate, ready to be admitted.
enum Decoded {
    Booking(Observed<BookingEvent>),
    Facility(Observed<FacilityEvent>),
    Payment(Observed<PaymentEvent>),
    Saga(Observed<SagaEvent>),
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
        let (envelope, decoded) = match self.decode(record) {
            Ok(decoded) => decoded,
            Err(refusal) => {
                let position = record.position();
                tracing::warn!(reason = %refusal.for_log, topic = %position.topic, partition = position.partition, offset = position.offset, "dead-lettering a record the saga cannot use");
                dead_letters::write(&self.dead_letters, record, READER, &refusal.full).await?;
                return Ok(RecordOutcome::DeadLettered);
            }
        };
        match store::admit(tx, envelope.aggregate_id, envelope.sequence).await? {
            Admission::Next => {}
            Admission::Stale => return Ok(RecordOutcome::Duplicate),
            Admission::Gap { expected } => {
                tracing::error!(aggregate_id = %envelope.aggregate_id, sequence = envelope.sequence, expected, "gap in an aggregate stream; the saga does not act on it");
                return Ok(RecordOutcome::Gap);
            }
        }
        let applied = match decoded {
            Decoded::Booking(observed) => {
                self.change(tx, envelope.aggregate_id, |saga| {
                    saga.on_booking(&observed);
                })
                .await?
            }
            Decoded::Facility(observed) => match &observed.event {
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
            },
            Decoded::Payment(observed) => {
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
            Decoded::Saga(observed) => {
                let booking = *observed.event.booking_id().as_uuid();
                let retry = matches!(observed.event, SagaEvent::SagaRetryRequested { .. });
                let changed = self
                    .change(tx, booking, |saga| {
                        saga.on_saga(&observed, envelope.sequence);
                    })
                    .await?;
                if retry {
                    // A retry forgets the failed attempts (the backoff starts again).
                    store::forget_attempts(tx, booking).await?;
                }
                changed
            }
        };
        Ok(if applied {
            RecordOutcome::Applied
        } else {
            RecordOutcome::Ignored
        })
    }

    /// Everything a record must pass before the saga trusts it: the contract, its topic, and
    /// decoding into its aggregate's domain event.
    fn decode(&self, record: &Record<'_>) -> Result<(EventEnvelope, Decoded), Refusal> {
        let position = record.position();
        let envelope = self
            .registry
            .validate_bytes(record.payload())
            .map_err(|violation| Refusal::from(&violation))?;
        if self.topics.aggregate_of(&position.topic) != Some(envelope.aggregate_type) {
            return Err(Refusal::plain(format!(
                "a {} event on topic {}",
                envelope.aggregate_type, position.topic
            )));
        }
        let decoded = match envelope.aggregate_type {
            AggregateType::Booking => Decoded::Booking(self.observed(&envelope, record)?),
            AggregateType::Facility => Decoded::Facility(self.observed(&envelope, record)?),
            AggregateType::Payment => Decoded::Payment(self.observed(&envelope, record)?),
            AggregateType::Saga => {
                let observed: Observed<SagaEvent> = self.observed(&envelope, record)?;
                let expected = SagaId::for_booking(observed.event.booking_id());
                if expected.as_uuid() != &envelope.aggregate_id {
                    return Err(Refusal::plain(format!(
                        "a saga event of booking {} in stream {}, not {expected}",
                        observed.event.booking_id(),
                        envelope.aggregate_id
                    )));
                }
                Decoded::Saga(observed)
            }
        };
        Ok((envelope, decoded))
    }

    fn observed<E: domain::aggregate::DomainEvent>(
        &self,
        envelope: &EventEnvelope,
        record: &Record<'_>,
    ) -> Result<Observed<E>, Refusal> {
        let traceparent = record
            .header_str(platform::trace::TRACEPARENT)
            .map(str::to_owned);
        Ok(Observed {
            event: self
                .registry
                .decode(envelope)
                .map_err(|violation| Refusal::from(&violation))?,
            event_id: envelope.event_id,
            correlation_id: envelope.correlation_id,
            occurred_at: envelope.occurred_at,
            traceparent,
            actor: format!("{} ({})", envelope.actor.subject, envelope.actor.role),
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

/// Why a record is dead-lettered: the full text goes with the dead letter, the log gets a form
/// without the offending values (they may be personal data).
struct Refusal {
    full: String,
    for_log: String,
}

impl Refusal {
    fn plain(text: String) -> Self {
        Self {
            for_log: text.clone(),
            full: text,
        }
    }
}

impl From<&ContractViolation> for Refusal {
    fn from(violation: &ContractViolation) -> Self {
        Self {
            full: violation.to_string(),
            for_log: violation.without_values(),
        }
    }
}
