//! `fmctl lag`: how far each read-model build, and the booking saga, are behind the log.
//!
//! A projector stores, per partition, the next offset to read in its build's
//! `read_v<V>_b<B>.projection_offsets`, in the same transaction as the rows (docs/read-side.md); the
//! saga runner stores its own in `saga.offsets`, in the same database, with the saga rows. Lag
//! is the end of each partition (the offset the next record written will get) minus that stored
//! offset (0 where none is stored yet). Neither uses a consumer group, so the broker knows
//! nothing of this lag: PostgreSQL does. A database without the `saga` schema (no saga runner
//! deployed yet) shows the read models only.

use std::{collections::BTreeMap, time::Duration};

use anyhow::{Context, bail};
use clap::Args;
use event_log::{
    KafkaSettings, LogError, Topics,
    consumer::{self, TopicPartition},
};
use projection_service::versions::{self, Build, BuildState};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::{PgPool, postgres::PgPoolOptions};

use crate::inspect::{Output, explain};

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    fmctl lag\n  \
    fmctl lag --output json\n  \
    fmctl lag --fail-over 1000 || echo 'the read models are more than 1000 records behind'\n\n\
    Every build that is live or building is listed, of every read-model version (a building \
    build replays the log from the start, so its lag is expected to be large until it \
    switches), then the booking saga. --fail-over checks every live build (those queries \
    read) and the saga.")]
pub(crate) struct LagArgs {
    /// Exit with status 1 when a live build's or the saga's total lag is above N records.
    #[arg(long, value_name = "N")]
    fail_over: Option<u64>,
    #[arg(long, value_enum, default_value_t = Output::Pretty)]
    output: Output,
}

/// The settings this command reads (`FM_DATABASE__URL`, `FM_KAFKA__*`).
#[derive(Debug, Deserialize)]
struct Settings {
    #[serde(default)]
    kafka: KafkaSettings,
    database: Option<DatabaseSection>,
}

#[derive(Debug, Deserialize)]
struct DatabaseSection {
    url: SecretString,
}

/// One partition of one version.
#[derive(Debug)]
struct Row {
    topic: String,
    partition: i32,
    end: i64,
    next: i64,
    lag: u64,
}

pub(crate) async fn lag(args: LagArgs) -> anyhow::Result<()> {
    let settings: Settings =
        platform::settings::load().context("Failed to read the FM_* configuration")?;
    let database = settings
        .database
        .as_ref()
        .context("FM_DATABASE__URL is not set")?;
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(5))
        .connect(database.url.expose_secret())
        .await
        .context("Failed to connect to PostgreSQL (FM_DATABASE__URL)")?;
    let kafka = settings.kafka.clone();
    let topics = Topics::new(&kafka.topic_prefix).event_topics();
    let ends = tokio::task::spawn_blocking(move || -> Result<_, LogError> {
        let reader = consumer::manual_consumer(&kafka, "fmctl-lag")?;
        let partitions = consumer::partitions(&reader, &topics, &kafka)?;
        consumer::end_offsets(&reader, &partitions, &kafka)
    })
    .await?
    .map_err(|error| explain(error, &settings.kafka))?;
    let active: Vec<Build> = versions::active_builds(&pool)
        .await
        .context("Failed to read read_model_builds (has `projection-service migrate` run?)")?;
    if active.is_empty() {
        bail!(
            "no read-model build is live or building yet: a projection-service builds its release's version when it starts"
        );
    }
    let saga = saga_offsets(&pool)
        .await?
        .map(|stored| rows(&ends, &stored));
    let mut report = Vec::new();
    for build in active {
        let mut conn = pool.acquire().await.context("Failed to reach PostgreSQL")?;
        // A build whose projector has not created its tables yet has read nothing.
        let stored = versions::stored_offsets(&mut conn, &build.schema())
            .await
            .unwrap_or_default();
        report.push((build, rows(&ends, &stored)));
    }
    print_report(&report, saga.as_deref(), &args)
}

