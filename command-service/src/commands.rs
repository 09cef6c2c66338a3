//! The write path: decide against the folded stream, append, read the record back, answer.

use std::{sync::Arc, time::Duration};

use chrono::Utc;
use domain::error::DomainError;
use event_log::{EventProducer, LogError, LogPosition};
use schemas::{
    Actor, ContractViolation, EventEnvelope, EventMetadata, Idempotency, SchemaRegistry,
};
use thiserror::Error;
use uuid::Uuid;

use crate::store::{AggregateStore, Outcome as StoreOutcome, Stored};

/// What became of a command, as its answer and `commands_total{outcome}` (`crate::metrics`)
/// tell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CommandOutcome {
    /// Its events were appended and admitted.
    Accepted,
    /// Valid, but there was nothing to change (it was already so).
    NoOp,
    /// A retry with a known `Idempotency-Key`: the first answer again.
    Replayed,
    /// The domain refused it (a rule, an unknown id, a state that does not allow it).
    Rejected,
    /// Another writer won the race, or `If-Match` named another version.
    Conflict,
    /// The request could not become a command: malformed body, field rules, headers.
    Invalid,
    /// No valid token, or a role that may not send it.
    Denied,
    /// Over the caller's rate limit (429).
    Throttled,
    /// The service could not decide or append (broker down, still reading the log).
    Unavailable,
    /// A bug: the service refused its own answer (500).
    Error,
}

impl CommandOutcome {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::NoOp => "no_op",
            Self::Replayed => "replayed",
            Self::Rejected => "rejected",
            Self::Conflict => "conflict",
            Self::Invalid => "invalid",
            Self::Denied => "denied",
            Self::Throttled => "throttled",
            Self::Unavailable => "unavailable",
            Self::Error => "error",
        }
    }
}

