//! `fm-bench`: the benchmark suite that `compose/bench` runs. Every figure is measured beside a
//! raw baseline in the same run (raw Kafka produce and consume, raw PostgreSQL `INSERT` and
//! `COPY`, a bare axum + sqlx server), repeated, and written to `docs/benchmarks.md` as the
//! median and range of each figure and of its ratio to the baseline.
//!
//! - [`config`] — where the broker, PostgreSQL and binaries are; the sizes of `--quick` and full.
//! - [`procs`], [`stack`] — the services as processes from their release binaries; their memory.
//! - [`load`], [`stats`] — closed-loop HTTP clients; percentiles, medians and ranges.
//! - [`kafka`], [`pg`], [`bare`] — the raw baselines.
//! - [`seed`] — a large valid history written straight to the topics.
//! - [`sections`] — one module per measurement: write, settings, latency, replay, query, memory,
//!   scale (one and two command-service replicas and saga runners).
//! - [`report`] — the results as Markdown (keeping the page's hand-written tail, the profiles);
//!   [`machine`] — what they were measured on.
//!
//! `fm-bench seed` and `fm-bench consume` write a large history and read it back with chosen
//! consumer settings: the probe to reach for when a broker's read path is in question.

mod bare;
mod config;
mod cpu;
mod kafka;
mod load;
mod machine;
mod pg;
mod procs;
mod report;
mod sections;
mod seed;
mod stack;
mod stats;

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use event_log::{KafkaSettings, consumer};
use futures::StreamExt;
use rdkafka::{ClientConfig, consumer::StreamConsumer};

use crate::{
    config::{Bench, Ports, Sizes},
    machine::{Machine, load_average},
    report::Results,
};

#[derive(Debug, Parser)]
#[command(about = "The benchmark suite behind compose/bench (docs/benchmarks.md)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Section {
    Write,
    Settings,
    Latency,
    Replay,
    Query,
    Memory,
    Scale,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the benchmarks against the broker and PostgreSQL that compose/bench started.
    Run {
        /// Small sizes and two repetitions: a smoke run of every measurement.
        #[arg(long)]
        quick: bool,
        /// Only these sections (the query section needs the replay's read models, so it runs
        /// the replay too).
        #[arg(long, value_delimiter = ',')]
        only: Vec<Section>,
        /// Where the Markdown report goes when every section succeeded.
        #[arg(long, default_value = "docs/benchmarks.md")]
        report: PathBuf,
        /// Where the raw results (JSON) and, after a failure, the report go.
        #[arg(long, env = "FM_BENCH_RUN_DIR", default_value = "target/bench")]
        run_dir: PathBuf,
        #[arg(long, env = "FM_BENCH_KAFKA")]
        brokers: String,
        /// A PostgreSQL URL whose role may create databases.
        #[arg(long, env = "FM_BENCH_DATABASE_URL")]
        database_url: String,
        /// The directory of the services' release binaries.
        #[arg(long, env = "FM_BENCH_BIN_DIR")]
        bin_dir: PathBuf,
        #[arg(long, env = "FM_BENCH_COMMAND_PORT", default_value_t = 18281)]
        command_port: u16,
        #[arg(long, env = "FM_BENCH_QUERY_PORT", default_value_t = 18282)]
        query_port: u16,
        #[arg(long, env = "FM_BENCH_PROJECTION_PORT", default_value_t = 18283)]
        projection_port: u16,
        #[arg(long, env = "FM_BENCH_BARE_PORT", default_value_t = 18284)]
        bare_port: u16,
    },
    /// Render the report again from a run's results.json.
    Report {
        #[arg(long)]
        results: PathBuf,
        #[arg(long, default_value = "docs/benchmarks.md")]
        report: PathBuf,
    },
    /// The bare axum + sqlx baseline server (started by `run`), on `FM_HTTP__PORT` against
    /// `FM_DATABASE__URL`.
    BareServer,
    /// Write at least `--events` events of valid booking stories to the topics of `--prefix`.
    Seed {
        #[arg(long, env = "FM_BENCH_KAFKA")]
        brokers: String,
        #[arg(long)]
        prefix: String,
        #[arg(long)]
        events: u64,
    },
    /// Read every event topic of `--prefix` from offset 0 with the services' consumer settings
    /// plus any `--set key=value`, and print the rate (or where it stalled).
    Consume {
        #[arg(long, env = "FM_BENCH_KAFKA")]
        brokers: String,
        #[arg(long)]
        prefix: String,
        #[arg(long = "set", value_parser = parse_pair)]
        set: Vec<(String, String)>,
        #[arg(long, default_value_t = 60)]
        stall_seconds: u64,
    },
}

