//! One batch consumer with its offsets in PostgreSQL: the loop the projector and the saga share.
//!
//! Kafka is at-least-once; a reader makes it effectively-once by storing the offsets it has
//! consumed in the **same** PostgreSQL transaction as the effect of the records before them. A
//! [`BatchConsumer`] does exactly that and nothing else:
//!
//! 1. it assigns itself every partition of the given topics explicitly, each at the next offset
//!    stored in its [`OffsetTable`] (0 for a partition never read): no consumer group, no offset
//!    kept at the broker, so the position can never run ahead of the effect;
//! 2. it takes the records that are ready, up to `batch_size`, and hands them to its
//!    [`BatchApplier`] inside one transaction (one by one, or the whole batch at once when the
//!    applier folds it: [`BatchApplier::apply_batch`]), then stores the next offset of every partition
//!    the batch touched in that transaction and commits it: a crash (even `kill -9` mid-batch)
//!    loses the whole transaction, and the batch is read again;
//! 3. a batch that fails (PostgreSQL or the broker down) is retried whole, after a [`Backoff`]
//!    that doubles up to a cap, until it commits or the consumer is shut down;
//! 4. on shutdown it finishes (or abandons, while backing off) the batch in hand and returns
//!    at once, taking no further batch: whatever did not commit is read again by the next
//!    start. (A consumer that went on after abandoning a batch would commit offsets past it,
//!    and the abandoned records would never be read: the saga runner, whose shutdown is the
//!    loss of its lock, once skipped records so when PostgreSQL restarted mid-batch.)
//!
//! What a record means is the applier's business: the projector changes read models, the saga
//! changes its facts. Each says what a record came to with one [`RecordOutcome`]. A record an
//! applier cannot take yet it parks in a table of its own; [`parking`] lists and describes
//! those tables the same way for every reader.
//!
//! It lives in a crate of its own because it needs sqlx, which the Kafka adapter (`event-log`)
//! does not.

pub mod parking;

use std::{collections::BTreeMap, future::Future, time::Duration};

use event_log::{
    KafkaSettings, LogError, Record,
    consumer::{self, StreamConsumer, TopicPartition},
};
use futures::StreamExt;
use platform::shutdown::CancellationToken;
use sqlx::{PgConnection, PgPool};
use thiserror::Error;

/// What one record of a batch came to, as counted in the appliers' metrics (`outcome` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordOutcome {
    /// Its effect is in the transaction.
    Applied,
    /// A valid event that changes nothing this reader keeps.
    Ignored,
    /// A sequence at or below the last one applied (a redelivery, or a losing writer's record).
    Duplicate,
    /// A sequence beyond the next one of its aggregate: not applied, reported.
    Gap,
    /// It breaks the contract and went to the dead-letter topic.
    DeadLettered,
    /// It breaks the contract and this reader passes over it (another one dead-letters it).
    Skipped,
    /// Kept, not applied: its aggregate waits for a release that knows it, or for a missing
    /// sequence (docs/evolution.md, "Unknown is parked, not skipped").
    Parked,
}

impl RecordOutcome {
    /// The metric label: `applied`, `ignored`, `duplicate`, `gap`, `dead_lettered`, `skipped`,
    /// `parked`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Ignored => "ignored",
            Self::Duplicate => "duplicate",
            Self::Gap => "gap",
            Self::DeadLettered => "dead_lettered",
            Self::Skipped => "skipped",
            Self::Parked => "parked",
        }
    }
}

/// What a reader does with the records of a batch, inside the batch's transaction.
pub trait BatchApplier: Send + Sync {
    /// Why a record or the batch could not be applied; the batch is then retried whole.
    type Error: std::fmt::Display + From<sqlx::Error> + Send;

    /// Applies one record in the batch's transaction and says what it came to. An `Err` rolls
    /// the whole batch back.
    fn apply(
        &self,
        tx: &mut PgConnection,
        record: &Record<'_>,
    ) -> impl Future<Output = Result<RecordOutcome, Self::Error>> + Send;

