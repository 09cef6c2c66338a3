//! One read-model build's projector: the read models as a `batch_consumer::BatchApplier`.
//!
//! The loop is the shared batch consumer's: every partition of every event topic is assigned
//! explicitly, starting at the offsets stored in the build's schema (`projection_offsets`; see
//! docs/read-side.md for why explicit assignment and not a consumer group), and each batch of
//! ready records, up to `batch_size`, is applied in **one** transaction that also stores the next
//! offset of every partition the batch touched, so the offsets can never disagree with the read
//! models: a crash (even `kill -9` mid-batch) loses the whole transaction and the batch is read
//! again.
//!
//! A record that breaks the contract goes to the dead-letter topic before the batch commits, so
//! it is never lost either (a crash between the two may dead-letter it twice; each dead letter
//! names its origin offset, so duplicates are recognisable). A record of an (event type,
//! version) this release does not know, or whose sequence is beyond the next one of its
//! aggregate (a gap, also recorded in `projection_anomalies`), **parks** its aggregate: it and
//! the aggregate's later records are kept in `parked_records` in the batch's transaction, and
//! applied in order once the missing record arrives or a release that knows the record starts
//! (`crate::parking`, docs/evolution.md). An event at or below the last applied sequence (a
//! duplicate: a losing writer's record) is counted and logged, never applied.
//!
//! A projector of a `building` build also runs a task that tries to switch its build live
//! once it has reached the end of the log (`crate::versions::try_switch`).
//!
//! Each record is handled in a `project_event` span that continues the trace named by the
//! record's `traceparent` header, so the projection of an event shows up in the trace of the
//! request that appended it. Metrics (labelled by read-model version and build):
//!
//! - `projection_events_total{version, build, outcome}`: records committed, by outcome
//!   (`applied`, `ignored`, `parked`, and the anomalies `duplicate`, `gap`, `dead_lettered`);
//! - `projection_parked_aggregates{version, build}`: aggregates parked now, sampled with the lag;
//! - `projection_batches_total{version, build, result}`: batches `committed` or `failed`
//!   (retried);
//! - `projection_batch_seconds{version, build}`: time to apply and commit one batch;
//! - `projection_lag_records{version, build, topic, partition}`: end of the partition minus the next
//!   offset committed, sampled every `FM_PROJECTOR__LAG_INTERVAL` by a task of its own, so it
//!   keeps growing while batches fail.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use batch_consumer::{BatchApplier, BatchConsumer, ConsumerConfig, OffsetTable, RecordOutcome};
use event_log::{
    EventProducer, Record, Topics,
    consumer::{self, StreamConsumer, TopicPartition},
    dead_letters,
};
use platform::shutdown::CancellationToken;
use privacy::KeyStore;
use schemas::SchemaRegistry;
use sqlx::{PgConnection, PgPool};
use tracing::Instrument;

use crate::{
    batch,
    parking::{self, Projected},
    read_model::ReadModel,
    versions::{self, Build, BuildState, SwitchOutcome},
};

/// The projector's name on the dead letters it writes (`fm-dead-letter-reader`).
const READER: &str = "projection-service";

/// Where a build's projector keeps its offsets (in the build's schema, found through the
/// `search_path` of its connections).
const OFFSETS: OffsetTable = OffsetTable::new("projection_offsets");

/// Notified in every batch's transaction, so PostgreSQL delivers it once the batch is visible:
/// the query-api's consistency waits wake on it instead of polling (its `ADVANCED_CHANNEL`,
/// the same name; `system-tests/tests/consistency_wake.rs` fails when they differ).
const ADVANCED_CHANNEL: &str = "fm_read_models_advanced";

/// What a projector needs besides its version.
#[derive(Debug, Clone)]
pub(crate) struct ProjectorConfig {
    pub(crate) kafka: event_log::KafkaSettings,
    pub(crate) batch_size: usize,
    pub(crate) switch_check_interval: Duration,
    pub(crate) lag_interval: Duration,
}

/// Reads the log into one build of the read models until shut down.
pub(crate) struct Projector {
    consumer: BatchConsumer<ReadModels>,
    build: Build,
    lag: LagSampler,
    /// For a building build: what switches it live once it has caught up.
    switch: Option<Switch>,
}

impl std::fmt::Debug for Projector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Projector")
            .field("build", &self.build)
            .finish_non_exhaustive()
    }
}

/// The metric labels of one build: its version and its number.
#[derive(Debug, Clone)]
struct Labels {
    version: String,
    build: String,
}

impl Labels {
    fn of(build: Build) -> Self {
        Self {
            version: build.version.to_string(),
            build: build.build.to_string(),
        }
    }
}

