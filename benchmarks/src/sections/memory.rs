//! Memory of each service against the size of the log: valid booking stories are written
//! straight to the topics with a bulk producer, then each service starts as a process on them
//! and its resident memory (`VmRSS`, and the peak `VmHWM`, from `/proc/<pid>/status`) is read
//! once it has caught up: the projection-service once every end offset is stored, the
//! command-service once `/ready` (its store has folded the whole log), three times: without a
//! snapshot (the store alone), keeping a snapshot as `compose/up` configures it (it also writes
//! one every 30 s while it reads), and restored from the snapshot that one left; the query-api
//! and the bare baseline server after a few seconds of `GET /bookings/{id}` on those read
//! models. The log grows from one size to the next; every service starts from scratch at each.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use domain::values::BookingId;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use super::query::get_load;
use crate::{
    config::Bench,
    kafka,
    load::client,
    machine::load_average,
    pg,
    procs::{Memory, Process, READY_WITHIN},
    seed, stack,
};

/// Seconds of `GET /bookings/{id}` before the query-api's and the bare server's memory is read.
const QUERY_LOAD: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ServiceMemory {
    pub memory: Memory,
    /// From the process's start until it had caught up (none for the query servers).
    pub catch_up_s: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct MemoryPoint {
    pub events: u64,
    pub bookings: usize,
    /// Bytes of event payloads in the log.
    pub bytes: u64,
    /// How long writing this point's new events took, and how many were new.
    pub seed_s: f64,
    pub seeded: u64,
    pub raw_consume_s: f64,
    pub projection: ServiceMemory,
    pub command_replay: ServiceMemory,
    /// Replaying the whole log while writing a snapshot every 30 s (as `compose/up` runs it).
    pub command_snapshots: ServiceMemory,
    /// Restored from the snapshot the previous one wrote at its shutdown.
    pub command_snapshot: ServiceMemory,
    pub snapshot_bytes: u64,
    pub query_api: ServiceMemory,
    pub bare: ServiceMemory,
    pub load_average: String,
    /// `/health` probed while the restored command-service writes a snapshot of the whole log
    /// (none in results of runs before it was measured).
    #[serde(default)]
    pub snapshot_stall: Option<SnapshotStall>,
}

/// How a command-service answered `/health` while it wrote a snapshot: from the record that
/// sets the snapshot off until the snapshot file is replaced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SnapshotStall {
    pub probes: usize,
    pub longest_ms: f64,
    pub median_ms: f64,
    /// From the record's append until the new snapshot was in place.
    pub written_after_s: f64,
    /// The events of the story appended to set the snapshot off (they stay in the log).
    pub appended_events: u64,
    pub appended_bytes: u64,
}

/// How often the restored command-service of a point looks for new records to snapshot:
/// short, so the stall probe waits little for its snapshot. It writes none while nothing is new,
/// so its memory reading is that of the restore.
const STALL_SNAPSHOT_INTERVAL_MS: &str = "1000";