    /// Applies a whole batch in its transaction and says what each record came to, in order.
    /// By default each record through [`BatchApplier::apply`], one after the other; an applier
    /// that can do better (fold the batch in memory, write set-based) overrides it, and must
    /// leave the transaction exactly as applying the records one by one in order would. An
    /// `Err` rolls the whole batch back.
    fn apply_batch(
        &self,
        tx: &mut PgConnection,
        records: &[Record<'_>],
    ) -> impl Future<Output = Result<Vec<RecordOutcome>, Self::Error>> + Send {
        async move {
            let mut outcomes = Vec::with_capacity(records.len());
            for record in records {
                outcomes.push(self.apply(&mut *tx, record).await?);
            }
            Ok(outcomes)
        }
    }

    /// Runs in the batch's transaction after its offsets are stored, just before the commit.
    fn before_commit(
        &self,
        tx: &mut PgConnection,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send {
        let _ = tx;
        async { Ok(()) }
    }

    /// After the batch committed: the next offset of every partition it touched, and what each
    /// record came to, in order.
    fn committed(&self, next_offsets: &BTreeMap<TopicPartition, i64>, outcomes: &[RecordOutcome]);

    /// After every attempt at a batch, committed or not (for metrics; the consumer logs).
    fn attempted(&self, committed: bool, elapsed: Duration) {
        let _ = (committed, elapsed);
    }
}

/// The table that holds a reader's offsets: `(topic, partition, next_offset, updated_at)` with
/// `(topic, partition)` as key, found through the connection's `search_path`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetTable(&'static str);

impl OffsetTable {
    /// The table called `name` (a fixed name in the reader's own schema, never user input).
    pub const fn new(name: &'static str) -> Self {
        Self(name)
    }

    /// Where the reader stopped: the next offset to read of every partition it has read.
    pub async fn stored(
        self,
        conn: &mut PgConnection,
    ) -> Result<BTreeMap<TopicPartition, i64>, sqlx::Error> {
        let sql = format!("SELECT topic, partition, next_offset FROM {}", self.0);
        let rows: Vec<(String, i32, i64)> = sqlx::query_as(&sql).fetch_all(conn).await?;
        Ok(rows
            .into_iter()
            .map(|(topic, partition, next)| ((topic, partition), next))
            .collect())
    }

    /// Stores the next offset of every partition given, with one statement; never moves one
    /// backwards.
    pub async fn store_all(
        self,
        conn: &mut PgConnection,
        next_offsets: &BTreeMap<TopicPartition, i64>,
    ) -> Result<(), sqlx::Error> {
        if next_offsets.is_empty() {
            return Ok(());
        }
        let (mut topics, mut partitions, mut nexts) = (Vec::new(), Vec::new(), Vec::new());
        for ((topic, partition), next) in next_offsets {
            topics.push(topic.as_str());
            partitions.push(*partition);
            nexts.push(*next);
        }
        let sql = format!(
            "INSERT INTO {table} (topic, partition, next_offset) \
             SELECT * FROM unnest($1::text[], $2::int4[], $3::int8[]) \
             ON CONFLICT (topic, partition) DO UPDATE \
             SET next_offset = GREATEST({table}.next_offset, EXCLUDED.next_offset), updated_at = now()",
            table = self.0
        );
        sqlx::query(&sql)
            .bind(&topics)
            .bind(&partitions)
            .bind(&nexts)
            .execute(conn)
            .await?;
        Ok(())
    }

    /// Stores the next offset of a partition; never moves it backwards.
    pub async fn store(
        self,
        conn: &mut PgConnection,
        (topic, partition): &TopicPartition,
        next_offset: i64,
    ) -> Result<(), sqlx::Error> {
        let sql = format!(
            "INSERT INTO {table} (topic, partition, next_offset) VALUES ($1, $2, $3) \
             ON CONFLICT (topic, partition) DO UPDATE \
             SET next_offset = GREATEST({table}.next_offset, EXCLUDED.next_offset), updated_at = now()",
            table = self.0
        );
        sqlx::query(&sql)
            .bind(topic)
            .bind(partition)
            .bind(next_offset)
            .execute(conn)
            .await?;
        Ok(())
    }
}

/// How long to wait before retrying a failed batch: `first`, doubled after every failure, at
/// most `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            first: Duration::from_millis(100),
            max: Duration::from_secs(5),
        }
    }
}

impl Backoff {
    /// The delays, one per failure in a row.
    fn delays(self) -> impl Iterator<Item = Duration> {
        std::iter::successors(Some(self.first), move |delay| {
            Some((*delay * 2).min(self.max))
        })
    }
}

/// Which topics a consumer reads, as whom, and how much at once.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    pub kafka: KafkaSettings,
    /// The Kafka client id, also the consumer's name in logs.
    pub client_id: String,
    pub topics: Vec<String>,
    /// At most this many records per batch (at least 1).
    pub batch_size: usize,
    pub backoff: Backoff,
}

/// Why a consumer could not start.
#[derive(Debug, Error)]
pub enum StartError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("could not read the stored offsets: {0}")]
    Database(#[from] sqlx::Error),
    #[error("the broker's metadata request did not finish")]
    Interrupted,
}

/// Reads its topics from the offsets in its [`OffsetTable`] and applies them in batches, each
/// in one transaction with the next offsets, until shut down.
pub struct BatchConsumer<A> {
    consumer: StreamConsumer,
    applier: A,
    pool: PgPool,
    offsets: OffsetTable,
    config: ConsumerConfig,
    starting_offsets: BTreeMap<TopicPartition, i64>,
}

impl<A> std::fmt::Debug for BatchConsumer<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchConsumer")
            .field("client_id", &self.config.client_id)
            .field("offsets", &self.offsets)
            .finish_non_exhaustive()
    }
}

