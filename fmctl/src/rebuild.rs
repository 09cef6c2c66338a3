//! `fmctl projections ...`: rebuilding the read models and following the rebuild.
//!
//! A rebuild is asked of the projection-service through PostgreSQL: this inserts a `building`
//! row in `projection_versions` (`projection_service::versions::request_rebuild`); the running
//! projection-service creates the new version's schema, replays the log into it beside the live
//! one, and switches the query-api's views to it once it has caught up. This command shows the
//! replay's progress (offsets stored by the new version against the end of the log), then waits
//! for the switch and for the old version to be dropped. Queries keep answering all along.

use std::time::Duration;

use anyhow::{Context, bail};
use clap::Subcommand;
use event_log::{KafkaSettings, Topics, consumer};
use indicatif::{ProgressBar, ProgressStyle};
use projection_service::versions::{self, VersionState};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use sqlx::{PgPool, postgres::PgPoolOptions};

#[derive(Debug, Subcommand)]
pub(crate) enum ProjectionsCommand {
    /// Rebuild the read models from the log beside the live ones, then switch (no downtime).
    Rebuild {
        /// Only ask for the rebuild; do not wait for it.
        #[arg(long)]
        no_wait: bool,
        /// Give up waiting after this many seconds (the rebuild itself goes on).
        #[arg(long, default_value_t = 3600)]
        timeout_secs: u64,
    },
    /// Show each read-model version and how far it has read.
    Status,
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

fn settings() -> anyhow::Result<Settings> {
    platform::settings::load().context("Failed to read the FM_* configuration")
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
        .context("Failed to connect to PostgreSQL")
}

/// How far `version` has read: (records read, records in the log), over every partition.
async fn progress(
    pool: &PgPool,
    kafka: &KafkaSettings,
    version: i32,
) -> anyhow::Result<(u64, u64)> {
    let topics = Topics::new(&kafka.topic_prefix).event_topics();
    let kafka = kafka.clone();
    let ends = tokio::task::spawn_blocking(move || {
        let reader = consumer::manual_consumer(&kafka, "fmctl-progress")?;
        let partitions = consumer::partitions(&reader, &topics, &kafka)?;
        consumer::end_offsets(&reader, &partitions, &kafka)
    })
    .await??;
    let mut conn = pool.acquire().await?;
    let stored = versions::stored_offsets(&mut conn, version)
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

async fn state_of(pool: &PgPool, version: i32) -> anyhow::Result<Option<String>> {
    Ok(
        sqlx::query_scalar("SELECT state FROM projection_versions WHERE version = $1")
            .bind(version)
            .fetch_optional(pool)
            .await?,
    )
}

pub(crate) async fn projections(command: ProjectionsCommand) -> anyhow::Result<()> {
    let settings = settings()?;
    let pool = connect(&settings).await?;
    match command {
        ProjectionsCommand::Status => {
            for (version, state) in versions::active_versions(&pool).await? {
                let (done, total) = progress(&pool, &settings.kafka, version).await?;
                println!(
                    "v{version}\t{}\t{done}/{total} records",
                    format!("{state:?}").to_lowercase()
                );
            }
            Ok(())
        }
        ProjectionsCommand::Rebuild {
            no_wait,
            timeout_secs,
        } => {
            rebuild(
                &pool,
                &settings.kafka,
                no_wait,
                Duration::from_secs(timeout_secs),
            )
            .await
        }
    }
}

async fn rebuild(
    pool: &PgPool,
    kafka: &KafkaSettings,
    no_wait: bool,
    timeout: Duration,
) -> anyhow::Result<()> {
    let old = versions::active_versions(pool)
        .await?
        .into_iter()
        .find(|(_, state)| *state == VersionState::Live)
        .map(|(version, _)| version);
    let version = versions::request_rebuild(pool, "fmctl").await?;
    println!("rebuilding the read models as version {version} (live: {old:?})");
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
        let state = state_of(pool, version).await?;
        let (done, total) = progress(pool, kafka, version).await?;
        bar.set_length(total);
        bar.set_position(done);
        if done != last {
            last = done;
            idle_since = tokio::time::Instant::now();
        } else if idle_since.elapsed() > Duration::from_secs(10) && done < total {
            bar.set_message("(no progress for 10 s: is the projection-service running?)");
        }
        match state.as_deref() {
            Some("live") => break,
            Some("building") => {}
            other => bail!("version {version} is {other:?}, not building: someone else moved it"),
        }
        if tokio::time::Instant::now() > deadline {
            bail!(
                "gave up waiting after {timeout:?}; the rebuild goes on (`fmctl projections status`)"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bar.finish_with_message("caught up; switched live");
    let Some(old) = old else {
        return Ok(());
    };
    let spinner = ProgressBar::new_spinner();
    spinner.set_message(format!("dropping version {old}"));
    loop {
        spinner.tick();
        if state_of(pool, old).await?.as_deref() == Some("dropped") {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            bail!("version {old} is retired but not dropped yet; the projection-service drops it");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    spinner.finish_with_message(format!("version {old} dropped"));
    println!("version {version} is live");
    Ok(())
}
