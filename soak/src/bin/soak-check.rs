//! `soak-check`: waits (bounded) for the stack to go quiet, then reads the log, the read
//! models, the saga rows, the gateway's ledger and the mailbox, checks every invariant against
//! them and the load's journal, prints the summary and exits 1 on any violation.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use soak::{
    check::{self, FaultWindow, Inputs, MailKinds},
    gather::{self, Stack},
    history::{History, RawRecord},
    journal,
};

/// Check the soak's invariants against a quiet stack.
#[derive(Debug, Parser)]
#[command(name = "soak-check")]
struct Args {
    #[arg(long)]
    brokers: String,
    #[arg(long, default_value = "fm")]
    topic_prefix: String,
    #[arg(long)]
    database_url: String,
    #[arg(long)]
    gateway_url: String,
    /// The SMTP sink's Maildir.
    #[arg(long)]
    maildir: PathBuf,
    /// The load's journal.
    #[arg(long)]
    journal: PathBuf,
    /// Whether the saga's invariants apply: `auto` (when the schema `saga` exists), `on`, `off`.
    #[arg(long, default_value = "auto")]
    saga: String,
    /// How long to wait for the stack to go quiet before checking.
    #[arg(long, default_value = "120s", value_parser = soak::parse_duration)]
    wait: Duration,
    /// The fault injector's log (`<epoch> <kind> <detail>` per line), for the summary.
    #[arg(long)]
    faults: Option<PathBuf>,
    /// The supervisor's log (`<epoch> <why> <what>` per line): processes it had to start again.
    #[arg(long)]
    restarts: Option<PathBuf>,
    /// The faults that lasted a while (`<begin_ms> <end_ms> <kind> <detail>` per line): the
    /// outage figures, and the `quorum-loss` checks for windows of that kind.
    #[arg(long)]
    windows: Option<PathBuf>,
    /// Give up reading the log when nothing arrives for this long.
    #[arg(long, default_value = "120s", value_parser = soak::parse_duration)]
    stall: Duration,
    /// `max.partition.fetch.bytes` of the log reader.
    #[arg(long, default_value_t = 256 * 1024)]
    fetch_bytes: usize,
    /// Where to write the report as JSON.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Violations printed per invariant.
    #[arg(long, default_value_t = 25)]
    limit: usize,
}

/// The log's end offsets and the number of mails, as last seen.
type Motion = (BTreeMap<(String, i32), i64>, usize);

/// What still moves, or `None` when the stack is quiet.
async fn unsettled(
    stack: &Stack,
    pool: &sqlx::PgPool,
    saga: bool,
    previous: &mut Option<Motion>,
) -> anyhow::Result<Option<String>> {
    let ends = gather::end_offsets(
        &stack.brokers,
        &stack.event_topics(),
        Duration::from_secs(10),
    )?;
    let offsets = gather::projection_offsets(pool).await?;
    let behind: i64 = ends
        .iter()
        .map(|(key, end)| (end - offsets.get(key).copied().unwrap_or_default()).max(0))
        .sum();
    let mails = gather::mails(&stack.maildir)?.len();
    let mut pending = Vec::new();
    if behind > 0 {
        pending.push(format!("read models {behind} records behind"));
    }
    if saga {
        let open = gather::open_bookings(pool).await?;
        if open > 0 {
            pending.push(format!("{open} bookings not final"));
        }
        if gather::saga_schema_exists(pool).await? {
            let sagas = gather::open_sagas(pool).await?.len();
            if sagas > 0 {
                pending.push(format!("{sagas} sagas not done"));
            }
        }
    }
    let now = (ends, mails);
    if previous.as_ref() != Some(&now) {
        pending.push("the log or the mailbox still moves".to_owned());
    }
    *previous = Some(now);
    Ok((!pending.is_empty()).then(|| pending.join(", ")))
}

/// Lines of a `<epoch> <kind> <detail>` log, counted by kind (and by detail when
/// `with_detail`: the supervisor's `exited <service>`).
fn counts(path: &PathBuf, with_detail: bool) -> anyhow::Result<BTreeMap<String, u64>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("Failed to read {}", path.display()))?;
    let mut counts = BTreeMap::new();
    for line in text.lines() {
        let mut words = line.split_whitespace().skip(1);
        let Some(kind) = words.next() else { continue };
        let key = match words.next() {
            Some(detail) if with_detail && kind != "broker-panicked" => format!("{kind} {detail}"),
            _ => kind.to_owned(),
        };
        *counts.entry(key).or_default() += 1;
    }
    Ok(counts)
}

/// Reads `windows.log`; a line that does not parse is an error (the injector wrote it).
fn windows(path: &PathBuf) -> anyhow::Result<Vec<FaultWindow>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("Failed to read {}", path.display()))?;
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            FaultWindow::parse(line).with_context(|| {
                format!(
                    "{}: not `<begin_ms> <end_ms> <kind> <detail>`: {line:?}",
                    path.display()
                )
            })
        })
        .collect()
}