/// The read models of one build, as the batch consumer's applier.
struct ReadModels {
    build: Build,
    labels: Labels,
    registry: Arc<SchemaRegistry>,
    keys: Arc<KeyStore>,
    dead_letters: EventProducer,
    topics: Topics,
    /// Shared with the lag sampler.
    committed: Arc<Mutex<BTreeMap<TopicPartition, i64>>>,
}

/// Why a record is dead-lettered: the full text goes with the dead letter, the log gets a form
/// without the offending values (they may be personal data).
struct Reason {
    full: String,
    for_log: String,
}

impl Projector {
    /// Assigns the partitions at the build's stored offsets.
    pub(crate) async fn start(
        model: ReadModel,
        build: Build,
        pool: PgPool,
        admin_pool: PgPool,
        registry: Arc<SchemaRegistry>,
        keys: Arc<KeyStore>,
        config: ProjectorConfig,
    ) -> anyhow::Result<Self> {
        let settings = &config.kafka;
        let topics = Topics::new(&settings.topic_prefix);
        let client_id = format!("projection-service-v{}-b{}", build.version, build.build);
        // A second client for watermark requests, which block; the first one is busy streaming.
        let watermarks = Arc::new(consumer::manual_consumer(
            settings,
            &format!("{client_id}-watermarks"),
        )?);
        // What an older release parked, this one may know (docs/evolution.md).
        let mut tx = pool.begin().await?;
        let (unparked, still_parked) = parking::drain_all(&mut tx, &registry, &keys).await?;
        tx.commit().await?;
        if unparked > 0 || still_parked > 0 {
            tracing::info!(
                version = build.version,
                build = build.build,
                unparked,
                still_parked,
                "parked aggregates drained at start"
            );
        }
        let committed = Arc::new(Mutex::new(BTreeMap::new()));
        let read_models = ReadModels {
            build,
            labels: Labels::of(build),
            registry,
            keys,
            dead_letters: EventProducer::new(settings)?,
            topics: topics.clone(),
            committed: committed.clone(),
        };
        let consumer = BatchConsumer::start(
            ConsumerConfig {
                kafka: settings.clone(),
                client_id,
                topics: topics.event_topics(),
                batch_size: config.batch_size,
                backoff: batch_consumer::Backoff::default(),
            },
            pool.clone(),
            OFFSETS,
            read_models,
        )
        .await?;
        let offsets = consumer.starting_offsets().clone();
        let building = build.state == BuildState::Building;
        tracing::info!(
            version = build.version,
            build = build.build,
            building,
            "projector assigned"
        );
        let partitions: Vec<TopicPartition> = offsets.keys().cloned().collect();
        *committed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = offsets;
        let switch = building.then(|| Switch {
            model,
            build: build.build,
            pool: pool.clone(),
            admin_pool,
            watermarks: watermarks.clone(),
            partitions: partitions.clone(),
            config: config.clone(),
            target: None,
        });
        Ok(Self {
            consumer,
            build,
            lag: LagSampler {
                labels: Labels::of(build),
                schema: build.schema(),
                pool: pool.clone(),
                watermarks,
                partitions,
                committed,
                config,
            },
            switch,
        })
    }

    /// Runs until `shutdown`; the batch in hand is finished (committed) first.
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        let lag = tokio::spawn(self.lag.run(shutdown.clone()));
        let switch = self
            .switch
            .map(|switch| tokio::spawn(switch.run(shutdown.clone())));
        self.consumer.run(shutdown).await;
        lag.abort();
        if let Some(switch) = switch {
            switch.abort();
        }
        tracing::info!(
            version = self.build.version,
            build = self.build.build,
            "projector stopped"
        );
    }
}

/// Samples the lag of every partition (end offset minus the next offset committed) into
/// `projection_lag_records`, and the parked aggregates into `projection_parked_aggregates`,
/// every `lag_interval`, in a task of its own so that it keeps growing while batches fail. The
/// watermark requests block, so they run on the blocking pool; a broker that does not answer
/// leaves the last values in place.
struct LagSampler {
    labels: Labels,
    /// The build's schema and a pool onto it, for `projection_parked_aggregates`.
    schema: String,
    pool: PgPool,
    watermarks: Arc<StreamConsumer>,
    partitions: Vec<TopicPartition>,
    /// The next offset of each partition as last committed (the applier updates it).
    committed: Arc<Mutex<BTreeMap<TopicPartition, i64>>>,
    config: ProjectorConfig,
}

