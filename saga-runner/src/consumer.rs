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
//! A record of an event type or version this release does not know, or beyond the next
//! sequence of its aggregate (a gap), is not refused: it **parks** its aggregate
//! (`crate::parking`), and every later record of that aggregate waits behind it, in the batch's
//! transaction, while every other aggregate goes on. They are taken in sequence order once the
//! missing record arrives, or when a consumer that knows the record starts
//! (docs/evolution.md). `saga_parked_aggregates` counts them; `/ready` names them.
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
    EventProducer, LogPosition, Record, Topics, consumer::TopicPartition, dead_letters,
    resolution::Admission,
};
use platform::{settings::DatabaseSettings, shutdown::CancellationToken};
use schemas::{AggregateType, ContractViolation, EventEnvelope, SchemaRegistry};
use secrecy::ExposeSecret;
use sqlx::{Connection, PgConnection, PgPool};
use uuid::Uuid;

use crate::{
    parking::{self, Parked},
    saga::{Observed, Saga},
    store,
};

#[cfg(test)]
mod tests;

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
        // What an older release parked, this one may know (docs/evolution.md).
        if let Err(error) = drain_all(&pool, &registry).await {
            tracing::warn!(%error, "could not try the parked records at start; the next record of each aggregate tries again");
        }
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

/// Tries every parked aggregate, in one transaction: at the consumer's start, since this
/// release may know what an older one parked.
pub(crate) async fn drain_all(pool: &PgPool, registry: &SchemaRegistry) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    let aggregates = parking::aggregates(&mut tx).await?;
    let mut still_parked = 0_i64;
    for aggregate in &aggregates {
        still_parked += i64::from(drain(&mut tx, registry, *aggregate).await?);
    }
    tx.commit().await?;
    if !aggregates.is_empty() {
        tracing::info!(
            parked = aggregates.len(),
            still_parked,
            "parked aggregates tried at start"
        );
    }
    set_parked_gauge(still_parked);
    Ok(())
}

fn set_parked_gauge(parked: i64) {
    #[allow(clippy::cast_precision_loss)] // a gauge; exact below 2^53 aggregates
    metrics::gauge!("saga_parked_aggregates").set(parked as f64);
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

    /// Idle workers wake at once when the batch commits; `saga_parked_aggregates` is counted.
    async fn before_commit(&self, tx: &mut PgConnection) -> anyhow::Result<()> {
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(store::WAKE_CHANNEL)
            .execute(&mut *tx)
            .await?;
        set_parked_gauge(parking::count(tx).await?);
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
        let traceparent = record.header_str(platform::trace::TRACEPARENT);
        let taken = take(
            tx,
            &self.registry,
            &self.topics,
            record.payload(),
            traceparent,
            record.position(),
        )
        .await?;
        match taken {
            Taken::Outcome(outcome) => Ok(outcome),
            Taken::Refused(refusal) => {
                let position = record.position();
                tracing::warn!(reason = %refusal.for_log, topic = %position.topic, partition = position.partition, offset = position.offset, "dead-lettering a record the saga cannot use");
                dead_letters::write(&self.dead_letters, record, READER, &refusal.full).await?;
                Ok(RecordOutcome::DeadLettered)
            }
        }
    }
}

/// What taking one record came to.
pub(crate) enum Taken {
    /// Its outcome, with its effect (or its parking) in the transaction.
    Outcome(RecordOutcome),
    /// The saga cannot use it: to the dead-letter topic.
    Refused(Refusal),
}