/// Why a command did not produce an admitted event. "The domain said no" is kept apart from "the
/// log broke", and losing a race is its own variant.
#[derive(Debug, Error)]
pub(crate) enum CommandError {
    /// The aggregate's rules refused the command.
    #[error(transparent)]
    Rejected(#[from] DomainError),
    /// Another writer appended to this aggregate first; the client may re-read and retry.
    #[error("aggregate {aggregate_id} was changed concurrently (sequence {sequence} was taken)")]
    Conflict { aggregate_id: Uuid, sequence: u64 },
    /// The client's `If-Match` version is not the aggregate's version.
    #[error("aggregate {aggregate_id} is at version {actual}, not {expected}")]
    VersionMismatch {
        aggregate_id: Uuid,
        expected: u64,
        actual: u64,
    },
    /// The `Idempotency-Key` was used before by this caller for a different request.
    #[error("this Idempotency-Key was already used for a different request")]
    IdempotencyKeyReused,
    /// The service has not finished reading the log since it started.
    #[error("the service is still reading the log")]
    NotReady,
    /// The event was appended but could not be read back in time; it may yet be admitted.
    #[error("the outcome of the append is unknown")]
    OutcomeUnknown,
    /// The aggregate holds records this release cannot fold yet (a newer release wrote them,
    /// or one is missing): deciding on what it can fold could contradict the log. Nothing was
    /// appended, or what was waits behind them, to be decided by a release that can.
    #[error("aggregate {aggregate_id} is parked at {detail}")]
    Parked { aggregate_id: Uuid, detail: String },
    /// The broker failed.
    #[error(transparent)]
    Log(#[from] LogError),
    /// A decided event breaks its own schema: a rule the edge does not check yet. Nothing was
    /// appended.
    #[error("a decided event breaks the event contract: {0}")]
    Contract(#[from] ContractViolation),
}

/// What a successful command returns: the aggregate's new version and where its last event is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Appended {
    pub(crate) aggregate_id: Uuid,
    pub(crate) version: u64,
    /// `None` only for a command that changed nothing on a stream that has no events.
    pub(crate) position: Option<LogPosition>,
    /// Whether it appended, changed nothing, or repeated an earlier answer.
    pub(crate) outcome: CommandOutcome,
}

/// What a command did: where the stream now stands, and the events it decided (none for a
/// no-op or for a replay answered from the first outcome).
#[derive(Debug, Clone)]
pub(crate) struct Executed<E> {
    pub(crate) appended: Appended,
    pub(crate) events: Vec<E>,
}

/// Who sent a command, the retry token it carried, and the flow it belongs to.
#[derive(Debug, Clone)]
pub(crate) struct CommandContext {
    pub(crate) actor: Actor,
    /// Correlates every event of the flow this command starts or continues: the caller's
    /// `Correlation-Id`, or the command's own id when it starts a flow.
    pub(crate) correlation_id: Uuid,
    /// What caused the events this command appends: the caller's `Causation-Id` (the saga
    /// names the event it reacts to), or the command itself.
    pub(crate) causation_id: Uuid,
    pub(crate) idempotency: Option<Idempotency>,
}

/// Namespace of aggregate ids derived from idempotency keys.
const IDEMPOTENT_ID_NAMESPACE: Uuid = Uuid::from_u128(0x5f0e_7c1d_3b2a_4e6f_9a8b_1c2d_3e4f_5a6b);

impl CommandContext {
    pub(crate) fn new(actor: Actor, idempotency: Option<Idempotency>) -> Self {
        // The command's own id: it starts a flow and causes its events unless the caller says
        // otherwise.
        let command_id = Uuid::new_v4();
        Self {
            actor,
            correlation_id: command_id,
            causation_id: command_id,
            idempotency,
        }
    }

    /// The flow the caller named (`Correlation-Id`, `Causation-Id` headers), where it named one.
    pub(crate) fn within_flow(
        mut self,
        correlation_id: Option<Uuid>,
        causation_id: Option<Uuid>,
    ) -> Self {
        if let Some(correlation_id) = correlation_id {
            self.correlation_id = correlation_id;
        }
        if let Some(causation_id) = causation_id {
            self.causation_id = causation_id;
        }
        self
    }

    /// The id of an aggregate this command creates. With an idempotency key it is derived from
    /// the caller and the key, so a retry — even one racing the original on another replica —
    /// addresses the same stream and collides on its first sequence instead of creating a twin.
    pub(crate) fn new_aggregate_id(&self, aggregate: &str) -> Uuid {
        match &self.idempotency {
            Some(idempotency) => Uuid::new_v5(
                &IDEMPOTENT_ID_NAMESPACE,
                format!("{aggregate}\n{}\n{}", self.actor.subject, idempotency.key).as_bytes(),
            ),
            None => Uuid::new_v4(),
        }
    }

    fn metadata(&self) -> EventMetadata {
        EventMetadata {
            correlation_id: self.correlation_id,
            causation_id: self.causation_id,
            actor: self.actor.clone(),
            occurred_at: Utc::now(),
            idempotency: self.idempotency.clone(),
        }
    }
}

/// Refuses an envelope that readers would skip: what this service appends passes the same
/// contract check as what it reads, so a rule the API forgot to check cannot put a record into
/// the log that every reader refuses.
fn check_contract(
    registry: &SchemaRegistry,
    envelope: &EventEnvelope,
) -> Result<(), ContractViolation> {
    let document = serde_json::to_value(envelope)
        .map_err(|error| ContractViolation::NotJson(error.to_string()))?;
    registry.validate(&document).map(|_| ())
}

/// Runs commands against the aggregates in the store.
#[derive(Debug, Clone)]
pub(crate) struct CommandHandler {
    store: Arc<AggregateStore>,
    producer: EventProducer,
    /// The event contract every reader applies; what this service appends passes it first.
    registry: Arc<SchemaRegistry>,
    outcome_timeout: Duration,
    queues: Arc<AggregateQueues>,
    /// One queue per family (token subject) with a booking request in flight, so that its
    /// open bookings are counted after its previous request was read back (`family_turn`).
    families: Arc<AggregateQueues>,
}

/// Namespace of the queue keys of families (token subjects).
const FAMILY_QUEUE_NAMESPACE: Uuid = Uuid::from_u128(0x1b3e_9d2c_4a5f_4c7e_8f60_7d1e_2c3b_4a59);

/// One queue per aggregate with commands in flight in this process.
///
/// Commands on one aggregate inside one process run one after the other: each decides against
/// the outcome of the previous one instead of racing it to the log. Only writers in different
/// processes race, and the log's admission rule settles those. This keeps losing appends (and
/// 409s to clients) to the cross-process case.
#[derive(Debug, Default)]
struct AggregateQueues {
    queues: std::sync::Mutex<std::collections::HashMap<Uuid, Arc<tokio::sync::Mutex<()>>>>,
}

impl AggregateQueues {
    async fn enter(&self, aggregate_id: Uuid) -> QueueTurn<'_> {
        let queue = {
            let mut queues = self
                .queues
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            queues.entry(aggregate_id).or_default().clone()
        };
        let turn = queue.clone().lock_owned().await;
        QueueTurn {
            queues: self,
            aggregate_id,
            queue,
            _turn: turn,
        }
    }
}

/// The right to run a command on one aggregate; the queue is dropped when nobody waits on it.
pub(crate) struct QueueTurn<'a> {
    queues: &'a AggregateQueues,
    aggregate_id: Uuid,
    queue: Arc<tokio::sync::Mutex<()>>,
    _turn: tokio::sync::OwnedMutexGuard<()>,
}

