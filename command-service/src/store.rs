//! The command side's view of every aggregate: each stream folded from the log with the same
//! admission rule every reader uses ([`event_log::resolution`]).
//!
//! A tailer task reads every event topic and keeps reading. Writers decide against this view,
//! append, and then wait for the tailer to reach their own record: only then do they know
//! whether their event was admitted or lost a race (`docs/consistency.md`).
//!
//! Everything the tailer folds — streams, the idempotency index, and the next offset of every
//! partition — sits behind one lock and changes together per record, so a snapshot taken under
//! that lock is a consistent cut of the log (see `snapshot`).

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, Mutex, PoisonError, RwLock,
        atomic::{AtomicBool, Ordering},
    },
};

use domain::{
    aggregate::Aggregate, booking::Booking, facility::Facility, payment::Payment, saga::Saga,
};
use event_log::{
    LogError, LogPosition, Topics,
    consumer::{self, TopicPartition},
    resolution::{Admission, admit},
};
use futures::StreamExt;
use platform::shutdown::CancellationToken;
use rdkafka::{
    Message,
    consumer::{Consumer, StreamConsumer},
};
use schemas::{AggregateType, ContractViolation, EventEnvelope, SchemaRegistry};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use uuid::Uuid;

/// One aggregate's folded stream.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Stream<S> {
    /// The sequence of the last admitted event; 0 for a stream with no events.
    pub(crate) version: u64,
    pub(crate) state: S,
    /// Where the last admitted event sits, for a no-op command's consistency token.
    pub(crate) last_position: Option<LogPosition>,
    /// The token subject whose command created the stream (a family may act only on the
    /// bookings it created).
    pub(crate) owner: Option<String>,
}

/// The first outcome of a command that carried an `Idempotency-Key`, as found in the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Recorded {
    pub(crate) fingerprint: String,
    pub(crate) aggregate_id: Uuid,
    pub(crate) sequence: u64,
    pub(crate) position: LogPosition,
    pub(crate) occurred_at: chrono::DateTime<chrono::Utc>,
}

/// What happened to an appended event once the log was read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Admitted at this position: the first record of the event the log holds. The producer
    /// may have written the event twice (librdkafka resends what was in flight when it bumps
    /// an idempotent producer's epoch after a timeout), so this, not the position the producer
    /// reported, is where every reader admits it.
    Admitted(LogPosition),
    /// Another event took the sequence first (or the stream has a gap); this one is ignored by
    /// every reader.
    Refused,
}

/// A writer's wait for its event to be read back. Dropping it forgets the event: a write cut
/// short (the HTTP request timed out while the producer still retried) or whose append failed
/// leaves nothing behind in the store.
#[derive(Debug)]
pub(crate) struct Awaited<'a> {
    store: &'a AggregateStore,
    event_id: Uuid,
    receiver: oneshot::Receiver<Outcome>,
}

impl Awaited<'_> {
    /// The event's outcome once the store has read it; an error if the store went away.
    pub(crate) async fn outcome(&mut self) -> Result<Outcome, oneshot::error::RecvError> {
        (&mut self.receiver).await
    }
}

impl Drop for Awaited<'_> {
    fn drop(&mut self) {
        self.store.forget(self.event_id);
    }
}

/// Everything folded from the log, as of `positions`.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Folded {
    facilities: HashMap<Uuid, Stream<<Facility as Aggregate>::State>>,
    bookings: HashMap<Uuid, Stream<<Booking as Aggregate>::State>>,
    payments: HashMap<Uuid, Stream<<Payment as Aggregate>::State>>,
    /// The sagas' decision streams (absent from snapshots written before they existed).
    #[serde(default)]
    sagas: HashMap<Uuid, Stream<<Saga as Aggregate>::State>>,
    /// `"subject\nkey"` → the admitted event of the first command with that key.
    idempotency: HashMap<String, Recorded>,
    /// The next offset to read of every partition (`"topic\npartition"`), for a snapshot.
    pub(crate) positions: BTreeMap<String, i64>,
}

