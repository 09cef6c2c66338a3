//! The command side's view of every aggregate: each stream folded from the log with the same
//! admission rule every reader uses ([`event_log::resolution`]).
//!
//! A tailer task reads every event topic and keeps reading. Writers decide against this view,
//! append, and then wait for the tailer to reach their own record: only then do they know
//! whether their event was admitted or lost a race (`docs/consistency.md`).
//!
//! Everything the tailer folds — streams, the idempotency index, the parked records, and the
//! next offset of every partition — sits behind one lock and changes together per record. A
//! snapshot is written a chunk at a time, the offsets first ([`Live`]). What no command can
//! reach any more is forgotten (docs/memory.md): a facility's ended reservations, idempotency
//! keys past their retention ([`run_sweeper`]); every stream names its topic by its type and
//! shares its owner's name ([`Kept`]).
//!
//! A record this release cannot fold yet parks its aggregate, as in every other reader
//! (docs/evolution.md, "Unknown is parked, not skipped"): one of an event type or version this
//! release does not know (a newer release wrote it), or one beyond the next sequence of its
//! stream (a gap). It and every later record of that aggregate wait in [`Folded`], in sequence
//! order, while every other aggregate goes on; commands on a parked aggregate answer 503
//! instead of deciding on a state that misses what the log holds. The records are folded, in
//! order, as soon as they can be: when a record of the aggregate arrives (it may fill the gap),
//! and when a store starts (a newer release may know what an older one parked).

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{
        Arc, Mutex, PoisonError, RwLock,
        atomic::{AtomicBool, AtomicI64, Ordering},
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
use schemas::{AggregateType, EventEnvelope, SchemaRegistry};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use uuid::Uuid;

/// One aggregate's folded stream, as a command decides on it (a copy of what the store keeps).
#[derive(Debug, Clone, Default)]
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

/// One aggregate's folded stream as the store keeps it (docs/memory.md): where its last event
/// sits without the topic's name (the aggregate's type names it), and its owner shared with
/// every other stream of the same subject, because a name repeated per stream cost more than
/// most states.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Kept<S> {
    version: u64,
    state: S,
    /// A snapshot of format 3 also names the topic here; it is not read.
    #[serde(default)]
    last_position: Option<At>,
    #[serde(default, with = "shared_name")]
    owner: Option<Arc<str>>,
}

/// Where in its aggregate's topic an event sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct At {
    partition: i32,
    offset: i64,
}

/// (De)serialises a shared name as a plain string (serde's `rc` feature is not enabled).
mod shared_name {
    use std::sync::Arc;

    use serde::{Deserialize, Deserializer, Serializer};

