//! The consume-apply-commit loop of one read-model version.
//!
//! A projector assigns itself every partition of every event topic explicitly, starting at the
//! offsets stored in its version's schema (0 for a partition never read; see docs/read-side.md
//! for why explicit assignment and not a consumer group). It takes the records that are ready,
//! up to `batch_size`, and applies them in **one** transaction that also stores the next offset
//! of every partition the batch touched, so the offsets can never disagree with the read models:
//! a crash (even `kill -9` mid-batch) loses the whole transaction and the batch is read again.
//!
//! A record that breaks the contract goes to the dead-letter topic before the batch commits, so
//! it is never lost either (a crash between the two may dead-letter it twice; each dead letter
//! names its origin offset, so duplicates are recognisable). An event whose sequence is beyond
//! the next one of its aggregate (a gap) is not applied: it is counted, logged and recorded in
//! `projection_anomalies`. An event at or below the last applied sequence (a duplicate: a
//! losing writer's record) is counted and logged, never applied.
//!
//! A projector of a `building` version also tries to switch its version live whenever it has
//! reached the end of the log (`crate::versions::try_switch`).
//!
//! Each record is handled in a `project_event` span that continues the trace named by the
//! record's `traceparent` header, so the projection of an event shows up in the trace of the
//! request that appended it. Metrics (labelled by read-model version):
//!
//! - `projection_events_total{version, outcome}`: records committed, by outcome (`applied`,
//!   and the anomalies `duplicate`, `gap`, `dead_lettered`);
//! - `projection_batches_total{version, result}`: batches `committed` or `failed` (retried);
//! - `projection_batch_seconds{version}`: time to apply and commit one batch;
//! - `projection_lag_records{version, topic, partition}`: end of the partition minus the next
//!   offset committed, sampled every `FM_PROJECTOR__LAG_INTERVAL` by a task of its own, so it
//!   keeps growing while batches fail.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use event_log::{
    EventProducer, LogError, LogPosition, Topics,
    consumer::{self, TopicPartition},
    producer::headers,
};
use futures::StreamExt;
use platform::shutdown::CancellationToken;
use rdkafka::{
    Message,
    consumer::StreamConsumer,
    message::{BorrowedMessage, Header, Headers, OwnedHeaders},
};
use schemas::{ContractViolation, EventEnvelope, SchemaRegistry};
use sqlx::{PgConnection, PgPool};
use tracing::Instrument;

use crate::{
    read_models::{self, Applied, ApplyError},
    versions::{self, SwitchOutcome},
};

/// What a projector needs besides its version.
#[derive(Debug, Clone)]
pub(crate) struct ProjectorConfig {
    pub(crate) kafka: event_log::KafkaSettings,
    pub(crate) batch_size: usize,
    pub(crate) switch_check_interval: Duration,
    pub(crate) lag_interval: Duration,
}

/// Reads the log into one version of the read models until shut down.
pub(crate) struct Projector {
    consumer: StreamConsumer,
    worker: Worker,
}

/// Everything but the consumer, which the record stream borrows while the worker applies.
struct Worker {
    version: i32,
    /// Connections whose `search_path` is this version's schema.
    pool: PgPool,
    /// Connections with the default `search_path`, for `projection_versions`.
    admin_pool: PgPool,
    /// A second client for watermark requests, which block; the first one is busy streaming.
    watermarks: Arc<StreamConsumer>,
    partitions: Vec<TopicPartition>,
    registry: Arc<SchemaRegistry>,
    dead_letters: EventProducer,
    topics: Topics,
    config: ProjectorConfig,
    building: bool,
    /// The next offset of each partition as last committed, for the lag gauge.
    committed: Arc<Mutex<BTreeMap<TopicPartition, i64>>>,
    /// For a building version: the end of the log observed when it first looked, which it must
    /// reach before it may switch (the end itself moves on under load; what happens after this
    /// point is applied to the new version as well, so nothing is missed at the switch).
    switch_target: Option<BTreeMap<TopicPartition, i64>>,
}

impl std::fmt::Debug for Projector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.worker.fmt(f)
    }
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("version", &self.version)
            .field("building", &self.building)
            .finish_non_exhaustive()
    }
}

/// What one record of a batch came to.
enum Outcome {
    Applied,
    Duplicate,
    Gap,
    DeadLettered,
}

impl Outcome {
    fn label(&self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Duplicate => "duplicate",
            Self::Gap => "gap",
            Self::DeadLettered => "dead_lettered",
        }
    }
}

/// Why a record is dead-lettered: the full text goes with the dead letter, the log gets a form
/// without the offending values (they may be personal data).
struct Reason {
    full: String,
    for_log: String,
}

