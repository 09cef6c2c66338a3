//! `fmctl projections ...`: the read-model versions and their builds: status, a same-shape
//! rebuild, the parked aggregates, and the removal of the legacy layout (docs/read-side.md,
//! docs/operations.md, docs/evolution.md).
//!
//! A rebuild is asked of the projection-service through PostgreSQL: this inserts a `building`
//! build of the version (`projection_service::versions::request_rebuild`); the running
//! projection-service of that version creates the build's schema, replays the log into it beside
//! the live build, and switches the version's views to it once it has caught up. This command
//! shows the replay's progress (offsets stored by the new build against the end of the log),
//! then waits for the switch and for the old build to be dropped. Queries keep answering all
//! along. A change of shape needs no command: the release that brings it builds its version.

use std::time::Duration;

use anyhow::{Context, bail};
use chrono::{DateTime, SecondsFormat, Utc};
use clap::Subcommand;
use event_log::{KafkaSettings, LogError, Topics, consumer};
use indicatif::{ProgressBar, ProgressStyle};
use projection_service::{
    parking,
    versions::{self, LegacyDropError, RebuildError, VersionStatus},
};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::{PgPool, postgres::PgPoolOptions};

use crate::inspect::{Output, explain};

#[derive(Debug, Subcommand)]
pub(crate) enum ProjectionsCommand {
    /// Rebuild a read-model version from the log beside its live build, then switch (no
    /// downtime): after a fold was fixed or a read model repaired. A change of shape needs no
    /// rebuild: the release that brings it builds its version.
    #[command(after_help = "Examples:\n  \
        fmctl projections rebuild\n  \
        fmctl projections rebuild --version 3 --no-wait\n\n\
        Without --version it rebuilds the version in use, and refuses to guess while several \
        are (during a rollout). A projection-service of that version does the work.")]
    Rebuild {
        /// The read-model version to rebuild (default: the only one in use).
        #[arg(long)]
        version: Option<i32>,
        /// Only ask for the rebuild; do not wait for it.
        #[arg(long)]
        no_wait: bool,
        /// Give up waiting after this many seconds (the rebuild itself goes on).
        #[arg(long, default_value_t = 3600)]
        timeout_secs: u64,
    },
    /// Every read-model version: its builds and how far each has read, the query-apis reading
    /// it, and when it is (or was) dropped.
    #[command(after_help = "Examples:\n  \
        fmctl projections status\n  \
        fmctl projections status --output json")]
    Status {
        #[arg(long, value_enum, default_value_t = Output::Pretty)]
        output: Output,
    },
    /// The aggregates each active build has parked: records it cannot apply yet (an event
    /// version or type its release does not know, or a gap in the stream), kept in order until
    /// a release that knows them runs or the missing record arrives (docs/evolution.md).
    #[command(after_help = "Examples:\n  \
        fmctl projections parked\n  \
        fmctl projections parked --output json\n\n\
        Nothing parked is lost: a projection-service of a release that knows the record applies \
        everything parked, in order, when it starts.")]
    Parked {
        #[arg(long, value_enum, default_value_t = Output::Pretty)]
        output: Output,
    },
    /// Drop the read models of the releases before read-model versions were declared
    /// (`projection_versions`, `rm_v<N>`, the legacy `live` views), once none of those releases
    /// runs; `live` then shows the newest version.
    DropLegacy,
}

/// The settings these commands read (`FM_DATABASE__URL`, `FM_KAFKA__*`).
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

async fn connect(settings: &Settings) -> anyhow::Result<PgPool> {
    let database = settings
        .database
        .as_ref()
        .context("FM_DATABASE__URL is not set")?;
    PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(5))
        .connect(database.url.expose_secret())
        .await
        .context("Failed to connect to PostgreSQL (FM_DATABASE__URL)")
}

/// How far the build in `schema` has read: (records read, records in the log), over every
/// partition.
async fn progress(
    pool: &PgPool,
    kafka: &KafkaSettings,
    schema: &str,
) -> anyhow::Result<(u64, u64)> {
    let topics = Topics::new(&kafka.topic_prefix).event_topics();
    let settings = kafka.clone();
    let ends = tokio::task::spawn_blocking(move || -> Result<_, LogError> {
        let reader = consumer::manual_consumer(&settings, "fmctl-progress")?;
        let partitions = consumer::partitions(&reader, &topics, &settings)?;
        consumer::end_offsets(&reader, &partitions, &settings)
    })
    .await?
    .map_err(|error| explain(error, kafka))?;
    let mut conn = pool.acquire().await?;
    // A build whose projector has not created its tables yet has read nothing.
    let stored = versions::stored_offsets(&mut conn, schema)
        .await
        .unwrap_or_default();
    let (mut done, mut total) = (0_u64, 0_u64);
    for (tp, end) in ends {
        let end = u64::try_from(end).unwrap_or(0);
        let at = stored
            .get(&tp)
            .and_then(|offset| u64::try_from(*offset).ok())
            .unwrap_or(0);
        total += end;
        done += at.min(end);
    }
    Ok((done, total))
}