impl LagSampler {
    async fn run(self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.config.lag_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            match parking::parked_count(&self.pool, &self.schema).await {
                #[allow(clippy::cast_precision_loss)] // a gauge; exact below 2^53 aggregates
                Ok(parked) => metrics::gauge!(
                    "projection_parked_aggregates",
                    "version" => self.labels.version.clone(),
                    "build" => self.labels.build.clone(),
                )
                .set(parked as f64),
                Err(error) => tracing::warn!(%error, "could not count the parked aggregates"),
            }
            let (consumer, partitions_now, settings) = (
                self.watermarks.clone(),
                self.partitions.clone(),
                self.config.kafka.clone(),
            );
            let ends = tokio::task::spawn_blocking(move || {
                consumer::end_offsets(&consumer, &partitions_now, &settings)
            })
            .await;
            let Ok(Ok(ends)) = ends else {
                continue;
            };
            let committed = self
                .committed
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
                    "version" => self.labels.version.clone(),
                    "build" => self.labels.build.clone(),
                    "topic" => topic,
                    "partition" => partition.to_string(),
                )
                .set(lag);
            }
        }
    }
}

impl BatchApplier for ReadModels {
    type Error = anyhow::Error;

    /// Each record in a `project_event` span that continues the trace of the request that
    /// appended it.
    async fn apply(
        &self,
        tx: &mut PgConnection,
        record: &Record<'_>,
    ) -> anyhow::Result<RecordOutcome> {
        let span = self.span(record);
        self.handle_record(tx, record).instrument(span).await
    }

    /// The whole batch folded in memory (`crate::batch`), each record in its `project_event`
    /// span; refused records are dead-lettered before the batch commits.
    async fn apply_batch(
        &self,
        tx: &mut PgConnection,
        records: &[Record<'_>],
    ) -> anyhow::Result<Vec<RecordOutcome>> {
        let inputs: Vec<batch::Input<'_>> = records
            .iter()
            .map(|record| batch::Input {
                payload: record.payload(),
                position: record.position(),
                span: self.span(record),
            })
            .collect();
        let projected =
            batch::project_batch(tx, &self.registry, &self.keys, &self.topics, &inputs).await?;
        let mut outcomes = Vec::with_capacity(projected.len());
        for ((record, input), projected) in records.iter().zip(&inputs).zip(projected) {
            outcomes.push(match projected {
                Projected::Outcome(outcome) => outcome,
                Projected::Refused { full, for_log } => {
                    self.dead_letter(record, &Reason { full, for_log })
                        .instrument(input.span.clone())
                        .await?;
                    RecordOutcome::DeadLettered
                }
            });
        }
        Ok(outcomes)
    }

    /// One notification per batch, whatever it touched: a wait reads its own partition's offset
    /// again, so the payload carries nothing.
    async fn before_commit(&self, tx: &mut PgConnection) -> anyhow::Result<()> {
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(ADVANCED_CHANNEL)
            .execute(tx)
            .await?;
        Ok(())
    }

    fn committed(&self, next_offsets: &BTreeMap<TopicPartition, i64>, outcomes: &[RecordOutcome]) {
        self.committed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend(next_offsets.iter().map(|(tp, next)| (tp.clone(), *next)));
        let Labels { version, build } = &self.labels;
        for outcome in outcomes {
            metrics::counter!(
                "projection_events_total",
                "version" => version.clone(),
                "build" => build.clone(),
                "outcome" => outcome.label(),
            )
            .increment(1);
        }
    }

    fn attempted(&self, committed: bool, elapsed: Duration) {
        let Labels { version, build } = &self.labels;
        metrics::histogram!(
            "projection_batch_seconds",
            "version" => version.clone(),
            "build" => build.clone(),
        )
        .record(elapsed.as_secs_f64());
        let result = if committed { "committed" } else { "failed" };
        metrics::counter!(
            "projection_batches_total",
            "version" => version.clone(),
            "build" => build.clone(),
            "result" => result,
        )
        .increment(1);
    }
}

impl ReadModels {
    /// The `project_event` span of a record, continuing the trace of the request that appended
    /// it.
    fn span(&self, record: &Record<'_>) -> tracing::Span {
        let position = record.position();
        let span = tracing::info_span!(
            "project_event",
            version = self.build.version,
            build = self.build.build,
            topic = %position.topic,
            partition = position.partition,
            offset = position.offset,
            event_type = tracing::field::Empty,
            aggregate_id = tracing::field::Empty,
            trace_id = tracing::field::Empty,
        );
        platform::trace::continue_trace(&span, record.trace_context());
        span
    }