/// Appends one booking story so that `process` writes a snapshot, and probes its `/health`
/// until the snapshot file at `snapshot` is replaced. The probes are sequential, a few
/// milliseconds apart: the longest answer is the longest a load balancer's health check would
/// have waited.
async fn snapshot_stall(
    http: &reqwest::Client,
    process: &Process,
    kafka: &event_log::KafkaSettings,
    snapshot: &std::path::Path,
) -> anyhow::Result<SnapshotStall> {
    let modified = || std::fs::metadata(snapshot).and_then(|m| m.modified()).ok();
    let before = modified();
    let appended = seed::finished_stories(kafka, 1).await?;
    let since = Instant::now();
    let url = format!("{}/health", process.base());
    let mut latencies = Vec::new();
    let written_after = loop {
        let sent = Instant::now();
        http.get(&url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .context("/health failed while the snapshot was written")?;
        latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
        if modified() != before {
            break since.elapsed();
        }
        if since.elapsed() > Duration::from_mins(5) {
            anyhow::bail!("no snapshot within 5 minutes of a new record");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    latencies.sort_by(f64::total_cmp);
    Ok(SnapshotStall {
        probes: latencies.len(),
        longest_ms: latencies.last().copied().unwrap_or_default(),
        median_ms: latencies[latencies.len() / 2],
        written_after_s: written_after.as_secs_f64(),
        appended_events: appended.events,
        appended_bytes: appended.bytes,
    })
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct MemoryResults {
    pub points: Vec<MemoryPoint>,
    /// Sizes that were asked for but not measured, and why.
    pub not_measured: Vec<(u64, String)>,
}

/// How long one service may take to catch up with the largest log
/// (`FM_BENCH_CATCH_UP_TIMEOUT`, seconds; 2 hours by default).
fn catch_up_timeout() -> Duration {
    Duration::from_secs(
        std::env::var("FM_BENCH_CATCH_UP_TIMEOUT")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(7200),
    )
}

async fn after_load(
    http: &reqwest::Client,
    mut process: Process,
    token: Option<&str>,
    ids: &Arc<Vec<BookingId>>,
    clients: usize,
) -> anyhow::Result<ServiceMemory> {
    process.wait_ready(http, READY_WITHIN).await?;
    if !ids.is_empty() {
        let load = get_load(
            http,
            &process.base(),
            token,
            ids,
            false,
            clients,
            QUERY_LOAD,
        )
        .await?;
        if load.failed() > 0 {
            anyhow::bail!(
                "{} failed {} requests: {:?}",
                process.name,
                load.failed(),
                load.first_failure
            );
        }
    }
    let memory = process.memory()?;
    process.stop().await?;
    Ok(ServiceMemory {
        memory,
        catch_up_s: None,
    })
}

#[allow(clippy::too_many_lines)] // One point, step by step, as the module's header lists.
async fn one_point(
    bench: &Bench,
    kafka: &event_log::KafkaSettings,
    events: u64,
    seeded: (u64, f64),
    bookings: &Arc<Vec<BookingId>>,
    bytes: u64,
) -> anyhow::Result<MemoryPoint> {
    let load_before = load_average();
    let http = &client()?;
    let tag = format!("memory-{events}");
    let ends = kafka::end_offsets(kafka).await?;
    let total: i64 = ends.values().sum();
    let raw_consume = kafka::consume_all(kafka, total).await?;
    eprintln!("    raw consume of {total} records: {raw_consume:.1?}");

    let database_url = pg::fresh_database(&bench.admin_url, "memory").await?;
    let pool = PgPool::connect(&database_url).await?;
    let mut projector = stack::projection_service(bench, kafka, &database_url, &tag)?;
    let started = projector.started;
    // Ready first: with an empty log "caught up" would otherwise hold before it even started.
    projector.wait_ready(http, READY_WITHIN).await?;
    let projected = pg::wait_caught_up(&pool, &ends, started, catch_up_timeout(), || {
        projector.check_alive()
    })
    .await?;
    let projection = ServiceMemory {
        memory: projector.memory()?,
        catch_up_s: Some(projected.as_secs_f64()),
    };
    projector.stop().await?;
    eprintln!(
        "    projection-service: caught up in {projected:.1?}, RSS {} MiB",
        projection.memory.rss_kib / 1024
    );

    // The store alone: no snapshot writer allocating beside it.
    let mut command = stack::command_service(bench, kafka, &format!("{tag}-replay"), None)?;
    let ready = command.wait_ready(http, catch_up_timeout()).await?;
    let command_replay = ServiceMemory {
        memory: command.memory()?,
        catch_up_s: Some(ready.as_secs_f64()),
    };
    command.stop().await?;
    eprintln!(
        "    command-service: caught up in {ready:.1?}, RSS {} MiB",
        command_replay.memory.rss_kib / 1024
    );
    // As compose/up runs it: a snapshot every 30 s while the log moves, and one at shutdown.
    let snapshot = bench.log_dir.join(format!("snapshot-{events}.json"));
    let _ = std::fs::remove_file(&snapshot);
    let mut command =
        stack::command_service(bench, kafka, &format!("{tag}-snapshots"), Some(&snapshot))?;
    let ready = command.wait_ready(http, catch_up_timeout()).await?;
    let command_snapshots = ServiceMemory {
        memory: command.memory()?,
        catch_up_s: Some(ready.as_secs_f64()),
    };
    // It writes its snapshot (at the end of the log) as it stops.
    command.stop().await?;
    eprintln!(
        "    command-service keeping snapshots: caught up in {ready:.1?}, RSS {} MiB",
        command_snapshots.memory.rss_kib / 1024
    );
    let snapshot_bytes = if events == 0 {
        0
    } else {
        std::fs::metadata(&snapshot)
            .with_context(|| format!("no snapshot at {}", snapshot.display()))?
            .len()
    };
    let mut restored = stack::command_service_with(
        bench,
        kafka,
        &format!("{tag}-snapshot"),
        Some(&snapshot),
        &[("FM_COMMANDS__SNAPSHOT_INTERVAL", STALL_SNAPSHOT_INTERVAL_MS)],
    )?;
    let ready = restored.wait_ready(http, catch_up_timeout()).await?;
    let command_snapshot = ServiceMemory {
        memory: restored.memory()?,
        catch_up_s: Some(ready.as_secs_f64()),
    };
    let snapshot_stall = if events == 0 {
        None
    } else {
        let stall = snapshot_stall(http, &restored, kafka, &snapshot).await?;
        eprintln!(
            "    /health while a snapshot was written: longest {:.1} ms, median {:.1} ms ({} probes)",
            stall.longest_ms, stall.median_ms, stall.probes
        );
        Some(stall)
    };
    restored.stop().await?;
    let _ = std::fs::remove_file(&snapshot);

    let token = stack::director_token()?;
    let clients = bench.sizes.clients;
    let query_api = after_load(
        http,
        stack::query_api(bench, &database_url, &tag)?,
        Some(&token),
        bookings,
        clients,
    )
    .await?;
    let bare = after_load(
        http,
        stack::bare_server(bench, &database_url, &tag)?,
        None,
        bookings,
        clients,
    )
    .await?;
    pool.close().await;
    Ok(MemoryPoint {
        events: u64::try_from(total)?,
        bookings: bookings.len(),
        bytes,
        seed_s: seeded.1,
        seeded: seeded.0,
        raw_consume_s: raw_consume.as_secs_f64(),
        projection,
        command_replay,
        command_snapshots,
        command_snapshot,
        snapshot_bytes,
        query_api,
        bare,
        load_average: format!("{load_before} → {}", load_average()),
        snapshot_stall,
    })
}

pub(crate) async fn run(bench: &Bench) -> anyhow::Result<MemoryResults> {
    let kafka = bench.kafka("memory");
    bench.topics(&kafka).await?;
    let mut results = MemoryResults::default();
    let mut bookings = Vec::new();
    let (mut written, mut bytes) = (0_u64, 0_u64);
    let mut sizes = vec![0];
    sizes.extend(bench.sizes.memory_events.iter().copied());
    for (i, &target) in sizes.iter().enumerate() {
        eprintln!("  memory at {target} events");
        let seeding = Instant::now();
        let mut new = 0;
        if target > written {
            let seeded = seed::finished_stories(&kafka, target - written).await?;
            new = seeded.events;
            written += seeded.events;
            bytes += seeded.bytes;
            bookings.extend(seeded.bookings);
            eprintln!("    seeded {new} events in {:.1?}", seeded.elapsed);
        }
        let ids = Arc::new(bookings.clone());
        match one_point(
            bench,
            &kafka,
            target,
            (new, seeding.elapsed().as_secs_f64()),
            &ids,
            bytes,
        )
        .await
        {
            Ok(point) => {
                // The stall probe's story stays in the log: the next size counts it.
                if let Some(stall) = &point.snapshot_stall {
                    written += stall.appended_events;
                    bytes += stall.appended_bytes;
                }
                results.points.push(point);
            }
            Err(error) => {
                // A larger log would only take longer: say what was not measured, and why.
                eprintln!("    not measured at {target} events: {error:#}");
                for &size in &sizes[i..] {
                    results.not_measured.push((size, format!("{error:#}")));
                }
                break;
            }
        }
    }
    Ok(results)
}
