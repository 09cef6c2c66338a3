//! `fmctl lag`: how far each read-model version is behind the log.
//!
//! A projector stores, per partition, the next offset to read in its version's
//! `rm_v<N>.projection_offsets`, in the same transaction as the rows (docs/read-side.md). Lag is
//! the end of each partition (the offset the next record written will get) minus that stored
//! offset (0 where none is stored yet). The projectors use no consumer group, so the broker
//! knows nothing of this lag: PostgreSQL does.

use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use event_log::{KafkaSettings, LogError, Topics, consumer};
use projection_service::versions::{self, VersionState};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::json;
use sqlx::postgres::PgPoolOptions;

use crate::inspect::{Output, explain};

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    fmctl lag\n  \
    fmctl lag --output json\n  \
    fmctl lag --fail-over 1000 || echo 'the read models are more than 1000 records behind'\n\n\
    Every version that is live or building is listed (a building version replays the log from \
    the start, so its lag is expected to be large until it switches). The total that --fail-over \
    checks is the live version's: the one queries read.")]
pub(crate) struct LagArgs {
    /// Exit with status 1 when the live version's total lag is above N records.
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

fn state_name(state: VersionState) -> &'static str {
    match state {
        VersionState::Building => "building",
        VersionState::Live => "live",
        VersionState::Retired => "retired",
        VersionState::Dropped => "dropped",
    }
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
    let active: Vec<(i32, VersionState)> = versions::active_versions(&pool)
        .await
        .context("Failed to read projection_versions (has `projection-service migrate` run?)")?
        .into_iter()
        .filter(|(_, state)| matches!(state, VersionState::Live | VersionState::Building))
        .collect();
    if active.is_empty() {
        bail!(
            "no read-model version is live or building yet: the projection-service creates version 1 when it first starts"
        );
    }
    let mut report = Vec::new();
    for (version, state) in active {
        let mut conn = pool.acquire().await.context("Failed to reach PostgreSQL")?;
        let stored = versions::stored_offsets(&mut conn, version)
            .await
            .with_context(|| format!("Failed to read the stored offsets of version {version}"))?;
        let rows: Vec<Row> = ends
            .iter()
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
            .collect();
        report.push((version, state, rows));
    }
    print_report(&report, &args)
}

/// Rows per version: (version, state, one row per partition).
type Report = Vec<(i32, VersionState, Vec<Row>)>;

fn print_report(report: &Report, args: &LagArgs) -> anyhow::Result<()> {
    let live_total = report
        .iter()
        .find(|(_, state, _)| *state == VersionState::Live)
        .map(|(_, _, rows)| rows.iter().map(|r| r.lag).sum::<u64>());

    match args.output {
        Output::Json => {
            let versions: Vec<_> = report
                .iter()
                .map(|(version, state, rows)| {
                    let partitions: Vec<_> = rows
                        .iter()
                        .map(|r| {
                            json!({"topic": r.topic, "partition": r.partition,
                                   "end_offset": r.end, "next_offset": r.next, "lag": r.lag})
                        })
                        .collect();
                    json!({"version": version, "state": state_name(*state),
                           "total_lag": rows.iter().map(|r| r.lag).sum::<u64>(),
                           "partitions": partitions})
                })
                .collect();
            println!(
                "{}",
                json!({"projection": "read-models", "versions": versions, "total_lag": live_total})
            );
        }
        Output::Pretty => {
            println!(
                "{:<8} {:<9} {:<44} {:>9} {:>10} {:>10} {:>8}",
                "VERSION", "STATE", "TOPIC", "PARTITION", "END", "NEXT", "LAG"
            );
            for (version, state, rows) in report {
                for r in rows {
                    println!(
                        "{:<8} {:<9} {:<44} {:>9} {:>10} {:>10} {:>8}",
                        format!("v{version}"),
                        state_name(*state),
                        r.topic,
                        r.partition,
                        r.end,
                        r.next,
                        r.lag
                    );
                }
            }
            for (version, state, rows) in report {
                println!(
                    "read models v{version} ({}): {} records behind",
                    state_name(*state),
                    rows.iter().map(|r| r.lag).sum::<u64>()
                );
            }
        }
    }
    if let Some(limit) = args.fail_over {
        let total =
            live_total.context("no live read-model version, so there is no lag to check")?;
        if total > limit {
            bail!("the live read models are {total} records behind, over --fail-over {limit}");
        }
    }
    Ok(())
}