    #[expect(clippy::ref_option, reason = "the signature serde's `with` calls")]
    pub(super) fn serialize<S: Serializer>(
        name: &Option<Arc<str>>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match name {
            Some(name) => serializer.serialize_some(&**name),
            None => serializer.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Arc<str>>, D::Error> {
        Ok(Option::<String>::deserialize(deserializer)?.map(Arc::from))
    }
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
    /// Another event took the sequence first; this one is ignored by every reader.
    Refused,
    /// Its aggregate is parked: this release cannot fold the record, or one before it, yet
    /// (a newer release may; the event's fate is decided there).
    Parked,
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

/// Every stream of one aggregate type. Each stream is boxed: a table keeps a share of its slots
/// empty, and a slot is then a key and a pointer rather than a whole stream (docs/memory.md).
pub(crate) type Streams<S> = HashMap<Uuid, Box<Kept<S>>>;

/// Everything folded from the log, as of `positions`.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Folded {
    facilities: Streams<<Facility as Aggregate>::State>,
    bookings: Streams<<Booking as Aggregate>::State>,
    payments: Streams<<Payment as Aggregate>::State>,
    /// The sagas' decision streams (absent from snapshots written before they existed).
    #[serde(default)]
    sagas: Streams<<Saga as Aggregate>::State>,
    /// `"subject\nkey"` → the admitted event of the first command with that key.
    idempotency: HashMap<String, Recorded>,
    /// `"type\nid"` → the records of an aggregate this release cannot fold yet, in sequence
    /// order (arrival order within one sequence, so the first writer of a sequence wins).
    #[serde(default)]
    parked: BTreeMap<String, Vec<ParkedRecord>>,
    /// The next offset to read of every partition (`"topic\npartition"`), for a snapshot.
    pub(crate) positions: BTreeMap<String, i64>,
    /// Every stream's owner, once: streams share these (see [`Kept`]); the sweep drops the
    /// names no stream holds any more.
    #[serde(skip)]
    owners: HashSet<Arc<str>>,
}

impl Folded {
    /// The shared copy of `subject`.
    fn owner(&mut self, subject: &str) -> Arc<str> {
        if let Some(owner) = self.owners.get(subject) {
            return owner.clone();
        }
        let owner: Arc<str> = Arc::from(subject);
        self.owners.insert(owner.clone());
        owner
    }

    /// Shares the owners of streams read from a snapshot (each was read as its own string).
    fn share_owners(&mut self) {
        fn share<S>(owners: &mut HashSet<Arc<str>>, streams: &mut Streams<S>) {
            for kept in streams.values_mut() {
                if let Some(owner) = kept.owner.as_mut() {
                    match owners.get(&**owner) {
                        Some(shared) => *owner = shared.clone(),
                        None => {
                            owners.insert(owner.clone());
                        }
                    }
                }
            }
        }
        share(&mut self.owners, &mut self.facilities);
        share(&mut self.owners, &mut self.bookings);
        share(&mut self.owners, &mut self.payments);
        share(&mut self.owners, &mut self.sagas);
    }
}

/// The key of a partition in [`Folded::positions`] (JSON object keys must be strings).
pub(crate) fn partition_key(topic: &str, partition: i32) -> String {
    format!("{topic}\n{partition}")
}

fn idempotency_key(subject: &str, key: &str) -> String {
    format!("{subject}\n{key}")
}

fn parked_key(kind: AggregateType, id: Uuid) -> String {
    format!("{kind}\n{id}")
}

/// A record kept until its aggregate can fold it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ParkedRecord {
    envelope: EventEnvelope,
    position: LogPosition,
    /// Why it is not folded (without personal data).
    reason: String,
    parked_at: chrono::DateTime<chrono::Utc>,
}

/// Why a record was not folded into its stream.
enum NotFolded {
    /// Its sequence is beyond the next one of its stream.
    Gap { expected: u64 },
    /// This release does not know its (event type, version).
    Unknown,
    /// It passes its schemas but does not decode into a domain event: every reader refuses it.
    Undecodable,
}

impl NotFolded {
    /// Why a record that parks is parked; `None` for one that is passed over.
    fn parking_reason(&self, envelope: &EventEnvelope) -> Option<String> {
        match self {
            Self::Gap { expected } => Some(format!(
                "gap: sequence {} where {expected} was expected",
                envelope.sequence
            )),
            Self::Unknown => Some(format!(
                "unknown event {} v{}: a release that knows it folds it",
                envelope.event_type, envelope.event_version
            )),
            Self::Undecodable => None,
        }
    }
}

/// An aggregate kept in the store: which map holds it and which topic carries it.
pub(crate) trait Stored: Aggregate {
    const KIND: AggregateType;
    fn streams(folded: &Folded) -> &Streams<Self::State>;
    fn streams_mut(folded: &mut Folded) -> &mut Streams<Self::State>;
    /// Forgets, once an event is folded, what no command can reach any more (docs/memory.md):
    /// a facility's reservations that ended, so a replay of years of history never holds
    /// them. Nothing for the other aggregates.
    fn forget_unreachable(_state: &mut Self::State, _now: chrono::DateTime<chrono::Utc>) {}
}

macro_rules! stored {
    ($aggregate:ty, $kind:expr, $field:ident $(, $forget:expr)?) => {
        impl Stored for $aggregate {
            const KIND: AggregateType = $kind;
            fn streams(folded: &Folded) -> &Streams<Self::State> {
                &folded.$field
            }
            fn streams_mut(folded: &mut Folded) -> &mut Streams<Self::State> {
                &mut folded.$field
            }
            $(
                fn forget_unreachable(state: &mut Self::State, now: chrono::DateTime<chrono::Utc>) {
                    $forget(state, now);
                }
            )?
        }
    };
}

stored!(
    Facility,
    AggregateType::Facility,
    facilities,
    |state: &mut domain::facility::FacilityState, now| {
        state.forget_ended_reservations(now - RESERVATION_MARGIN);
    }
);
stored!(Booking, AggregateType::Booking, bookings);
stored!(Payment, AggregateType::Payment, payments);
stored!(Saga, AggregateType::Saga, sagas);

/// Every aggregate's state, and the writers waiting to learn their outcome.
#[derive(Debug)]
pub(crate) struct AggregateStore {
    folded: RwLock<Folded>,
    waiting: Mutex<HashMap<Uuid, oneshot::Sender<Outcome>>>,
    caught_up: AtomicBool,
    /// How many records the tailer is behind the end of the log, as the lag monitor last
    /// measured it (`crate::lag`); -1 before the first measure.
    lag: AtomicI64,
    registry: Arc<SchemaRegistry>,
    /// Which aggregate type each event topic may carry.
    topics: Topics,
    /// A key is a retry token, not a permanent name: entries older than this are not kept.
    idempotency_retention: chrono::Duration,
}

impl AggregateStore {
    /// A store that starts from `folded` (empty, or restored from a snapshot). What the
    /// snapshot's release parked is folded now if this release can.
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
        let store = Self {
            folded: RwLock::new(Folded::default()),
            waiting: Mutex::default(),
            caught_up: AtomicBool::new(false),
            lag: AtomicI64::new(-1),
            registry,
            topics,
            idempotency_retention,
        };
        folded.share_owners();
        let keys: Vec<String> = folded.parked.keys().cloned().collect();
        for key in keys {
            store.drain(&mut folded, &key);
        }
        forget_ended_reservations(&mut folded, chrono::Utc::now());
        set_parked_gauge(&folded);
        *store.folded.write().unwrap_or_else(PoisonError::into_inner) = folded;
        store
    }

    /// A copy of one stream (a fresh empty one if it has no events).
    pub(crate) fn read<A: Stored>(&self, id: Uuid) -> Stream<A::State> {
        let folded = self.folded.read().unwrap_or_else(PoisonError::into_inner);
        let Some(kept) = A::streams(&folded).get(&id) else {
            return Stream::default();
        };
        Stream {
            version: kept.version,
            state: kept.state.clone(),
            last_position: kept.last_position.map(|at| LogPosition {
                topic: self.topics.events(A::KIND),
                partition: at.partition,
                offset: at.offset,
            }),
            owner: kept.owner.as_deref().map(str::to_owned),
        }
    }