impl From<&ContractViolation> for Reason {
    fn from(violation: &ContractViolation) -> Self {
        Self {
            full: violation.to_string(),
            for_log: violation.without_values(),
        }
    }
}

/// Stores the next offset of a partition; never moves it backwards.
async fn store_offset(
    conn: &mut PgConnection,
    (topic, partition): &TopicPartition,
    next_offset: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO projection_offsets (topic, partition, next_offset) VALUES ($1, $2, $3) \
         ON CONFLICT (topic, partition) DO UPDATE SET next_offset = GREATEST(projection_offsets.next_offset, EXCLUDED.next_offset), updated_at = now()",
    )
    .bind(topic)
    .bind(partition)
    .bind(next_offset)
    .execute(conn)
    .await?;
    Ok(())
}

impl Projector {
    /// Assigns the partitions at the version's stored offsets.
    pub(crate) async fn start(
        version: i32,
        building: bool,
        pool: PgPool,
        admin_pool: PgPool,
        registry: Arc<SchemaRegistry>,
        config: ProjectorConfig,
    ) -> anyhow::Result<Self> {
        let settings = &config.kafka;
        let topics = Topics::new(&settings.topic_prefix);
        let client_id = format!("projection-service-v{version}");
        let consumer = consumer::manual_consumer(settings, &client_id)?;
        let watermarks = Arc::new(consumer::manual_consumer(
            settings,
            &format!("{client_id}-watermarks"),
        )?);
        let event_topics = topics.event_topics();
        let (watermarks, partitions) = {
            let settings = settings.clone();
            tokio::task::spawn_blocking(move || {
                let partitions = consumer::partitions(&watermarks, &event_topics, &settings)?;
                Ok::<_, LogError>((watermarks, partitions))
            })
            .await??
        };
        let mut conn = pool.acquire().await?;
        let stored = versions::stored_offsets(&mut conn, version).await?;
        drop(conn);
        let offsets: BTreeMap<TopicPartition, i64> = partitions
            .iter()
            .map(|tp| (tp.clone(), stored.get(tp).copied().unwrap_or(0)))
            .collect();
        consumer::assign(&consumer, &offsets)?;
        tracing::info!(version, building, ?offsets, "projector assigned");
        let dead_letters = EventProducer::new(settings)?;
        let committed = Arc::new(Mutex::new(offsets));
        Ok(Self {
            consumer,
            worker: Worker {
                version,
                pool,
                admin_pool,
                watermarks,
                partitions,
                registry,
                dead_letters,
                topics,
                config,
                building,
                committed,
                switch_target: None,
            },
        })
    }

    /// Runs until `shutdown`; the batch in hand is finished (committed) first.
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        let Self {
            consumer,
            mut worker,
        } = self;
        let lag = tokio::spawn(report_lag(
            worker.version,
            worker.watermarks.clone(),
            worker.partitions.clone(),
            worker.committed.clone(),
            worker.config.clone(),
            shutdown.clone(),
        ));
        let mut batches = consumer.stream().ready_chunks(worker.config.batch_size);
        let mut tick = tokio::time::interval(worker.config.switch_check_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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
                        worker.handle_until_done(&messages, &shutdown).await;
                    }
                }
                _ = tick.tick(), if worker.building => worker.check_switch().await,
            }
        }
        lag.abort();
        tracing::info!(version = worker.version, "projector stopped");
    }
}

/// Samples the lag of every partition (end offset minus the next offset committed) into
/// `projection_lag_records` until `shutdown`. The watermark requests block, so they run on the
/// blocking pool; a broker that does not answer leaves the last values in place.
async fn report_lag(
    version: i32,
    watermarks: Arc<StreamConsumer>,
    partitions: Vec<TopicPartition>,
    committed: Arc<Mutex<BTreeMap<TopicPartition, i64>>>,
    config: ProjectorConfig,
    shutdown: CancellationToken,
) {
    let version = version.to_string();
    let mut tick = tokio::time::interval(config.lag_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let (consumer, partitions_now, settings) =
            (watermarks.clone(), partitions.clone(), config.kafka.clone());
        let ends = tokio::task::spawn_blocking(move || {
            consumer::end_offsets(&consumer, &partitions_now, &settings)
        })
        .await;
        let Ok(Ok(ends)) = ends else {
            continue;
        };
        let committed = committed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        for ((topic, partition), end) in ends {
            let next = committed
                .get(&(topic.clone(), partition))
                .copied()
                .unwrap_or(0);
            #[allow(clippy::cast_precision_loss)] // a gauge; exact below 2^53 records
            let lag = (end - next).max(0) as f64;
            metrics::gauge!(
                "projection_lag_records",
                "version" => version.clone(),
                "topic" => topic,
                "partition" => partition.to_string(),
            )
            .set(lag);
        }
    }
}