/// Takes one record as a fact inside the batch's transaction: applies it, parks it (an event
/// this release does not know, a gap, or a record of an aggregate already parked), or says why
/// it is refused (docs/evolution.md, "Unknown is parked, not skipped").
pub(crate) async fn take(
    tx: &mut PgConnection,
    registry: &SchemaRegistry,
    topics: &Topics,
    payload: &[u8],
    traceparent: Option<&str>,
    position: &LogPosition,
) -> anyhow::Result<Taken> {
    let envelope = match registry.validate_envelope_bytes(payload) {
        Ok(envelope) => envelope,
        Err(violation) => return Ok(Taken::Refused(Refusal::from(&violation))),
    };
    if topics.aggregate_of(&position.topic) != Some(envelope.aggregate_type) {
        return Ok(Taken::Refused(Refusal::plain(format!(
            "a {} event on topic {}",
            envelope.aggregate_type, position.topic
        ))));
    }
    // A record its own version's schema refuses is refused by every release: parked or not.
    if let Err(violation) = registry.validate_payload(&envelope)
        && !violation.is_unknown_event()
    {
        return Ok(Taken::Refused(Refusal::from(&violation)));
    }
    let parked = Parked {
        envelope: &envelope,
        payload,
        traceparent,
        position,
    };
    if parking::is_parked(tx, envelope.aggregate_id).await? {
        parking::park(tx, &parked, "waits behind a parked record").await?;
        let still_parked = drain(tx, registry, envelope.aggregate_id).await?;
        return Ok(Taken::Outcome(if still_parked {
            RecordOutcome::Parked
        } else {
            RecordOutcome::Applied
        }));
    }
    Ok(
        match try_apply(tx, registry, &envelope, traceparent).await? {
            Tried::Done(outcome) => Taken::Outcome(outcome),
            Tried::Waits { reason, outcome } => {
                tracing::warn!(aggregate_id = %envelope.aggregate_id, sequence = envelope.sequence, %reason, "the saga parks the aggregate");
                parking::park(tx, &parked, &reason).await?;
                Taken::Outcome(outcome)
            }
            Tried::Refused(refusal) => Taken::Refused(refusal),
        },
    )
}

/// Takes the parked records of one aggregate in sequence order (arrival order within one
/// sequence) while each can be taken, removing each; the first that still cannot stays, with
/// its reason brought up to date, and so does everything after it. Whether any stays.
pub(crate) async fn drain(
    tx: &mut PgConnection,
    registry: &SchemaRegistry,
    aggregate_id: Uuid,
) -> anyhow::Result<bool> {
    for (id, payload, traceparent) in parking::records(tx, aggregate_id).await? {
        let reason = match registry.validate_envelope_bytes(&payload) {
            Err(violation) => violation.without_values(),
            Ok(envelope) => {
                match try_apply(tx, registry, &envelope, traceparent.as_deref()).await? {
                    Tried::Done(_) => {
                        parking::unpark(tx, id).await?;
                        continue;
                    }
                    Tried::Waits { reason, .. } => reason,
                    // A known record that does not decode any more: a defect of this build; it
                    // stays parked (and visible) rather than being passed over.
                    Tried::Refused(refusal) => refusal.for_log,
                }
            }
        };
        parking::set_reason(tx, id, &reason).await?;
        return Ok(true);
    }
    Ok(false)
}

/// What trying to take a record as a fact came to.
enum Tried {
    /// Applied, ignored, or a duplicate.
    Done(RecordOutcome),
    /// It cannot be taken yet: it parks its aggregate, counted as `outcome`.
    Waits {
        reason: String,
        outcome: RecordOutcome,
    },
    Refused(Refusal),
}