pub(crate) async fn projections(command: ProjectionsCommand) -> anyhow::Result<()> {
    let settings: Settings =
        platform::settings::load().context("Failed to read the FM_* configuration")?;
    let pool = connect(&settings).await?;
    match command {
        ProjectionsCommand::Status { output } => status(&pool, &settings.kafka, output).await,
        ProjectionsCommand::Parked { output } => parked(&pool, output).await,
        ProjectionsCommand::Rebuild {
            version,
            no_wait,
            timeout_secs,
        } => {
            rebuild(
                &pool,
                &settings.kafka,
                version,
                no_wait,
                Duration::from_secs(timeout_secs),
            )
            .await
        }
        ProjectionsCommand::DropLegacy => drop_legacy(&pool).await,
    }
}

async fn read_status(pool: &PgPool) -> anyhow::Result<Vec<VersionStatus>> {
    versions::status(pool)
        .await
        .context("Failed to read the read-model versions (has `projection-service migrate` run?)")
}

fn time(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// What a version is now: `dropped`, `live` (a build answers), `building` (none yet), or
/// `legacy`.
fn state_of(version: &VersionStatus) -> &'static str {
    if version.dropped_at.is_some() {
        "dropped"
    } else if version.legacy {
        "legacy"
    } else if version.builds.iter().any(|b| b.state == "live") {
        "live"
    } else {
        "building"
    }
}

/// `fmctl projections parked`: every active build's parked aggregates, longest parked first.
async fn parked(pool: &PgPool, output: Output) -> anyhow::Result<()> {
    let mut documents = Vec::new();
    for build in versions::active_builds(pool).await? {
        // A build whose projector is of a release before parking has no table: nothing parked.
        let aggregates = match parking::parked(pool, &build.schema()).await {
            Ok(aggregates) => aggregates,
            Err(sqlx::Error::Database(error)) if error.code().as_deref() == Some("42P01") => {
                Vec::new()
            }
            Err(error) => return Err(error.into()),
        };
        match output {
            Output::Json => documents.push(json!({
                "version": build.version,
                "build": build.build,
                "state": build.state.as_str(),
                "parked": aggregates.iter().map(|parked| json!({
                    "aggregate_type": parked.aggregate_type,
                    "aggregate_id": parked.aggregate_id,
                    "sequence": parked.sequence,
                    "event_type": parked.event_type,
                    "event_version": parked.event_version,
                    "reason": parked.reason,
                    "records": parked.records,
                    "since": parked.since,
                })).collect::<Vec<_>>(),
            })),
            Output::Pretty => {
                println!(
                    "version {} build {} ({}): {} aggregates parked",
                    build.version,
                    build.build,
                    build.state.as_str(),
                    aggregates.len()
                );
                for parked in &aggregates {
                    println!("  {parked}");
                }
            }
        }
    }
    if output == Output::Json {
        println!("{}", json!({ "builds": documents }));
    }
    Ok(())
}

async fn status(pool: &PgPool, kafka: &KafkaSettings, output: Output) -> anyhow::Result<()> {
    let all = read_status(pool).await?;
    let mut documents = Vec::new();
    for version in &all {
        let mut builds = Vec::new();
        for build in &version.builds {
            let (read, in_log) = progress(pool, kafka, &build.schema).await?;
            builds.push((build, read, in_log));
        }
        match output {
            Output::Json => {
                let mut document = serde_json::to_value(version)?;
                document["state"] = json!(state_of(version));
                document["builds"] = Value::Array(
                    builds
                        .iter()
                        .map(|(build, read, in_log)| {
                            let mut build = serde_json::to_value(build).unwrap_or(Value::Null);
                            build["records_read"] = json!(read);
                            build["records_in_log"] = json!(in_log);
                            build
                        })
                        .collect(),
                );
                documents.push(document);
            }
            Output::Pretty => print_version(version, &builds),
        }
    }
    if output == Output::Json {
        println!("{}", json!({ "versions": documents }));
    } else if all.is_empty() {
        println!(
            "no read-model version yet: a projection-service declares its release's version when it starts"
        );
    }
    Ok(())
}

fn print_version(version: &VersionStatus, builds: &[(&versions::BuildStatus, u64, u64)]) {
    let state = state_of(version);
    let since = match (state, version.live_at, version.dropped_at) {
        ("dropped", _, Some(at)) => format!(" {}", time(at)),
        ("live", Some(at), _) => format!(" since {}", time(at)),
        ("legacy", _, _) => " (the releases before read-model versions were declared)".to_owned(),
        _ => String::new(),
    };
    println!("v{} {state}{since}", version.version);
    for (build, read, in_log) in builds {
        let projector = if build.projected {
            "running"
        } else {
            "none holds its lock"
        };
        println!(
            "  build {:<5} {:<9} {:<16} {read}/{in_log} records  projector: {projector}",
            build.build, build.state, build.schema
        );
    }
    if version.legacy {
        println!(
            "  readers: not tracked; `fmctl projections drop-legacy` once none of those releases runs"
        );
        return;
    }
    if version.dropped_at.is_some() {
        return;
    }
    if version.readers.is_empty() {
        let last = version
            .last_read_at
            .map_or_else(|| "never".to_owned(), time);
        println!("  readers: no query-api running; last seen {last}");
    } else {
        let hosts: Vec<String> = version
            .readers
            .iter()
            .map(|r| format!("{} (since {})", r.host, time(r.started_at)))
            .collect();
        println!(
            "  readers: {} query-api(s) running: {}",
            hosts.len(),
            hosts.join(", ")
        );
    }
    match version.drop_after {
        Some(at) => println!(
            "  drop: after {} (no query-api reads it, a newer version is live, then the grace period)",
            time(at)
        ),
        None => println!("  drop: kept (a query-api reads it, or no newer version is live)"),
    }
}