    /// Forgets what no command can need any more (docs/memory.md): idempotency keys past
    /// their retention, and facility reservations that ended, turnaround included, more than
    /// [`RESERVATION_MARGIN`] before `now`; and the owners' names no stream holds. Under the
    /// store's lock, as every change is; one pass over the facilities and the keys, run every
    /// [`SWEEP_EVERY`] by [`run_sweeper`].
    pub(crate) fn sweep(&self, now: chrono::DateTime<chrono::Utc>) -> Swept {
        let horizon = now - self.idempotency_retention;
        let mut folded = self.folded.write().unwrap_or_else(PoisonError::into_inner);
        let keys = folded.idempotency.len();
        folded
            .idempotency
            .retain(|_, recorded| recorded.occurred_at >= horizon);
        let idempotency_keys = keys - folded.idempotency.len();
        let reservations = forget_ended_reservations(&mut folded, now);
        folded.owners.retain(|owner| Arc::strong_count(owner) > 1);
        Swept {
            idempotency_keys,
            reservations,
        }
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
            .filter(|kept| kept.owner.as_deref() == Some(subject) && kept.state.is_open(now))
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

    /// Why the aggregate is parked, if it is: the reason of its first parked record.
    pub(crate) fn parked<A: Stored>(&self, id: Uuid) -> Option<String> {
        let folded = self.folded.read().unwrap_or_else(PoisonError::into_inner);
        folded
            .parked
            .get(&parked_key(A::KIND, id))
            .and_then(|records| records.first())
            .map(|first| format!("sequence {}: {}", first.envelope.sequence, first.reason))
    }

    /// `/ready`'s detail: `None` when nothing is parked; else how many aggregates, and the one
    /// parked longest with the reason of its first record.
    pub(crate) fn parked_summary(&self) -> Option<String> {
        let folded = self.folded.read().unwrap_or_else(PoisonError::into_inner);
        let longest = folded
            .parked
            .values()
            .filter_map(|records| records.first())
            .min_by_key(|first| first.parked_at)?;
        Some(format!(
            "{} aggregates parked; the longest: {} {} at sequence {}: {}",
            folded.parked.len(),
            longest.envelope.aggregate_type,
            longest.envelope.aggregate_id,
            longest.envelope.sequence,
            longest.reason
        ))
    }

    /// Runs `f` on a consistent view of everything folded so far (for snapshots).
    pub(crate) fn with_folded<T>(&self, f: impl FnOnce(&Folded) -> T) -> T {
        f(&self.folded.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Where the tailer is to resume: the next offset of every partition folded so far.
    fn positions(&self) -> BTreeMap<String, i64> {
        self.with_folded(|folded| folded.positions.clone())
    }

    /// How many records stand between what the store has folded and `ends` (the next offset
    /// of each partition, as the broker reports it now).
    pub(crate) fn records_behind(&self, ends: &BTreeMap<TopicPartition, i64>) -> i64 {
        let positions = self.positions();
        ends.iter()
            .map(|((topic, partition), end)| {
                end - positions
                    .get(&partition_key(topic, *partition))
                    .copied()
                    .unwrap_or(0)
            })
            .filter(|behind| *behind > 0)
            .sum()
    }

    /// Records the lag the monitor measured.
    pub(crate) fn set_lag(&self, records: i64) {
        self.lag.store(records, Ordering::Release);
    }

    /// How many records the tailer was behind the end of the log when last measured (`None`
    /// before the first measure).
    pub(crate) fn lag(&self) -> Option<i64> {
        let records = self.lag.load(Ordering::Acquire);
        (records >= 0).then_some(records)
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
    /// (`crate::commands`). A record this release does not know, or a gap, parks its aggregate.
    fn apply_record(&self, position: LogPosition, payload: Option<&[u8]>) {
        let envelope = payload.and_then(|bytes| self.readable(bytes, &position));
        let mut folded = self.folded.write().unwrap_or_else(PoisonError::into_inner);
        folded.positions.insert(
            partition_key(&position.topic, position.partition),
            position.offset + 1,
        );
        let Some(envelope) = envelope else {
            if payload.is_none() {
                skipped("contract");
                tracing::warn!(topic = %position.topic, offset = position.offset, "skipping a record without a value");
            }
            return;
        };
        let outcomes = self.take(&mut folded, envelope, position);
        drop(folded);
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        for (event_id, outcome) in outcomes {
            if let Some(waiter) = waiting.remove(&event_id) {
                // The writer may have given up waiting; then nobody needs the answer.
                let _ = waiter.send(outcome);
            }
        }
    }

    /// The record's envelope if this store may take it: valid, on its aggregate's topic, and
    /// of an event this release knows or, if not, valid as an envelope (it parks).
    fn readable(&self, bytes: &[u8], position: &LogPosition) -> Option<EventEnvelope> {
        let checked = self
            .registry
            .validate_envelope_bytes(bytes)
            .and_then(|envelope| match self.registry.validate_payload(&envelope) {
                Err(violation) if !violation.is_unknown_event() => Err(violation),
                _ => Ok(envelope),
            });
        match checked {
            Ok(envelope)
                if self.topics.aggregate_of(&position.topic) == Some(envelope.aggregate_type) =>
            {
                Some(envelope)
            }
            Ok(envelope) => {
                skipped("wrong_topic");
                tracing::warn!(aggregate_type = %envelope.aggregate_type, topic = %position.topic, offset = position.offset, "skipping an event on another aggregate's topic");
                None
            }
            Err(violation) => {
                skipped("contract");
                tracing::warn!(violation = %violation.without_values(), topic = %position.topic, offset = position.offset, "skipping an invalid record");
                None
            }
        }
    }

    /// Folds a readable record, or parks it; returns the outcome of every event this decided
    /// (a record that fills a gap folds the ones parked behind it too).
    fn take(
        &self,
        folded: &mut Folded,
        envelope: EventEnvelope,
        position: LogPosition,
    ) -> Vec<(Uuid, Outcome)> {
        let key = parked_key(envelope.aggregate_type, envelope.aggregate_id);
        if let Some(records) = folded.parked.get_mut(&key) {
            let first = records.first().map_or(0, |first| first.envelope.sequence);
            let at =
                records.partition_point(|parked| parked.envelope.sequence <= envelope.sequence);
            records.insert(
                at,
                ParkedRecord {
                    reason: format!("waits behind sequence {first}, parked"),
                    envelope,
                    position,
                    parked_at: chrono::Utc::now(),
                },
            );
            return self.drain(folded, &key);
        }
        let event_id = envelope.event_id;
        let outcome = match self.fold_any(folded, &envelope, &position) {
            Ok(outcome) => outcome,
            Err(not_folded) => match not_folded.parking_reason(&envelope) {
                Some(reason) => {
                    tracing::warn!(
                        aggregate_id = %envelope.aggregate_id,
                        sequence = envelope.sequence,
                        topic = %position.topic, partition = position.partition, offset = position.offset,
                        %reason,
                        "the aggregate is parked until its records can be folded in order"
                    );
                    folded.parked.insert(
                        key,
                        vec![ParkedRecord {
                            envelope,
                            position,
                            reason,
                            parked_at: chrono::Utc::now(),
                        }],
                    );
                    set_parked_gauge(folded);
                    Outcome::Parked
                }
                None => Outcome::Refused,
            },
        };
        vec![(event_id, outcome)]
    }

    /// Folds the parked records of one aggregate in order while each is the next one of its
    /// stream; the first that still cannot be folded stays, with its reason brought up to date,
    /// and so does every record after it.
    fn drain(&self, folded: &mut Folded, key: &str) -> Vec<(Uuid, Outcome)> {
        let Some(records) = folded.parked.remove(key) else {
            return Vec::new();
        };
        let mut outcomes = Vec::new();
        let mut records = records.into_iter();
        while let Some(mut record) = records.next() {
            match self.fold_any(folded, &record.envelope, &record.position) {
                Ok(outcome) => outcomes.push((record.envelope.event_id, outcome)),
                Err(not_folded) => match not_folded.parking_reason(&record.envelope) {
                    Some(reason) => {
                        record.reason = reason;
                        let mut still = vec![record];
                        still.extend(records);
                        outcomes.extend(
                            still
                                .iter()
                                .map(|parked| (parked.envelope.event_id, Outcome::Parked)),
                        );
                        folded.parked.insert(key.to_owned(), still);
                        set_parked_gauge(folded);
                        return outcomes;
                    }
                    None => outcomes.push((record.envelope.event_id, Outcome::Refused)),
                },
            }
        }
        tracing::info!(
            aggregate = %key.replace('\n', " "),
            folded = outcomes.len(),
            "a parked aggregate is whole again: its parked records are folded"
        );
        set_parked_gauge(folded);
        outcomes
    }

    fn fold_any(
        &self,
        folded: &mut Folded,
        envelope: &EventEnvelope,
        position: &LogPosition,
    ) -> Result<Outcome, NotFolded> {
        match envelope.aggregate_type {
            AggregateType::Facility => self.fold::<Facility>(folded, envelope, position),
            AggregateType::Booking => self.fold::<Booking>(folded, envelope, position),
            AggregateType::Payment => self.fold::<Payment>(folded, envelope, position),
            AggregateType::Saga => self.fold::<Saga>(folded, envelope, position),
        }
    }

    fn fold<A: Stored>(
        &self,
        folded: &mut Folded,
        envelope: &EventEnvelope,
        position: &LogPosition,
    ) -> Result<Outcome, NotFolded> {
        let event: A::Event = self.registry.decode(envelope).map_err(|violation| {
            if violation.is_unknown_event() {
                NotFolded::Unknown
            } else {
                skipped("undecodable");
                tracing::warn!(violation = %violation.without_values(), "skipping an event that does not decode");
                NotFolded::Undecodable
            }
        })?;
        let owner = folded.owner(&envelope.actor.subject);
        let stream = A::streams_mut(folded)
            .entry(envelope.aggregate_id)
            .or_default();
        match admit(stream.version, envelope.sequence) {
            Admission::Next => {
                stream.state = A::evolve(std::mem::take(&mut stream.state), &event);
                A::forget_unreachable(&mut stream.state, chrono::Utc::now());
                stream.version = envelope.sequence;
                stream.owner.get_or_insert(owner);
                stream.last_position = Some(At {
                    partition: position.partition,
                    offset: position.offset,
                });
                self.remember_idempotency(folded, envelope, position.clone());
                Ok(Outcome::Admitted(position.clone()))
            }
            Admission::Stale => Ok(Outcome::Refused),
            Admission::Gap { expected } => Err(NotFolded::Gap { expected }),
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

/// How many entries a snapshot writes under one hold of the store's read lock: between two
/// holds the tailer folds what it has read, and readers never wait behind a whole snapshot.
const SNAPSHOT_CHUNK: usize = 1024;

/// The store as a snapshot writes it: [`Folded`]'s fields, each map written a chunk of entries
/// per hold of the lock (docs/memory.md, "Snapshots"). The pieces are not one cut of the log,
/// but each is at least as new as the positions, which are taken first: restoring reads the
/// log again from there, and every record the pieces already hold is stale to its stream. The
/// parked records go before the streams (a parked record drained into its stream in between
/// is then in both, and the copy is refused as stale at restore, where the other order could
/// lose it) and the idempotency keys after them (a key written before its event's stream
/// would be missing once the stream holds the event and the log is read again from the
/// positions).
pub(crate) struct Live<'a>(pub(crate) &'a AggregateStore);

impl Serialize for Live<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let store = self.0;
        let (positions, parked) =
            store.with_folded(|folded| (folded.positions.clone(), folded.parked.clone()));
        let mut fields = serializer.serialize_struct("Folded", 7)?;
        fields.serialize_field("positions", &positions)?;
        fields.serialize_field("parked", &parked)?;
        drop(parked);
        fields.serialize_field("facilities", &LiveStreams::<Facility>::new(store))?;
        fields.serialize_field("bookings", &LiveStreams::<Booking>::new(store))?;
        fields.serialize_field("payments", &LiveStreams::<Payment>::new(store))?;
        fields.serialize_field("sagas", &LiveStreams::<Saga>::new(store))?;
        fields.serialize_field("idempotency", &LiveIdempotency(store))?;
        fields.end()
    }
}

struct LiveStreams<'a, A> {
    store: &'a AggregateStore,
    aggregate: std::marker::PhantomData<A>,
}

impl<'a, A> LiveStreams<'a, A> {
    fn new(store: &'a AggregateStore) -> Self {
        Self {
            store,
            aggregate: std::marker::PhantomData,
        }
    }
}

impl<A: Stored<State: Serialize>> Serialize for LiveStreams<'_, A> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        // The ids, not the streams: 16 bytes each, and a stream added after this is read
        // again from the log.
        let ids: Vec<Uuid> = self
            .store
            .with_folded(|folded| A::streams(folded).keys().copied().collect());
        let mut map = serializer.serialize_map(None)?;
        for chunk in ids.chunks(SNAPSHOT_CHUNK) {
            self.store.with_folded(|folded| {
                let streams = A::streams(folded);
                chunk.iter().try_for_each(|id| match streams.get(id) {
                    Some(kept) => map.serialize_entry(id, kept),
                    None => Ok(()),
                })
            })?;
        }
        map.end()
    }
}

struct LiveIdempotency<'a>(&'a AggregateStore);