impl Worker {
    /// Applies one batch, retrying with backoff while the database or broker is down.
    async fn handle_until_done(
        &self,
        messages: &[BorrowedMessage<'_>],
        shutdown: &CancellationToken,
    ) {
        let mut backoff = Duration::from_millis(100);
        let version = self.version.to_string();
        loop {
            let started = std::time::Instant::now();
            let result = self.handle_batch(messages).await;
            metrics::histogram!("projection_batch_seconds", "version" => version.clone())
                .record(started.elapsed().as_secs_f64());
            let label = if result.is_ok() {
                "committed"
            } else {
                "failed"
            };
            metrics::counter!("projection_batches_total", "version" => version.clone(), "result" => label)
                .increment(1);
            match result {
                Ok(()) => return,
                Err(error) => {
                    tracing::error!(%error, version = self.version, records = messages.len(), "could not project a batch; retrying");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn handle_batch(&self, messages: &[BorrowedMessage<'_>]) -> anyhow::Result<()> {
        let mut tx = self.pool.begin().await?;
        let mut next_offsets: BTreeMap<TopicPartition, i64> = BTreeMap::new();
        let mut outcomes = Vec::with_capacity(messages.len());
        for message in messages {
            let position = LogPosition {
                topic: message.topic().to_owned(),
                partition: message.partition(),
                offset: message.offset(),
            };
            let span = tracing::info_span!(
                "project_event",
                version = self.version,
                topic = %position.topic,
                partition = position.partition,
                offset = position.offset,
                event_type = tracing::field::Empty,
                aggregate_id = tracing::field::Empty,
                trace_id = tracing::field::Empty,
            );
            platform::trace::continue_trace(
                &span,
                platform::trace::context_from_kafka_headers(message.headers()),
            );
            let outcome = self
                .handle_record(&mut tx, message, &position)
                .instrument(span)
                .await?;
            outcomes.push(outcome);
            let next = next_offsets
                .entry((position.topic.clone(), position.partition))
                .or_insert(0);
            *next = (*next).max(position.offset + 1);
        }
        for (tp, next) in &next_offsets {
            store_offset(&mut tx, tp, *next).await?;
        }
        tx.commit().await?;
        self.committed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend(next_offsets);
        let version = self.version.to_string();
        for outcome in outcomes {
            metrics::counter!("projection_events_total", "version" => version.clone(), "outcome" => outcome.label()).increment(1);
        }
        Ok(())
    }

    async fn handle_record(
        &self,
        tx: &mut PgConnection,
        message: &BorrowedMessage<'_>,
        position: &LogPosition,
    ) -> anyhow::Result<Outcome> {
        let envelope = match self
            .registry
            .validate_bytes(message.payload().unwrap_or_default())
        {
            Ok(envelope) => envelope,
            Err(violation) => {
                self.dead_letter(message, position, &Reason::from(&violation))
                    .await?;
                return Ok(Outcome::DeadLettered);
            }
        };
        let span = tracing::Span::current();
        span.record("event_type", envelope.event_type.as_str());
        span.record(
            "aggregate_id",
            tracing::field::display(envelope.aggregate_id),
        );
        if self.topics.aggregate_of(&position.topic) != Some(envelope.aggregate_type) {
            let full = format!(
                "a {} event on topic {}",
                envelope.aggregate_type, position.topic
            );
            let reason = Reason {
                for_log: full.clone(),
                full,
            };
            self.dead_letter(message, position, &reason).await?;
            return Ok(Outcome::DeadLettered);
        }
        match read_models::apply(&mut *tx, &self.registry, &envelope).await {
            Ok(Applied::Changed) => Ok(Outcome::Applied),
            Ok(Applied::Stale) => {
                tracing::warn!(
                    version = self.version,
                    aggregate_id = %envelope.aggregate_id,
                    event_id = %envelope.event_id,
                    sequence = envelope.sequence,
                    topic = %position.topic, partition = position.partition, offset = position.offset,
                    "duplicate sequence in an aggregate stream (a losing writer's record); not applied"
                );
                Ok(Outcome::Duplicate)
            }
            Ok(Applied::Gap { expected }) => {
                tracing::error!(
                    version = self.version,
                    aggregate_id = %envelope.aggregate_id,
                    sequence = envelope.sequence,
                    expected,
                    topic = %position.topic, partition = position.partition, offset = position.offset,
                    "gap in an aggregate stream; event not applied"
                );
                record_gap(&mut *tx, &envelope, expected, position).await?;
                Ok(Outcome::Gap)
            }
            // Decoding happens before any write, so nothing of this record is in the transaction.
            Err(ApplyError::Contract(violation)) => {
                self.dead_letter(message, position, &Reason::from(&violation))
                    .await?;
                Ok(Outcome::DeadLettered)
            }
            Err(ApplyError::Database(error)) => Err(error.into()),
        }
    }

    /// Sends a record that cannot be used to the dead-letter topic with the reason and its
    /// origin. Its offset is stored with the rest of the batch, so the projector moves on.
    async fn dead_letter(
        &self,
        message: &BorrowedMessage<'_>,
        position: &LogPosition,
        reason: &Reason,
    ) -> anyhow::Result<()> {
        tracing::warn!(reason = %reason.for_log, topic = %position.topic, partition = position.partition, offset = position.offset, "dead-lettering a record");
        let reason = reason.full.as_str();
        let partition = position.partition.to_string();
        let offset = position.offset.to_string();
        let mut record_headers = OwnedHeaders::new()
            .insert(Header {
                key: headers::DEAD_LETTER_REASON,
                value: Some(reason),
            })
            .insert(Header {
                key: headers::ORIGIN_TOPIC,
                value: Some(position.topic.as_str()),
            })
            .insert(Header {
                key: headers::ORIGIN_PARTITION,
                value: Some(partition.as_str()),
            })
            .insert(Header {
                key: headers::ORIGIN_OFFSET,
                value: Some(offset.as_str()),
            });
        // The flow and trace the record belonged to stay with it, so a retried dead letter is
        // still part of its booking's history and trace.
        for name in [
            headers::CORRELATION_ID,
            headers::CAUSATION_ID,
            headers::TRACEPARENT,
        ] {
            let value = message
                .headers()
                .and_then(|h| h.iter().find(|header| header.key == name))
                .and_then(|header| header.value);
            if let Some(value) = value {
                record_headers = record_headers.insert(Header {
                    key: name,
                    value: Some(value),
                });
            }
        }
        self.dead_letters
            .send(
                &self.topics.dead_letter(),
                message.key(),
                message.payload().unwrap_or_default(),
                record_headers,
            )
            .await?;
        Ok(())
    }

    /// For a building version: once it has read up to the end of the log observed at its first
    /// check, try to switch it live. Failures are logged and retried at the next check.
    async fn check_switch(&mut self) {
        match self.reached_target().await {
            Ok(true) => {}
            Ok(false) => return,
            Err(error) => {
                tracing::warn!(%error, version = self.version, "could not check the rebuild's progress");
                return;
            }
        }
        match versions::try_switch(&self.admin_pool, self.version).await {
            Ok(SwitchOutcome::Switched { retired }) => {
                tracing::info!(
                    version = self.version,
                    ?retired,
                    "read-model version switched live"
                );
                self.building = false;
            }
            // The live projector committed a batch this one has not applied yet: next tick.
            Ok(SwitchOutcome::Behind) => {}
            Ok(SwitchOutcome::NotBuilding) => self.building = false,
            Err(error) => {
                tracing::warn!(%error, version = self.version, "could not switch the rebuilt version live");
            }
        }
    }

    /// Whether the stored offsets have reached the switch target on every partition (the target
    /// is observed on the first call).
    async fn reached_target(&mut self) -> anyhow::Result<bool> {
        if self.switch_target.is_none() {
            let watermarks = self.watermarks.clone();
            let partitions = self.partitions.clone();
            let settings = self.config.kafka.clone();
            let ends = tokio::task::spawn_blocking(move || {
                consumer::end_offsets(&watermarks, &partitions, &settings)
            })
            .await??;
            tracing::info!(
                version = self.version,
                ?ends,
                "rebuild will switch once it has read this far"
            );
            self.switch_target = Some(ends);
        }
        let mut conn = self.pool.acquire().await?;
        let stored = versions::stored_offsets(&mut conn, self.version).await?;
        Ok(self
            .switch_target
            .iter()
            .flatten()
            .all(|(tp, end)| stored.get(tp).copied().unwrap_or(0) >= *end))
    }
}

async fn record_gap(
    conn: &mut PgConnection,
    envelope: &EventEnvelope,
    expected: u64,
    position: &LogPosition,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO projection_anomalies (kind, aggregate_type, aggregate_id, sequence, expected, event_id, topic, partition, log_offset) \
         VALUES ('gap', $1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(envelope.aggregate_type.as_str())
    .bind(envelope.aggregate_id)
    .bind(i64::try_from(envelope.sequence).unwrap_or(i64::MAX))
    .bind(i64::try_from(expected).unwrap_or(i64::MAX))
    .bind(envelope.event_id)
    .bind(&position.topic)
    .bind(position.partition)
    .bind(position.offset)
    .execute(conn)
    .await?;
    Ok(())
}