/// The version to rebuild: the one named, else the only one in use.
fn choose(all: &[VersionStatus], asked: Option<i32>) -> anyhow::Result<i32> {
    if let Some(version) = asked {
        return Ok(version);
    }
    let in_use: Vec<i32> = all
        .iter()
        .filter(|v| !v.legacy && v.dropped_at.is_none())
        .map(|v| v.version)
        .collect();
    match in_use.as_slice() {
        [] => bail!(
            "there is no read-model version to rebuild yet: a projection-service declares its release's version when it starts"
        ),
        [only] => Ok(*only),
        several => bail!(
            "several read-model versions are in use ({}): say which to rebuild with --version",
            several
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

async fn build_state(pool: &PgPool, build: i32) -> anyhow::Result<Option<String>> {
    Ok(
        sqlx::query_scalar("SELECT state FROM read_model_builds WHERE build = $1")
            .bind(build)
            .fetch_optional(pool)
            .await?,
    )
}

async fn rebuild(
    pool: &PgPool,
    kafka: &KafkaSettings,
    asked: Option<i32>,
    no_wait: bool,
    timeout: Duration,
) -> anyhow::Result<()> {
    let all = read_status(pool).await?;
    let version = choose(&all, asked)?;
    let old = versions::builds(pool, version)
        .await?
        .into_iter()
        .find(|b| b.state == versions::BuildState::Live)
        .map(|b| b.build);
    let request = match versions::request_rebuild(pool, version, "fmctl").await {
        Ok(request) => request,
        Err(RebuildError::Database(error)) => {
            return Err(error).context("Failed to ask for the rebuild");
        }
        Err(refused) => bail!("{refused}"),
    };
    let build = request.build();
    let schema = versions::build_schema(version, build);
    match request {
        versions::RebuildRequest::Started { .. } => println!(
            "rebuilding read-model version {version} as build {build} ({schema}) beside {}",
            old.map_or_else(|| "no live build".to_owned(), |b| format!("live build {b}"))
        ),
        versions::RebuildRequest::AlreadyBuilding { .. } => println!(
            "a build of read-model version {version} is already under way: build {build} ({schema}); following it"
        ),
    }
    if no_wait {
        return Ok(());
    }
    let deadline = tokio::time::Instant::now() + timeout;
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{spinner} replay [{bar:40}] {pos}/{len} records {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut idle_since = tokio::time::Instant::now();
    let mut last = 0;
    loop {
        let state = build_state(pool, build).await?;
        let (done, total) = progress(pool, kafka, &schema).await?;
        bar.set_length(total);
        bar.set_position(done);
        if done != last {
            last = done;
            idle_since = tokio::time::Instant::now();
        } else if idle_since.elapsed() > Duration::from_secs(10) && done < total {
            bar.set_message(format!(
                "(no progress for 10 s: is a projection-service of version {version} running?)"
            ));
        }
        match state.as_deref() {
            Some("live") => break,
            Some("building") => {}
            other => bail!("build {build} is {other:?}, not building: someone else moved it"),
        }
        if tokio::time::Instant::now() > deadline {
            bail!(
                "gave up waiting after {timeout:?}; the rebuild goes on (`fmctl projections status`)"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bar.finish_with_message("caught up; switched live");
    if let Some(old) = old {
        let spinner = ProgressBar::new_spinner();
        spinner.set_message(format!("dropping build {old}"));
        loop {
            spinner.tick();
            if build_state(pool, old).await?.as_deref() == Some("dropped") {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "build {old} is retired but not dropped yet; the projection-service drops it"
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        spinner.finish_with_message(format!("build {old} dropped"));
    }
    println!("read-model version {version} answers from build {build}");
    Ok(())
}

async fn drop_legacy(pool: &PgPool) -> anyhow::Result<()> {
    match versions::drop_legacy(pool).await {
        Ok(dropped) => {
            println!(
                "dropped the legacy read models ({}) and projection_versions; live.* shows the newest version",
                if dropped.is_empty() {
                    "no build left".to_owned()
                } else {
                    dropped.join(", ")
                }
            );
            Ok(())
        }
        Err(LegacyDropError::Database(error)) => {
            Err(error).context("Failed to drop the legacy read models")
        }
        Err(refused) => bail!("{refused}"),
    }
}