/// The key of a partition in [`Folded::positions`] (JSON object keys must be strings).
pub(crate) fn partition_key(topic: &str, partition: i32) -> String {
    format!("{topic}\n{partition}")
}

fn idempotency_key(subject: &str, key: &str) -> String {
    format!("{subject}\n{key}")
}

/// An aggregate kept in the store: which map holds it and which topic carries it.
pub(crate) trait Stored: Aggregate {
    const KIND: AggregateType;
    fn streams(folded: &Folded) -> &HashMap<Uuid, Stream<Self::State>>;
    fn streams_mut(folded: &mut Folded) -> &mut HashMap<Uuid, Stream<Self::State>>;
}

macro_rules! stored {
    ($aggregate:ty, $kind:expr, $field:ident) => {
        impl Stored for $aggregate {
            const KIND: AggregateType = $kind;
            fn streams(folded: &Folded) -> &HashMap<Uuid, Stream<Self::State>> {
                &folded.$field
            }
            fn streams_mut(folded: &mut Folded) -> &mut HashMap<Uuid, Stream<Self::State>> {
                &mut folded.$field
            }
        }
    };
}

stored!(Facility, AggregateType::Facility, facilities);
stored!(Booking, AggregateType::Booking, bookings);
stored!(Payment, AggregateType::Payment, payments);
stored!(Saga, AggregateType::Saga, sagas);

/// Every aggregate's state, and the writers waiting to learn their outcome.
#[derive(Debug)]
pub(crate) struct AggregateStore {
    folded: RwLock<Folded>,
    waiting: Mutex<HashMap<Uuid, oneshot::Sender<Outcome>>>,
    caught_up: AtomicBool,
    registry: Arc<SchemaRegistry>,
    /// Which aggregate type each event topic may carry.
    topics: Topics,
    /// A key is a retry token, not a permanent name: entries older than this are not kept.
    idempotency_retention: chrono::Duration,
}

impl AggregateStore {
    /// A store that starts from `folded` (empty, or restored from a snapshot).
    pub(crate) fn new(
        registry: Arc<SchemaRegistry>,
        topics: Topics,
        idempotency_retention: std::time::Duration,
        mut folded: Folded,
    ) -> Self {
        let idempotency_retention =
            chrono::Duration::from_std(idempotency_retention).unwrap_or(chrono::Duration::MAX);
        let horizon = chrono::Utc::now() - idempotency_retention;
        folded
            .idempotency
            .retain(|_, recorded| recorded.occurred_at >= horizon);
        Self {
            folded: RwLock::new(folded),
            waiting: Mutex::default(),
            caught_up: AtomicBool::new(false),
            registry,
            topics,
            idempotency_retention,
        }
    }

    /// A copy of one stream (a fresh empty one if it has no events).
    pub(crate) fn read<A: Stored>(&self, id: Uuid) -> Stream<A::State> {
        let folded = self.folded.read().unwrap_or_else(PoisonError::into_inner);
        A::streams(&folded).get(&id).cloned().unwrap_or_default()
    }

    /// How many of the bookings `subject` created are open as of `now`
    /// (`BookingState::is_open`): what a family's open-booking limit counts. A scan of every
    /// booking in memory (a few milliseconds for a hundred thousand), done only for a family's
    /// request.
    pub(crate) fn open_bookings_of(
        &self,
        subject: &str,
        now: chrono::DateTime<chrono::Utc>,
    ) -> usize {
        let folded = self.folded.read().unwrap_or_else(PoisonError::into_inner);
        folded
            .bookings
            .values()
            .filter(|stream| stream.owner.as_deref() == Some(subject) && stream.state.is_open(now))
            .count()
    }

    /// The first outcome of the caller's command with this idempotency key, if it is in the log.
    pub(crate) fn recorded(&self, subject: &str, key: &str) -> Option<Recorded> {
        let folded = self.folded.read().unwrap_or_else(PoisonError::into_inner);
        folded
            .idempotency
            .get(&idempotency_key(subject, key))
            .cloned()
    }