fn parse_pair(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected key=value, got {s}"))
}

fn now() -> String {
    chrono::Utc::now().format("%Y-%m-%d %H:%M").to_string()
}

fn write_file(path: &Path, contents: &str) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, contents).with_context(|| format!("Failed to write {}", path.display()))
}

/// Writes the page to `path`, keeping what the page there had written by hand
/// (`report::KEPT`).
fn write_page(path: &Path, page: String) -> anyhow::Result<()> {
    let previous = std::fs::read_to_string(path).ok();
    write_file(
        path,
        &report::keeping_hand_written(page, previous.as_deref()),
    )
}

fn save(results: &Results, path: &Path) -> anyhow::Result<()> {
    write_file(path, &serde_json::to_string_pretty(results)?)
}

/// Runs `section`, recording its failure instead of stopping the run.
async fn attempt<T>(
    results: &mut Results,
    name: &str,
    section: impl std::future::Future<Output = anyhow::Result<T>>,
) -> Option<T> {
    let started = Instant::now();
    eprintln!("==> {name} (load average {})", load_average());
    match section.await {
        Ok(value) => {
            eprintln!("<== {name}: {:.0?}", started.elapsed());
            Some(value)
        }
        Err(error) => {
            eprintln!(
                "<== {name} FAILED after {:.0?}: {error:#}",
                started.elapsed()
            );
            results
                .failures
                .push((name.to_owned(), format!("{error:#}")));
            None
        }
    }
}

#[allow(clippy::too_many_arguments, clippy::too_many_lines)] // One block per section, in order.
async fn run(
    quick: bool,
    only: &[Section],
    report: &Path,
    run_dir: &Path,
    brokers: String,
    database_url: String,
    bin_dir: PathBuf,
    ports: Ports,
) -> anyhow::Result<bool> {
    let wanted = |section| only.is_empty() || only.contains(&section);
    let sizes = if quick { Sizes::quick() } else { Sizes::full() };
    let bench = Bench {
        brokers,
        admin_url: database_url,
        bin_dir,
        log_dir: run_dir.join("logs"),
        ports,
        sizes: sizes.clone(),
    };
    let postgres = pg::server_version(&bench.admin_url)
        .await
        .context("Failed to reach the benchmark's PostgreSQL")?;
    let mut results = Results {
        machine: Machine::read(postgres),
        sizes,
        started_at: now(),
        finished_at: String::new(),
        load_average_start: load_average(),
        load_average_end: String::new(),
        write: None,
        settings: None,
        latency: None,
        replay: None,
        query: None,
        memory: None,
        scale: None,
        failures: Vec::new(),
    };
    let results_path = run_dir.join("results.json");

    let warm_up = if quick {
        Duration::from_secs(3)
    } else {
        Duration::from_secs(45)
    };
    eprintln!("==> warming the broker up for {warm_up:?} (not measured)");
    kafka::warm_up_broker(&bench, warm_up)
        .await
        .context("Failed to warm the broker up")?;

    if wanted(Section::Write) {
        results.write = attempt(
            &mut results,
            "booking commands",
            sections::write::run(&bench),
        )
        .await;
        save(&results, &results_path)?;
    }
    if wanted(Section::Settings) {
        results.settings = attempt(
            &mut results,
            "client settings",
            sections::settings::run(&bench),
        )
        .await;
        save(&results, &results_path)?;
    }
    if wanted(Section::Latency) {
        results.latency = attempt(
            &mut results,
            "command-to-query latency",
            sections::latency::run(&bench),
        )
        .await;
        save(&results, &results_path)?;
    }
    if (wanted(Section::Replay) || wanted(Section::Query))
        && let Some((replay, replayed)) =
            attempt(&mut results, "replay", sections::replay::run(&bench)).await
    {
        {
            results.replay = Some(replay);
            save(&results, &results_path)?;
            if wanted(Section::Query) {
                results.query = attempt(
                    &mut results,
                    "queries",
                    sections::query::run(&bench, &replayed),
                )
                .await;
                save(&results, &results_path)?;
            }
        }
    }
    if wanted(Section::Scale) {
        results.scale = attempt(&mut results, "scale-out", sections::scale::run(&bench)).await;
        save(&results, &results_path)?;
    }
    if wanted(Section::Memory) {
        results.memory = attempt(&mut results, "memory", sections::memory::run(&bench)).await;
    }
    results.finished_at = now();
    results.load_average_end = load_average();
    save(&results, &results_path)?;
    let page = report::render(&results);
    let complete = results.failures.is_empty() && only.is_empty();
    let target = if complete {
        report.to_path_buf()
    } else {
        run_dir.join("benchmarks.md")
    };
    write_page(&target, page)?;
    println!("results: {}", results_path.display());
    println!("report:  {}", target.display());
    if !complete {
        println!(
            "(not written to {}: {})",
            report.display(),
            if results.failures.is_empty() {
                "only some sections ran"
            } else {
                "a section failed"
            }
        );
    }
    Ok(results.failures.is_empty())
}