    async fn handle_record(
        &self,
        tx: &mut PgConnection,
        record: &Record<'_>,
    ) -> anyhow::Result<RecordOutcome> {
        let projected = parking::project_record(
            &mut *tx,
            &self.registry,
            &self.keys,
            &self.topics,
            record.payload(),
            record.position(),
        )
        .await?;
        match projected {
            Projected::Outcome(outcome) => Ok(outcome),
            Projected::Refused { full, for_log } => {
                self.dead_letter(record, &Reason { full, for_log }).await?;
                Ok(RecordOutcome::DeadLettered)
            }
        }
    }

    /// Sends a record that cannot be used to the dead-letter topic with the reason and its
    /// origin. Its offset is stored with the rest of the batch, so the projector moves on.
    async fn dead_letter(&self, record: &Record<'_>, reason: &Reason) -> anyhow::Result<()> {
        let position = record.position();
        tracing::warn!(reason = %reason.for_log, topic = %position.topic, partition = position.partition, offset = position.offset, "dead-lettering a record");
        dead_letters::write(&self.dead_letters, record, READER, &reason.full).await?;
        Ok(())
    }
}

/// A building build's switch: once the build is within one batch of the end of the log (see
/// [`Switch::reached_target`]), it tries to switch it live, every `switch_check_interval` until
/// it has.
struct Switch {
    model: ReadModel,
    build: i32,
    pool: PgPool,
    admin_pool: PgPool,
    watermarks: Arc<StreamConsumer>,
    partitions: Vec<TopicPartition>,
    config: ProjectorConfig,
    /// The end of the log observed at the last look, which the build must reach before it looks
    /// again (the end moves on under load; what is written after it is applied to the new build
    /// as well, so nothing is missed at the switch).
    target: Option<BTreeMap<TopicPartition, i64>>,
}

impl Switch {
    async fn run(mut self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.config.switch_check_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            if self.check().await {
                return;
            }
        }
    }

    /// One check; `true` once the build is no longer building. Failures are logged and
    /// retried at the next check.
    async fn check(&mut self) -> bool {
        match self.reached_target().await {
            Ok(true) => {}
            Ok(false) => return false,
            Err(error) => {
                tracing::warn!(%error, version = self.model.version, build = self.build, "could not check the build's progress");
                return false;
            }
        }
        match versions::try_switch(&self.admin_pool, &self.model, self.build).await {
            Ok(SwitchOutcome::Switched { retired }) => {
                tracing::info!(
                    version = self.model.version,
                    build = self.build,
                    ?retired,
                    "read-model build switched live"
                );
                true
            }
            // The live projector committed a batch this one has not applied yet: next tick.
            Ok(SwitchOutcome::Behind) => false,
            Ok(SwitchOutcome::NotBuilding) => true,
            Err(error) => {
                tracing::warn!(%error, version = self.model.version, build = self.build, "could not switch the build live");
                false
            }
        }
    }

    /// Whether the build has caught up with the log: its stored offsets have reached the end
    /// observed at the last look, and the end observed now is within one batch of them.
    ///
    /// One look is not enough: a build takes minutes, writes go on meanwhile, and a build that
    /// switched on reaching the end seen at its start would go live (and its query-apis ready)
    /// that many minutes behind, so a read with a fresh consistency token would wait the
    /// difference out and time out (CI run 15, `read_model_rollout`). So each time the build
    /// reaches the end it last saw, it looks again; it switches once what is left is no more
    /// than one batch, and otherwise chases the new end.
    async fn reached_target(&mut self) -> anyhow::Result<bool> {
        let mut conn = self.pool.acquire().await?;
        let stored = OFFSETS.stored(&mut conn).await?;
        drop(conn);
        let read = |tp: &TopicPartition| stored.get(tp).copied().unwrap_or(0);
        if let Some(target) = &self.target
            && target.iter().any(|(tp, end)| read(tp) < *end)
        {
            return Ok(false);
        }
        let watermarks = self.watermarks.clone();
        let partitions = self.partitions.clone();
        let settings = self.config.kafka.clone();
        let ends = tokio::task::spawn_blocking(move || {
            consumer::end_offsets(&watermarks, &partitions, &settings)
        })
        .await??;
        let behind: i64 = ends.iter().map(|(tp, end)| (end - read(tp)).max(0)).sum();
        let within = i64::try_from(self.config.batch_size).unwrap_or(i64::MAX);
        if behind <= within {
            return Ok(true);
        }
        tracing::info!(
            version = self.model.version,
            build = self.build,
            behind,
            ?ends,
            "the build will switch live once it has read this far (and is then within one batch of the end)"
        );
        self.target = Some(ends);
        Ok(false)
    }
}