async fn try_apply(
    tx: &mut PgConnection,
    registry: &SchemaRegistry,
    envelope: &EventEnvelope,
    traceparent: Option<&str>,
) -> anyhow::Result<Tried> {
    let decoded = match decode(registry, envelope, traceparent) {
        Ok(decoded) => decoded,
        Err(refusal) if refusal.unknown => {
            return Ok(Tried::Waits {
                reason: format!(
                    "unknown event {} v{}: a release that knows it takes it",
                    envelope.event_type, envelope.event_version
                ),
                outcome: RecordOutcome::Parked,
            });
        }
        Err(refusal) => return Ok(Tried::Refused(refusal)),
    };
    match store::admit(tx, envelope.aggregate_id, envelope.sequence).await? {
        Admission::Next => {}
        Admission::Stale => return Ok(Tried::Done(RecordOutcome::Duplicate)),
        Admission::Gap { expected } => {
            tracing::error!(aggregate_id = %envelope.aggregate_id, sequence = envelope.sequence, expected, "gap in an aggregate stream; the saga parks it until the missing event arrives");
            return Ok(Tried::Waits {
                reason: format!(
                    "gap: sequence {} where {expected} was expected",
                    envelope.sequence
                ),
                outcome: RecordOutcome::Gap,
            });
        }
    }
    let applied = match decoded {
        Decoded::Booking(observed) => {
            change(tx, envelope.aggregate_id, |saga| {
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
                change(tx, *booking_id.as_uuid(), |saga| {
                    saga.on_facility(&observed);
                })
                .await?
            }
            FacilityEvent::OpeningHoursChanged { .. } => false,
        },
        Decoded::Payment(observed) => {
            let booking = match &observed.event {
                PaymentEvent::PaymentCaptured { booking_id, .. }
                | PaymentEvent::PaymentDeclined { booking_id, .. } => Some(*booking_id.as_uuid()),
                PaymentEvent::PaymentRefunded { .. } => {
                    store::booking_of_payment(tx, envelope.aggregate_id).await?
                }
            };
            if let Some(booking) = booking {
                change(tx, booking, |saga| {
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
            let changed = change(tx, booking, |saga| {
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
    Ok(Tried::Done(if applied {
        RecordOutcome::Applied
    } else {
        RecordOutcome::Ignored
    }))
}

/// Decoding into its aggregate's domain event: what a record must pass, beyond its envelope and
/// topic, before the saga trusts it.
fn decode(
    registry: &SchemaRegistry,
    envelope: &EventEnvelope,
    traceparent: Option<&str>,
) -> Result<Decoded, Refusal> {
    Ok(match envelope.aggregate_type {
        AggregateType::Booking => Decoded::Booking(observed(registry, envelope, traceparent)?),
        AggregateType::Facility => Decoded::Facility(observed(registry, envelope, traceparent)?),
        AggregateType::Payment => Decoded::Payment(observed(registry, envelope, traceparent)?),
        AggregateType::Saga => {
            let observed: Observed<SagaEvent> = observed(registry, envelope, traceparent)?;
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
    })
}

fn observed<E: domain::aggregate::DomainEvent>(
    registry: &SchemaRegistry,
    envelope: &EventEnvelope,
    traceparent: Option<&str>,
) -> Result<Observed<E>, Refusal> {
    Ok(Observed {
        event: registry
            .decode(envelope)
            .map_err(|violation| Refusal::from(&violation))?,
        event_id: envelope.event_id,
        correlation_id: envelope.correlation_id,
        occurred_at: envelope.occurred_at,
        traceparent: traceparent.map(str::to_owned),
        actor: format!("{} ({})", envelope.actor.subject, envelope.actor.role),
    })
}

/// Loads (or starts) a booking's saga, changes its facts, stores them.
async fn change(
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

/// Why a record is dead-lettered: the full text goes with the dead letter, the log gets a form
/// without the offending values (they may be personal data).
pub(crate) struct Refusal {
    full: String,
    for_log: String,
    /// An event type or version this release does not know: parked, not refused, by [`take`].
    unknown: bool,
}

impl Refusal {
    fn plain(text: String) -> Self {
        Self {
            for_log: text.clone(),
            full: text,
            unknown: false,
        }
    }
}

impl From<&ContractViolation> for Refusal {
    fn from(violation: &ContractViolation) -> Self {
        Self {
            full: violation.to_string(),
            for_log: violation.without_values(),
            unknown: violation.is_unknown_event(),
        }
    }
}