async fn consume_probe(
    brokers: String,
    prefix: String,
    set: &[(String, String)],
    stall: Duration,
) -> anyhow::Result<()> {
    let kafka = KafkaSettings {
        brokers,
        topic_prefix: prefix,
        ..KafkaSettings::default()
    };
    let ends = kafka::end_offsets(&kafka).await?;
    let total: i64 = ends.values().sum();
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &kafka.brokers)
        .set("group.id", "bench-consume-probe")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set(
            "fetch.wait.max.ms",
            kafka.fetch_wait.as_millis().to_string(),
        );
    for (key, value) in set {
        config.set(key, value);
    }
    let reader: StreamConsumer = config.create()?;
    consumer::assign(&reader, &ends.keys().map(|tp| (tp.clone(), 0)).collect())?;
    let started = Instant::now();
    let mut stream = reader.stream();
    let mut seen = 0_i64;
    let mut last = Instant::now();
    while seen < total {
        tokio::time::timeout(stall, stream.next())
            .await
            .with_context(|| {
                format!(
                    "stalled: nothing for {stall:?} after {seen} of {total} records, {:.1?} in",
                    started.elapsed()
                )
            })?
            .context("the stream ended")??;
        seen += 1;
        if last.elapsed() > Duration::from_secs(5) {
            last = Instant::now();
            eprintln!("  {seen} of {total} after {:.1?}", started.elapsed());
        }
    }
    println!(
        "read {seen} records in {:.2?}: {} records/s",
        started.elapsed(),
        sections::replay::rate(u64::try_from(seen)?, started.elapsed().as_secs_f64()).round()
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Run {
            quick,
            only,
            report,
            run_dir,
            brokers,
            database_url,
            bin_dir,
            command_port,
            query_port,
            projection_port,
            bare_port,
        } => {
            let ports = Ports {
                command: command_port,
                query: query_port,
                projection: projection_port,
                bare: bare_port,
            };
            let ok = run(
                quick,
                &only,
                &report,
                &run_dir,
                brokers,
                database_url,
                bin_dir,
                ports,
            )
            .await?;
            if !ok {
                std::process::exit(1);
            }
        }
        Command::Report { results, report } => {
            let text = std::fs::read_to_string(&results)
                .with_context(|| format!("Failed to read {}", results.display()))?;
            let results: Results = serde_json::from_str(&text)?;
            write_page(&report, report::render(&results))?;
            println!("report: {}", report.display());
        }
        Command::BareServer => bare::serve().await?,
        Command::Seed {
            brokers,
            prefix,
            events,
        } => {
            let kafka = KafkaSettings {
                brokers,
                topic_prefix: prefix,
                ..KafkaSettings::default()
            };
            event_log::topics::ensure_topics(&kafka, false).await?;
            let seeded = seed::stories(&kafka, events).await?;
            println!(
                "wrote {} events ({} bytes) in {:.1?}",
                seeded.events, seeded.bytes, seeded.elapsed
            );
        }
        Command::Consume {
            brokers,
            prefix,
            set,
            stall_seconds,
        } => consume_probe(brokers, prefix, &set, Duration::from_secs(stall_seconds)).await?,
    }
    Ok(())
}