impl<A: BatchApplier> BatchConsumer<A> {
    /// Assigns every partition of the configured topics at its stored offset. The pool's
    /// connections must find `offsets` (and whatever the applier writes) by their `search_path`.
    pub async fn start(
        config: ConsumerConfig,
        pool: PgPool,
        offsets: OffsetTable,
        applier: A,
    ) -> Result<Self, StartError> {
        let consumer = consumer::manual_consumer(&config.kafka, &config.client_id)?;
        let (consumer, partitions) = {
            let (topics, settings) = (config.topics.clone(), config.kafka.clone());
            tokio::task::spawn_blocking(move || {
                let partitions = consumer::partitions(&consumer, &topics, &settings);
                (consumer, partitions)
            })
            .await
            .map_err(|_| StartError::Interrupted)?
        };
        let partitions = partitions?;
        let stored = offsets.stored(&mut *pool.acquire().await?).await?;
        let starting_offsets: BTreeMap<TopicPartition, i64> = partitions
            .into_iter()
            .map(|tp| {
                let next = stored.get(&tp).copied().unwrap_or(0);
                (tp, next)
            })
            .collect();
        consumer::assign(&consumer, &starting_offsets)?;
        tracing::info!(consumer = %config.client_id, offsets = ?starting_offsets, "consumer assigned");
        Ok(Self {
            consumer,
            applier,
            pool,
            offsets,
            config,
            starting_offsets,
        })
    }

    /// Every partition read, with the offset it started at.
    pub fn starting_offsets(&self) -> &BTreeMap<TopicPartition, i64> {
        &self.starting_offsets
    }

    /// Runs until `shutdown`; the batch in hand is committed first unless it is failing.
    pub async fn run(self, shutdown: CancellationToken) {
        let Self {
            consumer,
            applier,
            pool,
            offsets,
            config,
            ..
        } = self;
        let batcher = Batcher {
            applier,
            pool,
            offsets,
            config,
        };
        let mut ready = consumer
            .stream()
            .ready_chunks(batcher.config.batch_size.max(1));
        loop {
            // Biased: once shut down, no further batch is taken, whatever is ready.
            let batch = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                batch = ready.next() => batch,
            };
            let Some(batch) = batch else { break };
            let messages: Vec<_> = batch
                .into_iter()
                .filter_map(|message| {
                    message
                        .inspect_err(
                            |error| tracing::warn!(%error, "error reading the log; going on"),
                        )
                        .ok()
                })
                .collect();
            let records: Vec<Record<'_>> = messages.iter().map(Record::new).collect();
            if records.is_empty() {
                continue;
            }
            if batcher.apply_until_done(&records, &shutdown).await == Batch::Abandoned {
                // The records after an abandoned batch must not commit: their offsets would
                // pass it, and it would never be read again.
                break;
            }
        }
        tracing::info!(consumer = %batcher.config.client_id, "consumer stopped");
    }
}

/// What became of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Batch {
    Committed,
    /// Shut down while it was failing: not committed, read again by the next start.
    Abandoned,
}

/// Everything but the Kafka client, which the record stream borrows while batches are applied.
struct Batcher<A> {
    applier: A,
    pool: PgPool,
    offsets: OffsetTable,
    config: ConsumerConfig,
}

impl<A: BatchApplier> Batcher<A> {
    /// Applies one batch, retrying with backoff while the database or broker is down.
    async fn apply_until_done(
        &self,
        records: &[Record<'_>],
        shutdown: &CancellationToken,
    ) -> Batch {
        let mut delays = self.config.backoff.delays();
        loop {
            let started = std::time::Instant::now();
            let result = self.apply_batch(records).await;
            self.applier.attempted(result.is_ok(), started.elapsed());
            let Err(error) = result else {
                return Batch::Committed;
            };
            tracing::error!(%error, consumer = %self.config.client_id, records = records.len(), "could not apply a batch; retrying");
            let delay = delays.next().unwrap_or(self.config.backoff.max);
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return Batch::Abandoned,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    async fn apply_batch(&self, records: &[Record<'_>]) -> Result<(), A::Error> {
        let mut tx = self.pool.begin().await?;
        let outcomes = self.applier.apply_batch(&mut tx, records).await?;
        let mut next_offsets: BTreeMap<TopicPartition, i64> = BTreeMap::new();
        for record in records {
            let position = record.position();
            let next = next_offsets
                .entry((position.topic.clone(), position.partition))
                .or_insert(0);
            *next = (*next).max(position.offset + 1);
        }
        self.offsets.store_all(&mut tx, &next_offsets).await?;
        self.applier.before_commit(&mut tx).await?;
        tx.commit().await?;
        self.applier.committed(&next_offsets, &outcomes);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::Backoff;

    #[test]
    fn the_backoff_doubles_up_to_its_cap() {
        let delays: Vec<Duration> = Backoff::default().delays().take(8).collect();
        let millis: Vec<u128> = delays.iter().map(Duration::as_millis).collect();
        assert_eq!(millis, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
    }
}
