//! Replay: a projection-service process rebuilds the read models from offset 0 into a fresh
//! database; beside it one raw consumer reading the same log, and the raw PostgreSQL work of
//! one booking row per event, by single-row `INSERT`s in transactions of a projector's batch
//! size and by one `COPY`.

use std::time::Duration;

use domain::values::BookingId;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use crate::{
    config::Bench,
    cpu::{Census, CpuUse},
    kafka,
    machine::load_average,
    pg, seed, stack,
};

/// The projector's default batch size (`FM_PROJECTOR__BATCH_SIZE`).
const PROJECTOR_BATCH: u64 = 500;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ReplayRep {
    pub raw_consume_s: f64,
    /// From the projection-service's start until every end offset was stored.
    pub replay_s: f64,
    pub insert_s: f64,
    pub copy_s: f64,
    pub order: String,
    pub load_average: String,
    /// Where the machine's CPU went during the raw consume, and during the replay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_consume_cpu: Option<CpuUse>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_cpu: Option<CpuUse>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ReplayResults {
    pub events: u64,
    pub stories: usize,
    pub bytes: u64,
    /// How long seeding took (bulk producer: linger 20 ms, many records in flight).
    pub seed_s: f64,
    pub reps: Vec<ReplayRep>,
}

/// What the query section reuses: a database holding the replayed read models, and the ids of
/// the bookings in it.
#[derive(Debug)]
pub(crate) struct Replayed {
    pub database_url: String,
    pub bookings: Vec<BookingId>,
}

async fn replay_once(
    bench: &Bench,
    kafka: &event_log::KafkaSettings,
    ends: &std::collections::BTreeMap<event_log::consumer::TopicPartition, i64>,
    rep: usize,
) -> anyhow::Result<(Timed, String)> {
    let database_url = pg::fresh_database(&bench.admin_url, "replay").await?;
    let pool = PgPool::connect(&database_url).await?;
    let census = Census::take();
    let mut projector =
        stack::projection_service(bench, kafka, &database_url, &format!("replay-{rep}"))?;
    let started = projector.started;
    let took = pg::wait_caught_up(&pool, ends, started, Duration::from_hours(4), || {
        projector.check_alive()
    })
    .await?;
    let cpu = census.as_ref().and_then(Census::since);
    projector.stop().await?;
    Ok(((took, cpu), database_url))
}

/// How long something took, and the CPU it took.
type Timed = (Duration, Option<CpuUse>);

/// [`kafka::consume_all`], with its CPU.
async fn raw_consume(kafka: &event_log::KafkaSettings, total: i64) -> anyhow::Result<Timed> {
    let census = Census::take();
    let took = kafka::consume_all(kafka, total).await?;
    Ok((took, census.as_ref().and_then(Census::since)))
}

pub(crate) async fn run(bench: &Bench) -> anyhow::Result<(ReplayResults, Replayed)> {
    let kafka = bench.kafka("replay");
    bench.topics(&kafka).await?;
    eprintln!("  replay: seeding {} events", bench.sizes.replay_events);
    let seeded = seed::stories(&kafka, bench.sizes.replay_events).await?;
    let ends = kafka::end_offsets(&kafka).await?;
    let total: i64 = ends.values().sum();
    let mut reps = Vec::new();
    let mut last_database = String::new();
    for rep in 0..bench.sizes.repetitions {
        eprintln!(
            "  replay, repetition {} of {}",
            rep + 1,
            bench.sizes.repetitions
        );
        let load_before = load_average();
        let consume_first = rep % 2 == 0;
        let ((consumed, raw_consume_cpu), ((replayed, replay_cpu), database_url)) = if consume_first
        {
            let c = raw_consume(&kafka, total).await?;
            (c, replay_once(bench, &kafka, &ends, rep).await?)
        } else {
            let r = replay_once(bench, &kafka, &ends, rep).await?;
            (raw_consume(&kafka, total).await?, r)
        };
        let pool = PgPool::connect(&database_url).await?;
        let shape = pg::RowShape::of_live_bookings(&pool).await?;
        let rows = u64::try_from(total)?;
        let inserted = shape.insert(&pool, rows, PROJECTOR_BATCH).await?;
        let copied = shape.copy(&pool, rows).await?;
        sqlx::query("DROP TABLE bench_insert, bench_copy")
            .execute(&pool)
            .await?;
        pool.close().await;
        eprintln!(
            "    raw consume {consumed:.1?}, replay {replayed:.1?}, INSERT {inserted:.1?}, COPY {copied:.1?}"
        );
        reps.push(ReplayRep {
            raw_consume_s: consumed.as_secs_f64(),
            replay_s: replayed.as_secs_f64(),
            insert_s: inserted.as_secs_f64(),
            copy_s: copied.as_secs_f64(),
            order: if consume_first {
                "raw consume, replay, INSERT, COPY".into()
            } else {
                "replay, raw consume, INSERT, COPY".into()
            },
            load_average: format!("{load_before} → {}", load_average()),
            raw_consume_cpu,
            replay_cpu,
        });
        last_database = database_url;
    }
    Ok((
        ReplayResults {
            events: u64::try_from(total)?,
            stories: seeded.bookings.len(),
            bytes: seeded.bytes,
            seed_s: seeded.elapsed.as_secs_f64(),
            reps,
        },
        Replayed {
            database_url: last_database,
            bookings: seeded.bookings,
        },
    ))
}

/// Events per second, for a count and a time in seconds.
pub(crate) fn rate(events: u64, seconds: f64) -> f64 {
    #[allow(clippy::cast_precision_loss)] // Counts far below 2^52.
    let events = events as f64;
    if seconds > 0.0 { events / seconds } else { 0.0 }
}