    /// Runs `f` on a consistent view of everything folded so far (for snapshots).
    pub(crate) fn with_folded<T>(&self, f: impl FnOnce(&Folded) -> T) -> T {
        f(&self.folded.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Where the tailer is to resume: the next offset of every partition folded so far.
    fn positions(&self) -> BTreeMap<String, i64> {
        self.with_folded(|folded| folded.positions.clone())
    }

    /// Whether the store had read the whole log as it stood at start-up.
    pub(crate) fn is_caught_up(&self) -> bool {
        self.caught_up.load(Ordering::Acquire)
    }

    /// Registers interest in an event's outcome. Call before appending it, so that the tailer
    /// cannot pass the record before anyone listens.
    pub(crate) fn await_outcome(&self, event_id: Uuid) -> Awaited<'_> {
        let (sender, receiver) = oneshot::channel();
        self.waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(event_id, sender);
        Awaited {
            store: self,
            event_id,
            receiver,
        }
    }

    /// Drops interest in an event whose append failed.
    fn forget(&self, event_id: Uuid) {
        self.waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&event_id);
    }

    /// Applies one record read from the log. A record no reader can use is passed over here,
    /// before it can take a sequence: one that breaks the contract, an event on another
    /// aggregate's topic, or one that passes its schemas but does not decode into a domain
    /// event (`fold` decodes before it admits). The readers with a position of their own (the
    /// projector, the saga runner) dead-letter such a record; this view is rebuilt from the log
    /// at every start by every replica, so a dead letter from here would be written again each
    /// time (docs/saga.md, "Poison"). What this service appends passes the same checks first
    /// (`crate::commands`).
    fn apply_record(&self, position: LogPosition, payload: Option<&[u8]>) {
        let envelope = match payload.map(|bytes| self.registry.validate_bytes(bytes)) {
            Some(Ok(envelope))
                if self.topics.aggregate_of(&position.topic) == Some(envelope.aggregate_type) =>
            {
                Some(envelope)
            }
            Some(Ok(envelope)) => {
                skipped("wrong_topic");
                tracing::warn!(aggregate_type = %envelope.aggregate_type, topic = %position.topic, offset = position.offset, "skipping an event on another aggregate's topic");
                None
            }
            Some(Err(violation)) => {
                skipped("contract");
                tracing::warn!(violation = %violation.without_values(), topic = %position.topic, offset = position.offset, "skipping an invalid record");
                None
            }
            None => {
                skipped("contract");
                tracing::warn!(topic = %position.topic, offset = position.offset, "skipping a record without a value");
                None
            }
        };
        let mut folded = self.folded.write().unwrap_or_else(PoisonError::into_inner);
        folded.positions.insert(
            partition_key(&position.topic, position.partition),
            position.offset + 1,
        );
        let Some(envelope) = envelope else { return };
        let outcome = match envelope.aggregate_type {
            AggregateType::Facility => self.fold::<Facility>(&mut folded, &envelope, position),
            AggregateType::Booking => self.fold::<Booking>(&mut folded, &envelope, position),
            AggregateType::Payment => self.fold::<Payment>(&mut folded, &envelope, position),
            AggregateType::Saga => self.fold::<Saga>(&mut folded, &envelope, position),
        };
        drop(folded);
        let outcome = outcome.unwrap_or_else(|violation| {
            skipped("undecodable");
            tracing::warn!(violation = %violation.without_values(), "skipping an event that does not decode");
            Outcome::Refused
        });
        let waiter = self
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&envelope.event_id);
        if let Some(waiter) = waiter {
            // The writer may have given up waiting; then nobody needs the answer.
            let _ = waiter.send(outcome);
        }
    }

    fn fold<A: Stored>(
        &self,
        folded: &mut Folded,
        envelope: &EventEnvelope,
        position: LogPosition,
    ) -> Result<Outcome, ContractViolation> {
        let event: A::Event = self.registry.decode(envelope)?;
        let stream = A::streams_mut(folded)
            .entry(envelope.aggregate_id)
            .or_default();
        match admit(stream.version, envelope.sequence) {
            Admission::Next => {
                stream.state = A::evolve(std::mem::take(&mut stream.state), &event);
                stream.version = envelope.sequence;
                stream
                    .owner
                    .get_or_insert_with(|| envelope.actor.subject.clone());
                stream.last_position = Some(position.clone());
                self.remember_idempotency(folded, envelope, position.clone());
                Ok(Outcome::Admitted(position))
            }
            Admission::Stale => Ok(Outcome::Refused),
            Admission::Gap { expected } => {
                tracing::error!(
                    aggregate_id = %envelope.aggregate_id,
                    sequence = envelope.sequence,
                    expected,
                    "gap in an aggregate stream; event not applied"
                );
                Ok(Outcome::Refused)
            }
        }
    }

    fn remember_idempotency(
        &self,
        folded: &mut Folded,
        envelope: &EventEnvelope,
        position: LogPosition,
    ) {
        let Some(idempotency) = &envelope.idempotency else {
            return;
        };
        if envelope.occurred_at < chrono::Utc::now() - self.idempotency_retention {
            return;
        }
        let recorded = Recorded {
            fingerprint: idempotency.fingerprint.clone(),
            aggregate_id: envelope.aggregate_id,
            sequence: envelope.sequence,
            position,
            occurred_at: envelope.occurred_at,
        };
        // The first admitted event of a command is its outcome; later events of the same
        // command (or a replay that decided nothing) must not replace it.
        folded
            .idempotency
            .entry(idempotency_key(&envelope.actor.subject, &idempotency.key))
            .or_insert(recorded);
    }
}