impl Serialize for LiveIdempotency<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let keys: Vec<String> = self
            .0
            .with_folded(|folded| folded.idempotency.keys().cloned().collect());
        let mut map = serializer.serialize_map(None)?;
        for chunk in keys.chunks(SNAPSHOT_CHUNK) {
            self.0.with_folded(|folded| {
                chunk
                    .iter()
                    .try_for_each(|key| match folded.idempotency.get(key) {
                        Some(recorded) => map.serialize_entry(key, recorded),
                        None => Ok(()),
                    })
            })?;
        }
        map.end()
    }
}

/// How long after a reservation's end and turnaround the store still keeps it: a command's
/// `now` comes from a clock that may stand behind this one, and a reservation kept a little
/// longer costs nothing.
pub(crate) const RESERVATION_MARGIN: chrono::Duration = chrono::Duration::hours(1);

/// How often [`run_sweeper`] sweeps the store.
pub(crate) const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_mins(1);

/// What one sweep forgot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Swept {
    pub(crate) idempotency_keys: usize,
    pub(crate) reservations: usize,
}

fn forget_ended_reservations(folded: &mut Folded, now: chrono::DateTime<chrono::Utc>) -> usize {
    let horizon = now - RESERVATION_MARGIN;
    folded
        .facilities
        .values_mut()
        .map(|kept| kept.state.forget_ended_reservations(horizon))
        .sum()
}