impl Drop for QueueTurn<'_> {
    fn drop(&mut self) {
        let mut queues = self
            .queues
            .queues
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Two references: the map's and ours. Anyone else waiting holds a third.
        if Arc::strong_count(&self.queue) <= 2 {
            queues.remove(&self.aggregate_id);
        }
    }
}

impl CommandHandler {
    pub(crate) fn new(
        store: Arc<AggregateStore>,
        producer: EventProducer,
        registry: Arc<SchemaRegistry>,
        outcome_timeout: Duration,
    ) -> Self {
        Self {
            store,
            producer,
            registry,
            outcome_timeout,
            queues: Arc::default(),
            families: Arc::default(),
        }
    }

    /// The right to count a family's open bookings and append its next request, one request of
    /// that family at a time in this process: two requests racing cannot both see the count
    /// below the limit. (Two replicas can: then the family holds at most one more per replica,
    /// docs/security.md, API6.)
    pub(crate) async fn family_turn(&self, subject: &str) -> QueueTurn<'_> {
        self.families
            .enter(Uuid::new_v5(&FAMILY_QUEUE_NAMESPACE, subject.as_bytes()))
            .await
    }

    pub(crate) fn store(&self) -> &AggregateStore {
        &self.store
    }

    /// Decides `command` against aggregate `aggregate_id` and appends what it decided.
    ///
    /// `expected_version` is the client's `If-Match`. Each event is appended with the next
    /// sequence and read back before the next one is appended, so a command's events are
    /// admitted in order or the command reports a conflict at the first refused one.
    #[tracing::instrument(skip_all, fields(aggregate = A::AGGREGATE_TYPE, aggregate_id = %aggregate_id))]
    pub(crate) async fn execute<A: Stored>(
        &self,
        aggregate_id: Uuid,
        expected_version: Option<u64>,
        command: A::Command,
        context: &CommandContext,
    ) -> Result<Executed<A::Event>, CommandError> {
        if !self.store.is_caught_up() {
            return Err(CommandError::NotReady);
        }
        let _turn = self.queues.enter(aggregate_id).await;
        let replay = |appended| Executed {
            appended,
            events: Vec::new(),
        };
        if let Some(first) = self.first_outcome(context)? {
            return Ok(replay(first));
        }
        match self
            .decide_and_append::<A>(aggregate_id, expected_version, command, context)
            .await
        {
            // A twin of this command (same caller and key) may have won the race; if so its
            // outcome is this command's outcome.
            Err(conflict @ CommandError::Conflict { .. }) if context.idempotency.is_some() => {
                self.first_outcome(context)?.map(replay).ok_or(conflict)
            }
            other => other,
        }
    }

    /// The outcome of an earlier command with the same idempotency key, if there was one.
    fn first_outcome(&self, context: &CommandContext) -> Result<Option<Appended>, CommandError> {
        let Some(idempotency) = &context.idempotency else {
            return Ok(None);
        };
        let Some(recorded) = self
            .store
            .recorded(&context.actor.subject, &idempotency.key)
        else {
            return Ok(None);
        };
        if recorded.fingerprint != idempotency.fingerprint {
            return Err(CommandError::IdempotencyKeyReused);
        }
        Ok(Some(Appended {
            aggregate_id: recorded.aggregate_id,
            version: recorded.sequence,
            position: Some(recorded.position),
            outcome: CommandOutcome::Replayed,
        }))
    }

    async fn decide_and_append<A: Stored>(
        &self,
        aggregate_id: Uuid,
        expected_version: Option<u64>,
        command: A::Command,
        context: &CommandContext,
    ) -> Result<Executed<A::Event>, CommandError> {
        let metadata = context.metadata();
        if let Some(detail) = self.store.parked::<A>(aggregate_id) {
            return Err(CommandError::Parked {
                aggregate_id,
                detail,
            });
        }
        let stream = self.store.read::<A>(aggregate_id);
        if let Some(expected) = expected_version.filter(|expected| *expected != stream.version) {
            return Err(CommandError::VersionMismatch {
                aggregate_id,
                expected,
                actual: stream.version,
            });
        }
        let events = A::decide(&stream.state, command)?;
        let mut appended = Appended {
            aggregate_id,
            version: stream.version,
            position: stream.last_position,
            outcome: CommandOutcome::NoOp,
        };
        for event in &events {
            let sequence = appended.version + 1;
            let envelope = EventEnvelope::wrap(A::KIND, aggregate_id, sequence, event, &metadata)
                .map_err(LogError::from)?;
            check_contract(&self.registry, &envelope)?;
            let position = self.append_and_confirm(&envelope).await?;
            appended = Appended {
                aggregate_id,
                version: sequence,
                position: Some(position),
                outcome: CommandOutcome::Accepted,
            };
        }
        Ok(Executed { appended, events })
    }

    async fn append_and_confirm(
        &self,
        envelope: &EventEnvelope,
    ) -> Result<LogPosition, CommandError> {
        // Dropped on every way out (an error, the outcome, or the request cut short by its
        // timeout while the producer still retries), which ends the wait in the store.
        let mut awaited = self.store.await_outcome(envelope.event_id);
        let started = std::time::Instant::now();
        let position = self.producer.append(envelope).await?;
        let result = tokio::time::timeout(self.outcome_timeout, awaited.outcome()).await;
        let admission = match &result {
            Ok(Ok(StoreOutcome::Admitted(_))) => "admitted",
            Ok(Ok(StoreOutcome::Refused)) => "refused",
            Ok(Ok(StoreOutcome::Parked)) => "parked",
            Ok(Err(_)) | Err(_) => "unknown",
        };
        metrics::histogram!(
            "command_append_seconds",
            "aggregate" => envelope.aggregate_type.as_str(),
            "admission" => admission,
        )
        .record(started.elapsed().as_secs_f64());
        match result {
            // Where the log admitted it, which is where the producer said it landed unless the
            // producer wrote it twice (then the first copy is the event, the second is stale).
            Ok(Ok(StoreOutcome::Admitted(admitted))) => {
                if admitted != position {
                    tracing::warn!(event_id = %envelope.event_id, admitted = %admitted.offset, reported = %position.offset, partition = admitted.partition, "the event was written twice; answering with the admitted copy");
                }
                Ok(admitted)
            }
            Ok(Ok(StoreOutcome::Refused)) => Err(CommandError::Conflict {
                aggregate_id: envelope.aggregate_id,
                sequence: envelope.sequence,
            }),
            Ok(Ok(StoreOutcome::Parked)) => Err(CommandError::Parked {
                aggregate_id: envelope.aggregate_id,
                detail: format!(
                    "sequence {}, appended behind parked records",
                    envelope.sequence
                ),
            }),
            Ok(Err(_)) | Err(_) => {
                tracing::error!(event_id = %envelope.event_id, offset = position.offset, "appended event was not read back in time");
                Err(CommandError::OutcomeUnknown)
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use domain::{
        payment::PaymentEvent,
        values::{BookingId, Money, PaymentId},
    };
    use schemas::{AggregateType, EventMetadata};

    use super::*;

    /// A `PaymentDeclined` event at sequence 1 of a new payment, for the store's tests too.
    pub(crate) fn declined(reason: &str) -> EventEnvelope {
        let booking_id = BookingId::new();
        let event = PaymentEvent::PaymentDeclined {
            payment_id: PaymentId::for_booking(booking_id),
            booking_id,
            amount: Money::new(125_000, domain::values::Currency::GBP).expect("a valid amount"),
            reason: reason.to_owned(),
        };
        let id = *PaymentId::for_booking(booking_id).as_uuid();
        EventEnvelope::wrap(
            AggregateType::Payment,
            id,
            1,
            &event,
            &EventMetadata::system("saga"),
        )
        .expect("domain events serialise")
    }

    #[test]
    fn an_event_that_breaks_its_schema_is_refused_before_the_append() {
        let registry = SchemaRegistry::load().expect("the schemas compile");
        assert!(check_contract(&registry, &declined("card expired")).is_ok());
        assert!(matches!(
            check_contract(&registry, &declined("")),
            Err(ContractViolation::Payload { .. })
        ));
    }
}