/// One row per partition of the log: its end, the next offset stored, the difference.
fn rows(ends: &BTreeMap<TopicPartition, i64>, stored: &BTreeMap<TopicPartition, i64>) -> Vec<Row> {
    ends.iter()
        .map(|(tp, end)| {
            let next = stored.get(tp).copied().unwrap_or(0);
            Row {
                topic: tp.0.clone(),
                partition: tp.1,
                end: *end,
                next,
                lag: u64::try_from(end - next).unwrap_or(0),
            }
        })
        .collect()
}

/// The saga runner's stored offsets, or `None` when its schema is not there (not deployed yet).
async fn saga_offsets(pool: &PgPool) -> anyhow::Result<Option<BTreeMap<TopicPartition, i64>>> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('saga.offsets') IS NOT NULL")
        .fetch_one(pool)
        .await
        .context("Failed to look for the saga's offsets")?;
    if !exists {
        return Ok(None);
    }
    let stored: Vec<(String, i32, i64)> =
        sqlx::query_as("SELECT topic, partition, next_offset FROM saga.offsets")
            .fetch_all(pool)
            .await
            .context("Failed to read saga.offsets")?;
    Ok(Some(
        stored
            .into_iter()
            .map(|(topic, partition, next)| ((topic, partition), next))
            .collect(),
    ))
}

/// Rows per build: (the build, one row per partition).
type Report = Vec<(Build, Vec<Row>)>;

fn total(rows: &[Row]) -> u64 {
    rows.iter().map(|r| r.lag).sum()
}

fn partitions_json(rows: &[Row]) -> Vec<Value> {
    rows.iter()
        .map(|r| {
            json!({"topic": r.topic, "partition": r.partition,
                   "end_offset": r.end, "next_offset": r.next, "lag": r.lag})
        })
        .collect()
}

fn print_report(report: &Report, saga: Option<&[Row]>, args: &LagArgs) -> anyhow::Result<()> {
    // Queries read every live build (one per version in use): the worst is what matters.
    let live_total = report
        .iter()
        .filter(|(build, _)| build.state == BuildState::Live)
        .map(|(_, rows)| total(rows))
        .max();

    match args.output {
        Output::Json => {
            let versions: Vec<_> = report
                .iter()
                .map(|(build, rows)| {
                    json!({"version": build.version, "build": build.build,
                           "state": build.state.as_str(),
                           "total_lag": total(rows), "partitions": partitions_json(rows)})
                })
                .collect();
            let saga = saga
                .map(|rows| json!({"total_lag": total(rows), "partitions": partitions_json(rows)}));
            println!(
                "{}",
                json!({"projection": "read-models", "versions": versions, "total_lag": live_total,
                       "saga": saga})
            );
        }
        Output::Pretty => {
            println!(
                "{:<8} {:<9} {:<44} {:>9} {:>10} {:>10} {:>8}",
                "BUILD", "STATE", "TOPIC", "PARTITION", "END", "NEXT", "LAG"
            );
            for (build, rows) in report {
                for r in rows {
                    println!(
                        "{:<8} {:<9} {:<44} {:>9} {:>10} {:>10} {:>8}",
                        format!("v{}b{}", build.version, build.build),
                        build.state.as_str(),
                        r.topic,
                        r.partition,
                        r.end,
                        r.next,
                        r.lag
                    );
                }
            }
            for r in saga.unwrap_or_default() {
                println!(
                    "{:<8} {:<9} {:<44} {:>9} {:>10} {:>10} {:>8}",
                    "saga", "-", r.topic, r.partition, r.end, r.next, r.lag
                );
            }
            for (build, rows) in report {
                println!(
                    "read models v{} build {} ({}): {} records behind",
                    build.version,
                    build.build,
                    build.state.as_str(),
                    total(rows)
                );
            }
            match saga {
                Some(rows) => println!("booking saga: {} records behind", total(rows)),
                None => println!("booking saga: not deployed (no saga.offsets table)"),
            }
        }
    }
    if let Some(limit) = args.fail_over {
        let live = live_total.context("no live read-model build, so there is no lag to check")?;
        if live > limit {
            bail!("the live read models are {live} records behind, over --fail-over {limit}");
        }
        if let Some(saga) = saga.map(total).filter(|saga| *saga > limit) {
            bail!("the booking saga is {saga} records behind, over --fail-over {limit}");
        }
    }
    Ok(())
}