/// Counts a record the store passed over (`command_store_records_skipped_total{reason}`:
/// `contract`, `wrong_topic`, `undecodable`).
fn skipped(reason: &'static str) {
    metrics::counter!("command_store_records_skipped_total", "reason" => reason).increment(1);
}

/// Reads every event topic into the store until `shutdown`.
pub(crate) struct Tailer {
    consumer: StreamConsumer,
    /// Where each partition ended at start-up: the store is caught up once it has read there.
    targets: BTreeMap<TopicPartition, i64>,
    /// Where reading starts: 0, or the snapshot's offsets.
    starts: BTreeMap<TopicPartition, i64>,
}

impl std::fmt::Debug for Tailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tailer")
            .field("targets", &self.targets)
            .finish_non_exhaustive()
    }
}

/// The log as the tailer found it when it connected: which cluster holds it, and where each
/// partition of every event topic ends. A snapshot is checked against it before it is trusted.
pub(crate) struct LogHead {
    consumer: StreamConsumer,
    /// The broker's cluster id (`None` if the broker does not say).
    pub(crate) cluster_id: Option<String>,
    /// The next offset of each partition at connection time.
    pub(crate) ends: BTreeMap<TopicPartition, i64>,
}

impl std::fmt::Debug for LogHead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogHead")
            .field("cluster_id", &self.cluster_id)
            .field("ends", &self.ends)
            .finish_non_exhaustive()
    }
}

impl LogHead {
    /// Connects to the broker and learns its cluster id and the end of every event partition.
    /// Blocks: run it off the async runtime.
    pub(crate) fn read(
        settings: &event_log::KafkaSettings,
        client_id: &str,
    ) -> Result<Self, LogError> {
        let consumer = consumer::manual_consumer(settings, client_id)?;
        let topics = Topics::new(&settings.topic_prefix).event_topics();
        let partitions = consumer::partitions(&consumer, &topics, settings)?;
        let ends = consumer::end_offsets(&consumer, &partitions, settings)?;
        let cluster_id = consumer.client().fetch_cluster_id(settings.request_timeout);
        Ok(Self {
            consumer,
            cluster_id,
            ends,
        })
    }
}

impl Tailer {
    /// Assigns every partition of every event topic from where the store stands (offset 0 for a
    /// fresh store); the store is caught up once it has read to where `head` found each
    /// partition's end. A partition the store knows nothing of (new partitions) starts at 0.
    pub(crate) fn start(head: LogHead, store: &AggregateStore) -> Result<Self, LogError> {
        let LogHead {
            consumer,
            ends: targets,
            ..
        } = head;
        let known = store.positions();
        let starts: BTreeMap<TopicPartition, i64> = targets
            .keys()
            .map(|(topic, partition)| {
                let start = known
                    .get(&partition_key(topic, *partition))
                    .copied()
                    .unwrap_or(0);
                ((topic.clone(), *partition), start)
            })
            .collect();
        consumer::assign(&consumer, &starts)?;
        Ok(Self {
            consumer,
            targets,
            starts,
        })
    }