/// Waits until nothing moves any more, at most `wait`; then the check runs either way.
async fn wait_until_quiet(
    stack: &Stack,
    pool: &sqlx::PgPool,
    saga: bool,
    wait: Duration,
) -> anyhow::Result<()> {
    let waited = Instant::now();
    let mut previous = None;
    let mut last_said = Instant::now();
    loop {
        match unsettled(stack, pool, saga, &mut previous).await {
            Ok(None) => {
                println!(
                    "soak-check: quiet after {:.0}s",
                    waited.elapsed().as_secs_f64()
                );
                break;
            }
            Ok(Some(what)) if waited.elapsed() >= wait => {
                println!(
                    "soak-check: still not quiet after {:.0}s ({what}); checking anyway",
                    waited.elapsed().as_secs_f64()
                );
                break;
            }
            Ok(Some(what)) => {
                if last_said.elapsed() >= Duration::from_secs(10) {
                    println!("soak-check: waiting: {what}");
                    last_said = Instant::now();
                }
            }
            Err(error) if waited.elapsed() >= wait => return Err(error),
            Err(error) => println!("soak-check: waiting: {error:#}"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    Ok(())
}

/// The event topics (and their end offsets) and the dead letters.
async fn read_log(
    stack: &Stack,
    stall: Duration,
    fetch_bytes: usize,
) -> anyhow::Result<(Vec<RawRecord>, BTreeMap<(String, i32), i64>, Vec<RawRecord>)> {
    let read_started = Instant::now();
    let (brokers, topics) = (stack.brokers.clone(), stack.event_topics());
    let (records, log_ends) = tokio::task::spawn_blocking(move || {
        gather::read_topics(&brokers, &topics, stall, fetch_bytes)
    })
    .await
    .context("The log reader panicked")??;
    let (brokers, topics) = (stack.brokers.clone(), vec![stack.dead_letter_topic()]);
    let (letters, _) = tokio::task::spawn_blocking(move || {
        gather::read_topics(&brokers, &topics, stall, fetch_bytes)
    })
    .await
    .context("The dead-letter reader panicked")??;
    println!(
        "soak-check: read {} log records and {} dead letters in {:.1}s",
        records.len(),
        letters.len(),
        read_started.elapsed().as_secs_f64()
    );
    Ok((records, log_ends, letters))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let stack = Stack {
        brokers: args.brokers.clone(),
        topic_prefix: args.topic_prefix.clone(),
        database_url: args.database_url.clone(),
        gateway_url: args.gateway_url.clone(),
        maildir: args.maildir.clone(),
    };
    let pool = gather::connect(&stack.database_url).await?;
    let saga = match args.saga.as_str() {
        "on" => true,
        "off" => false,
        _ => gather::saga_schema_exists(&pool).await?,
    };

    wait_until_quiet(&stack, &pool, saga, args.wait).await?;

    // Once the stack is quiet the saga's schema is there or not for good: ask once.
    let saga_rows = saga && gather::saga_schema_exists(&pool).await?;
    let (records, log_ends, letters) = read_log(&stack, args.stall, args.fetch_bytes).await?;
    let history = History::build(&records, &stack.topic_prefix);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .context("Failed to build the HTTP client")?;
    let inputs = Inputs {
        history,
        log_ends,
        journal: journal::read(&args.journal)?,
        read_models: match gather::read_models(&pool).await {
            Ok(models) => Some(models),
            Err(error) => {
                println!("soak-check: {error:#}");
                None
            }
        },
        saga,
        open_sagas: if saga_rows {
            gather::open_sagas(&pool).await?
        } else {
            Vec::new()
        },
        ledger: gather::ledger(&http, &stack.gateway_url).await?,
        mails: gather::mails(&stack.maildir)?,
        mail_kinds: MailKinds::default(),
        dead_letters: gather::dead_letters(&letters),
        windows: match &args.windows {
            Some(path) => windows(path)?,
            None => Vec::new(),
        },
    };
    let mut report = check::check(&inputs);
    report.figures.insert(
        "saga invariants".to_owned(),
        if saga { "on" } else { "off (no saga runner)" }.to_owned(),
    );
    if saga_rows && let Some(pace) = gather::saga_pace(&pool).await? {
        report.figures.insert(
            "saga step waits".to_owned(),
            format!(
                "p50 {:.2} s, p90 {:.2} s, max {:.1} s over {} steps",
                pace.p50, pace.p90, pace.max, pace.steps
            ),
        );
    }
    for (path, title, item, with_detail) in [
        (&args.faults, "faults injected", "fault", false),
        (&args.restarts, "supervisor restarts", "restart", true),
    ] {
        if let Some(path) = path {
            let counts = counts(path, with_detail)?;
            let total: u64 = counts.values().sum();
            report.figures.insert(title.to_owned(), total.to_string());
            for (kind, count) in counts {
                report
                    .figures
                    .insert(format!("  {item} {kind}"), count.to_string());
            }
        }
    }
    println!("\n{}", report.render(args.limit));
    if let Some(path) = &args.report {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("Failed to write {}", path.display()))?;
    }
    if report.passed() {
        println!("soak-check: every invariant held");
        Ok(())
    } else {
        println!(
            "soak-check: {} violations of {}",
            report.violations.len(),
            check::Invariant::ALL
                .iter()
                .filter(|invariant| report.count(**invariant) > 0)
                .map(|invariant| invariant.name())
                .collect::<Vec<_>>()
                .join(", ")
        );
        std::process::exit(1);
    }
}