/// Sweeps the store every [`SWEEP_EVERY`] until `shutdown`, so that idempotency keys and ended
/// reservations go while the service runs, not only at its next start.
pub(crate) async fn run_sweeper(store: Arc<AggregateStore>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(SWEEP_EVERY) => {}
        }
        let swept = store.sweep(chrono::Utc::now());
        if swept.idempotency_keys + swept.reservations > 0 {
            tracing::debug!(
                idempotency_keys = swept.idempotency_keys,
                reservations = swept.reservations,
                "swept the aggregate store"
            );
        }
    }
}

/// `command_store_parked_aggregates`: how many aggregates wait for records this release cannot
/// fold yet.
fn set_parked_gauge(folded: &Folded) {
    #[expect(clippy::cast_precision_loss, reason = "a count far below 2^52")]
    metrics::gauge!("command_store_parked_aggregates").set(folded.parked.len() as f64);
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
    /// A test's switch that holds the tailer still while set (debug builds only: a replica
    /// made to lag on purpose; `CommandSettings::pause_tailer`).
    #[cfg(debug_assertions)]
    pub(crate) pause: Option<Arc<AtomicBool>>,
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
            #[cfg(debug_assertions)]
            pause: None,
        })
    }

    /// Every partition the tailer reads.
    pub(crate) fn partitions(&self) -> Vec<TopicPartition> {
        self.targets.keys().cloned().collect()
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
        #[cfg(debug_assertions)]
        let pause = self.pause.clone();
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
            // Held here, after the read and before the fold, so that no record the tailer
            // was already waiting for slips through once the switch is set.
            #[cfg(debug_assertions)]
            if let Some(pause) = &pause {
                while pause.load(Ordering::Acquire) {
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(std::time::Duration::from_millis(10)) => {}
                    }
                }
            }
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

    /// A record as the log holds it: its bytes at `offset` of its aggregate's topic.
    fn logged(envelope: &EventEnvelope, offset: i64) -> (LogPosition, Vec<u8>) {
        let position = LogPosition {
            topic: Topics::new("fm").events(envelope.aggregate_type),
            partition: 0,
            offset,
        };
        (
            position,
            serde_json::to_vec(envelope).expect("an envelope serialises"),
        )
    }

    fn store_with(registry: SchemaRegistry, folded: Folded) -> AggregateStore {
        AggregateStore::new(
            Arc::new(registry),
            Topics::new("fm"),
            std::time::Duration::from_mins(1),
            folded,
        )
    }

    /// Two stories: the first one's facility is registered as this release writes it
    /// (`FacilityRegistered` v2), which a reader of the first release does not know; the second
    /// one's as the first release wrote it (v1).
    fn two_stories() -> (Vec<EventEnvelope>, Vec<EventEnvelope>) {
        let (_, first) = schemas::fixtures::booking_story(1);
        let (_, mut second) = schemas::fixtures::booking_story(2);
        assert_eq!(
            (first[0].event_type.as_str(), first[0].event_version),
            ("FacilityRegistered", 2)
        );
        second[0].event_version = 1;
        if let Some(data) = second[0].data.as_object_mut() {
            data.remove("funeral_home_id");
        }
        (first, second)
    }

    /// Every stream's version and state, as JSON: what a command would decide on.
    fn states(store: &AggregateStore) -> String {
        store.with_folded(|folded| {
            let mut streams: Vec<String> = [
                serde_json::to_value(&folded.facilities),
                serde_json::to_value(&folded.bookings),
                serde_json::to_value(&folded.payments),
                serde_json::to_value(&folded.sagas),
            ]
            .into_iter()
            .map(|value| {
                let mut value = value.expect("state serialises");
                // Positions differ between the two readers' logs; versions and states may not.
                strip_positions(&mut value);
                value.to_string()
            })
            .collect();
            streams.sort();
            streams.join("\n")
        })
    }

    fn strip_positions(value: &mut serde_json::Value) {
        if let Some(streams) = value.as_object_mut() {
            for stream in streams.values_mut() {
                if let Some(stream) = stream.as_object_mut() {
                    stream.remove("last_position");
                }
            }
        }
    }

    /// docs/evolution.md, "Unknown is parked": a store of the release before
    /// `FacilityRegistered` v2 parks that facility with everything after it, refuses commands on
    /// it, and goes on with every other aggregate; a store of this release started from its
    /// snapshot folds what was parked, in order, into exactly the state of a store that knew v2
    /// all along.
    #[test]
    fn an_unknown_version_parks_its_aggregate_until_a_release_that_knows_it_folds_it_in_order() {
        let (first, second) = two_stories();
        let facility = first[0].aggregate_id;
        let log: Vec<(LogPosition, Vec<u8>)> = first
            .iter()
            .chain(&second)
            .enumerate()
            .map(|(offset, envelope)| logged(envelope, i64::try_from(offset).unwrap_or_default()))
            .collect();
        let load = || SchemaRegistry::load().expect("the schemas compile");
        let knowing = store_with(load(), Folded::default());
        let old = store_with(load().without("FacilityRegistered", 2), Folded::default());
        for (position, bytes) in &log {
            knowing.apply_record(position.clone(), Some(bytes));
            old.apply_record(position.clone(), Some(bytes));
        }
        assert_eq!(knowing.parked_summary(), None);
        let parked = old
            .parked::<Facility>(facility)
            .expect("the facility is parked");
        assert!(
            parked.starts_with("sequence 1: unknown event FacilityRegistered v2"),
            "{parked}"
        );
        assert_eq!(old.read::<Facility>(facility).version, 0);
        // The facility's later records (the reservation and its release) wait behind it.
        let waiting = old.with_folded(|folded| {
            folded.parked[&parked_key(AggregateType::Facility, facility)]
                .iter()
                .map(|record| record.envelope.sequence)
                .collect::<Vec<_>>()
        });
        assert!(waiting.len() > 1 && waiting.is_sorted(), "{waiting:?}");
        // Every other aggregate went on: the second story's, v1 facility included.
        assert_eq!(old.read::<Facility>(second[0].aggregate_id).version, 2);
        let booking = second[1].aggregate_id;
        assert!(old.read::<Booking>(booking).version > 0);
        assert_eq!(
            old.read::<Booking>(booking).version,
            knowing.read::<Booking>(booking).version
        );
        assert!(
            old.parked_summary()
                .is_some_and(|s| s.starts_with("1 aggregates parked"))
        );

        // A release that knows v2 starts from the old release's snapshot.
        let snapshot = old.with_folded(|folded| serde_json::to_vec(folded).expect("serialises"));
        let restored: Folded = serde_json::from_slice(&snapshot).expect("a snapshot reads back");
        let new = store_with(load(), restored);
        assert_eq!(new.parked_summary(), None);
        assert_eq!(states(&new), states(&knowing));
    }

    /// A gap parks the stream; the missing record folds it and everything behind it, in order,
    /// and a writer learns its record's outcome: parked while behind the gap, admitted or
    /// refused (a duplicate) once it is folded.
    #[test]
    fn a_gap_parks_the_stream_until_the_missing_record_arrives() {
        let (first, _) = two_stories();
        let booking = first[1].aggregate_id;
        let stream: Vec<&EventEnvelope> =
            first.iter().filter(|e| e.aggregate_id == booking).collect();
        assert!(stream.len() >= 3);
        let store = empty_store();
        let mut offset = 0;
        let mut log = |envelope: &EventEnvelope| {
            offset += 1;
            logged(envelope, offset)
        };
        let (one, two, three) = (stream[0], stream[1], stream[2]);
        let (at, bytes) = log(one);
        store.apply_record(at, Some(&bytes));
        // Sequence 3 before 2: parked, and a writer waiting for it hears so.
        let mut third = store.await_outcome(three.event_id);
        let (at, bytes) = log(three);
        store.apply_record(at.clone(), Some(&bytes));
        assert_eq!(third.receiver.try_recv(), Ok(Outcome::Parked));
        assert!(
            store
                .parked::<Booking>(booking)
                .is_some_and(|p| p.contains("gap: sequence 3 where 2 was expected"))
        );
        // A copy of sequence 3 behind it waits too; the fill folds 2 and 3 and drops the copy.
        let (copy_at, bytes) = log(three);
        store.apply_record(copy_at, Some(&bytes));
        let mut second = store.await_outcome(two.event_id);
        let (fill_at, bytes) = log(two);
        store.apply_record(fill_at.clone(), Some(&bytes));
        assert_eq!(second.receiver.try_recv(), Ok(Outcome::Admitted(fill_at)));
        assert_eq!(store.parked::<Booking>(booking), None);
        let folded = store.read::<Booking>(booking);
        assert_eq!(folded.version, 3);
        assert_eq!(folded.last_position, Some(at));
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

    /// A day after every fixture story's slot (2027-03-02, 10:00 to 11:00 GMT).
    fn the_day_after() -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::parse_from_rfc3339("2027-03-03T09:00:00+00:00")
            .map(|at| at.with_timezone(&chrono::Utc))
            .unwrap_or_default()
    }

    /// Every command a caller could send to the aggregates of `story` (its booking `i`), with
    /// the answer a store gives to each: what compaction must leave as it was.
    fn answers(store: &AggregateStore, i: usize, history: &[EventEnvelope]) -> Vec<String> {
        use domain::{
            booking::BookingCommand,
            facility::FacilityCommand,
            fixtures,
            payment::PaymentCommand,
            values::{BookingId, PaymentId},
        };
        let now = the_day_after();
        let facility = history[0].aggregate_id;
        let booking = BookingId::from(history[1].aggregate_id);
        let payment = PaymentId::for_booking(booking);
        let price = fixtures::price();
        let mut answers = Vec::new();
        let stream = store.read::<Facility>(facility);
        answers.push(format!("facility {:?} {:?}", stream.version, stream.owner));
        let next_day = fixtures::slot_at("2027-03-04T10:00:00+00:00", "2027-03-04T11:00:00+00:00");
        for command in [
            fixtures::register_facility(),
            FacilityCommand::ChangeOpeningHours {
                opening_hours: fixtures::opening_hours(),
            },
            FacilityCommand::ReserveSlot {
                booking_id: BookingId::from(Uuid::from_u128(7)),
                slot: next_day,
                now,
            },
            FacilityCommand::ReserveSlot {
                booking_id: BookingId::from(Uuid::from_u128(7)),
                slot: fixtures::slot(),
                now,
            },
            FacilityCommand::ReleaseSlot {
                booking_id: BookingId::from(Uuid::from_u128(7)),
            },
        ] {
            answers.push(format!("{:?}", Facility::decide(&stream.state, command)));
        }
        let stream = store.read::<Booking>(*booking.as_uuid());
        answers.push(format!("booking {:?} {:?}", stream.version, stream.owner));
        answers.push(format!("{:?}", stream.last_position));
        for command in [
            fixtures::request_booking(),
            BookingCommand::MarkSlotHeld,
            BookingCommand::Confirm,
            BookingCommand::Reject {
                reason: "late".into(),
            },
            BookingCommand::Fail {
                reason: "late".into(),
            },
            BookingCommand::Cancel { reason: None, now },
            BookingCommand::ErasePersonalData { reason: None },
        ] {
            answers.push(format!("{:?}", Booking::decide(&stream.state, command)));
        }
        let stream = store.read::<Payment>(*payment.as_uuid());
        answers.push(format!("payment {:?} {:?}", stream.version, stream.owner));
        for reference in [format!("cap-{i}"), format!("ref-{i}"), "other".to_owned()] {
            for command in [
                PaymentCommand::RecordCapture {
                    payment_id: payment,
                    booking_id: booking,
                    amount: price,
                    gateway_reference: reference.clone(),
                },
                PaymentCommand::RecordDecline {
                    payment_id: payment,
                    booking_id: booking,
                    amount: price,
                    reason: reference.clone(),
                },
                PaymentCommand::RecordRefund {
                    amount: price,
                    gateway_reference: reference.clone(),
                },
            ] {
                answers.push(format!("{:?}", Payment::decide(&stream.state, command)));
            }
        }
        answers
    }

    /// docs/memory.md: a store that folded a history, was snapshotted, restored and swept a
    /// day after every service answers every command on every aggregate as the store that
    /// folded the whole history and forgot nothing, though its facilities no longer hold the
    /// reservations that ended. The two commands a forgotten reservation changes, a release
    /// or a repeated reservation by the booking that held it, are checked on their own.
    #[test]
    fn a_swept_and_restored_store_answers_every_command_as_the_whole_history_does() {
        use domain::{facility::FacilityCommand, values::BookingId};
        let stories: Vec<Vec<EventEnvelope>> = (0..6)
            .map(|i| schemas::fixtures::booking_story(i).1)
            .collect();
        let whole = empty_store();
        for (offset, envelope) in stories.iter().flatten().enumerate() {
            let (position, bytes) = logged(envelope, i64::try_from(offset).unwrap_or_default());
            whole.apply_record(position, Some(&bytes));
        }
        let snapshot = serde_json::to_vec(&Live(&whole)).expect("a store serialises");
        let restored: Folded = serde_json::from_slice(&snapshot).expect("a snapshot reads back");
        let compact = store_with(
            SchemaRegistry::load().expect("the schemas compile"),
            restored,
        );
        let swept = compact.sweep(the_day_after());
        // Every third story was cancelled and gave its slot back; the others held theirs.
        assert_eq!(swept.reservations, 4);
        for (i, story) in stories.iter().enumerate() {
            assert_eq!(
                answers(&compact, i, story),
                answers(&whole, i, story),
                "story {i}"
            );
            let facility = story[0].aggregate_id;
            let booking = BookingId::from(story[1].aggregate_id);
            let held = whole.read::<Facility>(facility).state;
            let kept = compact.read::<Facility>(facility).state;
            assert!(kept.reservations().is_empty());
            if let Some(slot) = held.reservation(booking).copied() {
                let release = FacilityCommand::ReleaseSlot {
                    booking_id: booking,
                };
                assert_eq!(
                    Facility::decide(&held, release.clone()).map(|events| events.len()),
                    Ok(1)
                );
                assert_eq!(Facility::decide(&kept, release), Ok(vec![]));
                let again = FacilityCommand::ReserveSlot {
                    booking_id: booking,
                    slot,
                    now: the_day_after(),
                };
                assert_eq!(Facility::decide(&held, again.clone()), Ok(vec![]));
                assert!(matches!(
                    Facility::decide(&kept, again).as_deref(),
                    Ok([domain::facility::FacilityEvent::SlotRejected { .. }])
                ));
            }
        }
    }

    /// The owners are shared (one name per subject, not one per stream), also once restored
    /// from a snapshot, and the sweep lets go of a name no stream holds.
    #[test]
    fn owners_are_shared_between_streams_and_after_a_restore() {
        let whole = empty_store();
        for (offset, envelope) in schemas::fixtures::booking_story(1).1.iter().enumerate() {
            let (position, bytes) = logged(envelope, i64::try_from(offset).unwrap_or_default());
            whole.apply_record(position, Some(&bytes));
        }
        let distinct = |store: &AggregateStore| {
            store.with_folded(|folded| {
                let mut names: Vec<*const u8> = folded
                    .facilities
                    .values()
                    .filter_map(|kept| kept.owner.as_deref())
                    .chain(folded.bookings.values().filter_map(|k| k.owner.as_deref()))
                    .chain(folded.payments.values().filter_map(|k| k.owner.as_deref()))
                    .map(str::as_ptr)
                    .collect();
                names.dedup();
                (names.len(), folded.owners.len())
            })
        };
        assert_eq!(distinct(&whole), (1, 1));
        let snapshot = serde_json::to_vec(&Live(&whole)).expect("a store serialises");
        let restored = empty_store_from(serde_json::from_slice(&snapshot).expect("reads back"));
        assert_eq!(distinct(&restored), (1, 1));
        restored
            .folded
            .write()
            .map(|mut f| f.owners.insert(Arc::from("gone")))
            .ok();
        restored.sweep(chrono::Utc::now());
        assert_eq!(distinct(&restored), (1, 1));
    }

    fn empty_store_from(folded: Folded) -> AggregateStore {
        store_with(SchemaRegistry::load().expect("the schemas compile"), folded)
    }

    /// Idempotency keys expire while the store runs: a sweep forgets those past their
    /// retention and keeps the rest.
    #[test]
    fn a_sweep_forgets_the_idempotency_keys_past_their_retention() {
        let store = empty_store();
        let recorded = |minutes_ago: i64| Recorded {
            fingerprint: "f".into(),
            aggregate_id: Uuid::nil(),
            sequence: 1,
            position: LogPosition {
                topic: "fm.booking.events".into(),
                partition: 0,
                offset: 0,
            },
            occurred_at: chrono::Utc::now() - chrono::Duration::minutes(minutes_ago),
        };
        store
            .folded
            .write()
            .map(|mut folded| {
                folded.idempotency.insert("a\nold".into(), recorded(2));
                folded.idempotency.insert("a\nnew".into(), recorded(0));
            })
            .ok();
        // The store keeps keys for a minute.
        let swept = store.sweep(chrono::Utc::now());
        assert_eq!(swept.idempotency_keys, 1);
        assert!(store.recorded("a", "old").is_none());
        assert!(store.recorded("a", "new").is_some());
    }

    /// A snapshot is written a chunk at a time: the tailer folds between two chunks, and the
    /// snapshot, restored and read again from its positions, is the store that folded it all.
    #[test]
    fn the_tailer_folds_while_a_snapshot_is_written_and_the_snapshot_stays_whole() {
        struct Folding<'a> {
            store: &'a AggregateStore,
            late: Vec<(LogPosition, Vec<u8>)>,
            bytes: Vec<u8>,
        }
        impl std::io::Write for Folding<'_> {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                // Only possible if the snapshot does not hold the lock now.
                let free = self.store.folded.try_write().is_ok();
                if free && let Some((position, bytes)) = self.late.pop() {
                    self.store.apply_record(position, Some(&bytes));
                }
                self.bytes.extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let stories = (0..SNAPSHOT_CHUNK / 2).map(|i| schemas::fixtures::booking_story(i).1);
        let log: Vec<(LogPosition, Vec<u8>)> = stories
            .flatten()
            .enumerate()
            .map(|(offset, envelope)| logged(&envelope, i64::try_from(offset).unwrap_or_default()))
            .collect();
        let (early, late) = log.split_at(log.len() - 20);
        let store = empty_store();
        for (position, bytes) in early {
            store.apply_record(position.clone(), Some(bytes));
        }
        let mut writer = Folding {
            store: &store,
            late: late.iter().rev().cloned().collect(),
            bytes: Vec::new(),
        };
        serde_json::to_writer(&mut writer, &Live(&store)).expect("a store serialises");
        let folded_meanwhile = late.len() - writer.late.len();
        assert!(
            folded_meanwhile > 0,
            "the tailer waited for the whole snapshot"
        );
        for (position, bytes) in writer.late.iter().rev() {
            store.apply_record(position.clone(), Some(bytes));
        }
        let restored = empty_store_from(serde_json::from_slice(&writer.bytes).expect("reads"));
        let from = restored.with_folded(|folded| folded.positions.clone());
        for (position, bytes) in &log {
            let next = from
                .get(&partition_key(&position.topic, position.partition))
                .copied()
                .unwrap_or(0);
            if position.offset >= next {
                restored.apply_record(position.clone(), Some(bytes));
            }
        }
        assert_eq!(states(&restored), states(&store));
        assert_eq!(
            restored.with_folded(|f| f.positions.clone()),
            store.with_folded(|f| f.positions.clone())
        );
    }
}