    /// How many records stand between the store and the end of the log as it was at start-up.
    pub(crate) fn backlog(&self) -> i64 {
        self.targets
            .iter()
            .map(|(partition, end)| end - self.starts.get(partition).copied().unwrap_or(0))
            .filter(|behind| *behind > 0)
            .sum()
    }

    /// Runs until `shutdown` is cancelled.
    pub(crate) async fn run(self, store: Arc<AggregateStore>, shutdown: CancellationToken) {
        let starts = self.starts;
        let mut remaining: BTreeMap<TopicPartition, i64> = self
            .targets
            .into_iter()
            .filter(|(partition, end)| *end > starts.get(partition).copied().unwrap_or(0))
            .collect();
        if remaining.is_empty() {
            store.caught_up.store(true, Ordering::Release);
        }
        let mut stream = self.consumer.stream();
        loop {
            let message = tokio::select! {
                () = shutdown.cancelled() => break,
                message = stream.next() => message,
            };
            let Some(message) = message else { break };
            let message = match message {
                Ok(message) => message,
                Err(error) => {
                    tracing::warn!(%error, "error reading the log; retrying");
                    continue;
                }
            };
            let position = LogPosition {
                topic: message.topic().to_owned(),
                partition: message.partition(),
                offset: message.offset(),
            };
            let key = (position.topic.clone(), position.partition);
            let next_offset = position.offset + 1;
            store.apply_record(position, message.payload());
            if remaining.get(&key).is_some_and(|end| next_offset >= *end) {
                remaining.remove(&key);
                if remaining.is_empty() {
                    tracing::info!("aggregate store caught up with the log");
                    store.caught_up.store(true, Ordering::Release);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::tests::declined;

    fn empty_store() -> AggregateStore {
        AggregateStore::new(
            Arc::new(SchemaRegistry::load().expect("the schemas compile")),
            Topics::new("fm"),
            std::time::Duration::from_mins(1),
            Folded::default(),
        )
    }

    /// Found by the chaos soak on three brokers (docs/reliability.md, broker finding 1): after
    /// a stalled leader timed a message out, librdkafka bumped the producer's epoch and resent
    /// another in-flight event, which was already written; the writer answered with the second
    /// copy's offset, a record every reader refuses as stale.
    #[test]
    fn an_event_written_twice_is_admitted_at_its_first_copy_and_the_writer_learns_that_one() {
        let store = empty_store();
        let envelope = declined("card expired");
        let bytes = serde_json::to_vec(&envelope).expect("an envelope serialises");
        let at = |offset| LogPosition {
            topic: "fm.payment.events".to_owned(),
            partition: 1,
            offset,
        };
        let mut awaited = store.await_outcome(envelope.event_id);
        store.apply_record(at(26), Some(&bytes));
        store.apply_record(at(28), Some(&bytes));
        assert_eq!(awaited.receiver.try_recv(), Ok(Outcome::Admitted(at(26))));
        let stream = store.read::<Payment>(envelope.aggregate_id);
        assert_eq!(stream.version, 1);
        assert_eq!(stream.last_position, Some(at(26)));
    }

    /// A write whose HTTP request timed out while the producer still retried drops its wait;
    /// the store must not keep it (it did, for every write whose append then failed).
    #[test]
    fn a_wait_given_up_leaves_nothing_behind() {
        let store = empty_store();
        let awaited = store.await_outcome(Uuid::new_v4());
        assert_eq!(store.waiting.lock().map(|w| w.len()).unwrap_or_default(), 1);
        drop(awaited);
        assert_eq!(store.waiting.lock().map(|w| w.len()).unwrap_or_default(), 0);
    }
}
