//! `docs/benchmarks.md`, written from a run's results: every figure beside its baseline from
//! the same run, as a ratio, with the machine, the method and how to reproduce it.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::{
    config::Sizes,
    machine::Machine,
    sections::{
        latency::LatencyResults,
        memory::{MemoryPoint, MemoryResults, ServiceMemory},
        query::QueryResults,
        replay::{ReplayResults, rate},
        scale::{SagaLoad, ScaleResults},
        settings::{SettingsResults, Variant},
        write::WriteResults,
    },
    stats::{Load, Spread},
};

/// Everything one run measured, as `results.json` holds it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Results {
    pub machine: Machine,
    pub sizes: Sizes,
    /// UTC, RFC 3339.
    pub started_at: String,
    pub finished_at: String,
    pub load_average_start: String,
    pub load_average_end: String,
    pub write: Option<WriteResults>,
    /// Absent in results of runs before the section existed.
    #[serde(default)]
    pub settings: Option<SettingsResults>,
    pub latency: Option<LatencyResults>,
    pub replay: Option<ReplayResults>,
    pub query: Option<QueryResults>,
    pub memory: Option<MemoryResults>,
    /// Absent in results of runs before the section existed.
    #[serde(default)]
    pub scale: Option<ScaleResults>,
    /// Sections that failed, and why.
    pub failures: Vec<(String, String)>,
}

/// `12 345` (a space between thousands, as the rest of the docs write them).
fn int(value: f64) -> String {
    #[allow(clippy::cast_possible_truncation)] // Rounded figures for people to read.
    let rounded = value.round() as i64;
    let digits = rounded.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(' ');
        }
        out.push(c);
    }
    if rounded < 0 { format!("-{out}") } else { out }
}

/// Two decimals for small figures, whole numbers for large ones, and two significant digits
/// below 0.1 (a replay at 0.004 × a raw consume of 300 000 events/s must not read as 0.00 ×).
fn num(value: f64) -> String {
    let magnitude = value.abs();
    if magnitude >= 100.0 {
        int(value)
    } else if magnitude >= 10.0 {
        format!("{value:.1}")
    } else if magnitude >= 0.1 || magnitude == 0.0 {
        format!("{value:.2}")
    } else {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        // log10 of a figure in (0, 0.1) is negative and small: -1 - floor(log10) is 1..=324.
        let decimals = (1.0 - magnitude.log10().floor()) as usize;
        format!("{value:.decimals$}")
    }
}

/// `median (min–max)` with `unit`; just the median when there is one repetition.
fn spread(values: impl IntoIterator<Item = f64>, unit: &str) -> String {
    match Spread::of(values) {
        None => "–".to_owned(),
        Some(s) if s.count == 1 || (s.max - s.min).abs() < f64::EPSILON => {
            format!("{}{unit}", num(s.median))
        }
        Some(s) => format!("{}{unit} ({}–{})", num(s.median), num(s.min), num(s.max)),
    }
}

fn ratio(values: impl IntoIterator<Item = f64>) -> String {
    spread(values, " ×")
}

/// `p50 / p99` of a series of loads.
fn p50_p99(loads: &[&Load]) -> String {
    format!(
        "p50 {}, p99 {}",
        spread(loads.iter().map(|l| l.p50_ms), " ms"),
        spread(loads.iter().map(|l| l.p99_ms), " ms")
    )
}

fn mib(kib: u64) -> f64 {
    #[allow(clippy::cast_precision_loss)] // KiB of memory, far below 2^52.
    let kib = kib as f64;
    kib / 1024.0
}

#[allow(clippy::cast_precision_loss)] // Byte counts, far below 2^52.
fn mib_bytes(bytes: u64) -> f64 {
    bytes as f64 / 1024.0 / 1024.0
}

fn failures_of(loads: &[&Load]) -> String {
    let failed: usize = loads.iter().map(|l| l.failed()).sum();
    if failed == 0 {
        "none".to_owned()
    } else {
        let first = loads
            .iter()
            .find_map(|l| l.first_failure.clone())
            .unwrap_or_default();
        format!("{failed} (first: {first})")
    }
}

/// The line after which the page is written by hand (the profiles, what bounds each figure):
/// a new run keeps what follows it in the page it replaces.
pub(crate) const KEPT: &str =
    "<!-- Written by hand from here on: compose/bench keeps it when it rewrites the page. -->";

/// `page`, followed by what `previous` (the page it replaces, if any) holds from [`KEPT`] on.
pub(crate) fn keeping_hand_written(mut page: String, previous: Option<&str>) -> String {
    if let Some(kept) = previous.and_then(|previous| previous.find(KEPT).map(|at| &previous[at..]))
    {
        page.push('\n');
        page.push_str(kept);
    }
    page
}

/// Renders the whole page.
pub(crate) fn render(results: &Results) -> String {
    let mut out = String::new();
    header(&mut out, results);
    summary(&mut out, results);
    reading(&mut out, results);
    machine(&mut out, results);
    reproduce(&mut out, results);
    if let Some(write) = &results.write {
        write_section(&mut out, write, &results.sizes);
    }
    if let Some(settings) = &results.settings {
        settings_section(&mut out, settings, &results.sizes);
    }
    if let Some(latency) = &results.latency {
        latency_section(&mut out, latency, &results.sizes);
    }
    if let Some(replay) = &results.replay {
        replay_section(&mut out, replay);
    }
    if let Some(query) = &results.query {
        query_section(&mut out, query, &results.sizes);
    }
    if let Some(memory) = &results.memory {
        memory_section(&mut out, memory);
    }
    if let Some(scale) = &results.scale {
        scale_section(&mut out, scale, &results.sizes);
    }
    if !results.failures.is_empty() {
        out.push_str("\n## Sections that failed in this run\n\n");
        for (section, error) in &results.failures {
            let _ = writeln!(out, "- **{section}**: {error}");
        }
    }
    out
}

fn header(out: &mut String, r: &Results) {
    let _ = write!(
        out,
        "# Benchmarks\n\n\
         Written by `compose/bench` ({} run) from {} to {} (UTC); do not edit by hand, run it \
         again. Every figure sits beside a raw baseline measured **in the same run, on the same \
         machine**, and the ratio between them is the figure to read: the machine is shared with \
         other engineers' builds and tests, so absolute numbers move from run to run and ratios \
         much less. Each measurement was repeated {} times, alternating the order of the \
         measured path and its baseline; a figure is the **median, with the range (min–max) in \
         brackets**. Before the first measurement the broker serves produce + read back, \
         unmeasured, while its JVM compiles its hot code (a fresh broker spends as much CPU on \
         that as on requests). Load average (1, 5, 15 min) at the start {}, at the end {}.\n",
        r.sizes.mode,
        r.started_at,
        r.finished_at,
        r.sizes.repetitions,
        r.load_average_start,
        r.load_average_end
    );
}

#[allow(clippy::too_many_lines)] // One row per figure.
fn summary(out: &mut String, r: &Results) {
    out.push_str(
        "\n## Summary\n\n| Figure | Funeral Manager | Baseline, same run | Ratio |\n|---|---|---|---|\n",
    );
    if let Some(w) = &r.write {
        let http: Vec<&Load> = w.reps.iter().map(|x| &x.http).collect();
        let _ = writeln!(
            out,
            "| Booking commands (`POST /bookings` on the command-service, {} clients) | {} commands/s, {} | raw produce: {} records/s; produce + read back: {} records/s, {} | {} raw produce; {} produce + read back |",
            r.sizes.clients,
            spread(http.iter().map(|l| l.rate()), ""),
            p50_p99(&http),
            spread(w.reps.iter().map(|x| x.raw_produce.rate()), ""),
            spread(w.reps.iter().map(|x| x.produce_read_back.rate()), ""),
            p50_p99(
                &w.reps
                    .iter()
                    .map(|x| &x.produce_read_back)
                    .collect::<Vec<_>>()
            ),
            ratio(w.reps.iter().map(|x| x.http.rate() / x.raw_produce.rate())),
            ratio(
                w.reps
                    .iter()
                    .map(|x| x.http.rate() / x.produce_read_back.rate())
            ),
        );
    }
    if let Some(l) = &r.latency {
        let pipeline: Vec<&Load> = l.reps.iter().map(|x| &x.pipeline).collect();
        for (name, loads, p50, p99) in [
            (
                "polling `GET /bookings/{id}`",
                l.reps.iter().map(|x| &x.poll).collect::<Vec<_>>(),
                l.reps
                    .iter()
                    .map(|x| x.poll.p50_ms / x.pipeline.p50_ms)
                    .collect::<Vec<_>>(),
                l.reps
                    .iter()
                    .map(|x| x.poll.p99_ms / x.pipeline.p99_ms)
                    .collect::<Vec<_>>(),
            ),
            (
                "one `GET` with the consistency token",
                l.reps.iter().map(|x| &x.token).collect(),
                l.reps
                    .iter()
                    .map(|x| x.token.p50_ms / x.pipeline.p50_ms)
                    .collect(),
                l.reps
                    .iter()
                    .map(|x| x.token.p99_ms / x.pipeline.p99_ms)
                    .collect(),
            ),
        ] {
            let _ = writeln!(
                out,
                "| Command-to-query latency, 202 → visible in the query-api, {name} | {} | raw produce → consumer `INSERT` → bare axum, polled: {} | p50 {}, p99 {} |",
                p50_p99(&loads),
                p50_p99(&pipeline),
                ratio(p50),
                ratio(p99),
            );
        }
    }
    if let Some(p) = &r.replay {
        let _ = writeln!(
            out,
            "| Replay (projection rebuild of {} events into a fresh database) | {} events/s | raw consume: {} events/s; `INSERT`: {} rows/s; `COPY`: {} rows/s | {} raw consume; {} `INSERT`; {} `COPY` |",
            int(u64_f(p.events)),
            spread(p.reps.iter().map(|x| rate(p.events, x.replay_s)), ""),
            spread(p.reps.iter().map(|x| rate(p.events, x.raw_consume_s)), ""),
            spread(p.reps.iter().map(|x| rate(p.events, x.insert_s)), ""),
            spread(p.reps.iter().map(|x| rate(p.events, x.copy_s)), ""),
            ratio(p.reps.iter().map(|x| x.raw_consume_s / x.replay_s)),
            ratio(p.reps.iter().map(|x| x.insert_s / x.replay_s)),
            ratio(p.reps.iter().map(|x| x.copy_s / x.replay_s)),
        );
    }
    if let Some(q) = &r.query {
        for (name, api, bare) in [
            (
                "`GET /bookings/{id}`",
                q.reps.iter().map(|x| &x.by_id_api).collect::<Vec<_>>(),
                q.reps.iter().map(|x| &x.by_id_bare).collect::<Vec<_>>(),
            ),
            (
                "`GET /bookings` (first page of 50)",
                q.reps.iter().map(|x| &x.list_api).collect(),
                q.reps.iter().map(|x| &x.list_bare).collect(),
            ),
        ] {
            let _ = writeln!(
                out,
                "| Queries, {name} on the query-api, {} clients | {} requests/s, {} | bare axum + sqlx, same rows: {} requests/s, {} | {} |",
                r.sizes.clients,
                spread(api.iter().map(|l| l.rate()), ""),
                p50_p99(&api),
                spread(bare.iter().map(|l| l.rate()), ""),
                p50_p99(&bare),
                ratio(api.iter().zip(&bare).map(|(a, b)| a.rate() / b.rate())),
            );
        }
    }
    if let Some(x) = &r.scale {
        let _ = writeln!(
            out,
            "| Scale-out, `POST /bookings` spread over two command-service replicas, {} clients | {} commands/s | one replica, same run: {} commands/s | {} |",
            r.sizes.clients,
            spread(x.reps.iter().map(|x| x.commands_two.rate()), ""),
            spread(x.reps.iter().map(|x| x.commands_one.rate()), ""),
            ratio(
                x.reps
                    .iter()
                    .map(|x| x.commands_two.rate() / x.commands_one.rate())
            ),
        );
        let _ = writeln!(
            out,
            "| Scale-out, whole bookings (request to finished saga) with two saga runners | {} bookings/s | one saga runner, same run: {} bookings/s | {} |",
            spread(x.reps.iter().map(|x| x.sagas_two.rate()), ""),
            spread(x.reps.iter().map(|x| x.sagas_one.rate()), ""),
            ratio(
                x.reps
                    .iter()
                    .map(|x| x.sagas_two.rate() / x.sagas_one.rate())
            ),
        );
    }
    if let Some(m) = &r.memory
        && let Some(largest) = m.points.last()
        && largest.events > 0
    {
        let catch_up = |s: &ServiceMemory| s.catch_up_s.unwrap_or(f64::NAN);
        let _ = writeln!(
            out,
            "| Replay at the largest log: the projection-service of the memory measurement, {} events from offset 0 into a fresh database | {} events/s | raw consume of the same log: {} events/s | {} raw consume (one run) |",
            int(u64_f(largest.events)),
            int(rate(largest.events, catch_up(&largest.projection))),
            int(rate(largest.events, largest.raw_consume_s)),
            ratio([largest.raw_consume_s / catch_up(&largest.projection)]),
        );
        let _ = writeln!(
            out,
            "| Memory (RSS) at {} events ({} bookings){} | command-service {} MiB (keeping snapshots as `compose/up` runs it: {} MiB; restarted from its snapshot: {} MiB), projection-service {} MiB, query-api {} MiB | bare axum + sqlx: {} MiB; the events' JSON: {} MiB | command-service {} × the events' JSON |",
            int(u64_f(largest.events)),
            int(usize_f(largest.bookings)),
            if m.not_measured.is_empty() {
                String::new()
            } else {
                format!(
                    " (the largest size measured; {} not reached, see Memory)",
                    m.not_measured
                        .iter()
                        .map(|(events, _)| int(u64_f(*events)))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            },
            num(mib(largest.command_replay.memory.rss_kib)),
            num(mib(largest.command_snapshots.memory.rss_kib)),
            num(mib(largest.command_snapshot.memory.rss_kib)),
            num(mib(largest.projection.memory.rss_kib)),
            num(mib(largest.query_api.memory.rss_kib)),
            num(mib(largest.bare.memory.rss_kib)),
            num(mib_bytes(largest.bytes)),
            num(mib(largest.command_replay.memory.rss_kib) / mib_bytes(largest.bytes.max(1))),
        );
    }
}

/// The median of a ratio over repetitions (NaN when there is none).
fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    Spread::of(values).map_or(f64::NAN, |s| s.median)
}

/// What the ratios of this run say, sentence by sentence, each from its own figures.
fn reading(out: &mut String, r: &Results) {
    let mut points = Vec::new();
    if let Some(w) = &r.write {
        let back = median(
            w.reps
                .iter()
                .map(|x| x.http.rate() / x.produce_read_back.rate()),
        );
        let raw = median(w.reps.iter().map(|x| x.http.rate() / x.raw_produce.rate()));
        points.push(format!(
            "**`POST /bookings` runs at {} × the throughput of producing its record and reading \
             it back**, and {} × that of a bare produce: a write answers only once its own consumer has \
             read its record back (`docs/consistency.md`); HTTP, the token, schema validation, \
             the domain and the in-memory store are the rest.",
            num(back),
            num(raw)
        ));
    }
    if let Some(settings) = &r.settings {
        points.push(settings_reading(settings));
    }
    if let Some(l) = &r.latency {
        let poll = median(l.reps.iter().map(|x| x.poll.p50_ms));
        let token = median(l.reps.iter().map(|x| x.token.p50_ms));
        let pipe = median(l.reps.iter().map(|x| x.pipeline.p50_ms));
        let grid = if token > poll {
            format!(
                ", so here it was {} ms slower at the median than polling every {} ms",
                num(token - poll),
                r.sizes.poll_interval_ms
            )
        } else {
            String::new()
        };
        points.push(format!(
            "**Accepted to visible takes {} ms at the median when polling, {} ms with the \
             token**, against {} ms for a bare consume-and-`INSERT` pipeline on the same \
             broker. The token read costs the client one request, which the query-api holds \
             until the projector's commit wakes it (`NOTIFY fm_read_models_advanced`, \
             docs/read-side.md){grid}.",
            num(poll),
            num(token),
            num(pipe),
        ));
    }
    if let Some(p) = &r.replay {
        let consume = median(p.reps.iter().map(|x| x.raw_consume_s / x.replay_s));
        let insert = median(p.reps.iter().map(|x| x.insert_s / x.replay_s));
        let bound = if consume < 0.5 {
            "**The projection-service, not the broker, bounds a rebuild**"
        } else {
            "**The broker bounds a rebuild**"
        };
        points.push(format!(
            "{bound}: a replay runs at {} × the raw consume rate of the same log and {} × the \
             rate of plain single-row `INSERT`s in batches of 500. Per batch it decodes and \
             checks every record against its schema, loads and locks the rows the batch touches \
             (one `SELECT … FOR UPDATE` per table), folds the events into them in memory under \
             the admission rule, and writes them back with one upsert per table and the offsets \
             in the same transaction (docs/read-side.md, \"Batch folding\").",
            num(consume),
            num(insert)
        ));
    }
    if let Some(q) = &r.query {
        let by_id = median(
            q.reps
                .iter()
                .map(|x| x.by_id_api.rate() / x.by_id_bare.rate()),
        );
        let list = median(
            q.reps
                .iter()
                .map(|x| x.list_api.rate() / x.list_bare.rate()),
        );
        let page = if list > 1.0 {
            "; for a page the bare server is the slower one: building 50 rows' JSON in \
             PostgreSQL costs more there than the query-api's typed rows serialised in Rust"
        } else {
            ""
        };
        points.push(format!(
            "**The query-api serves {} × the bare handler's requests by id, and {} × for a page \
             of 50.** By id the query-api's layers (token, timeout, tracing, metrics, ETag) are \
             what differs{page}.",
            num(by_id),
            num(list)
        ));
    }
    if points.is_empty() {
        return;
    }
    out.push_str("\n## Reading the figures\n\n");
    for point in points {
        let _ = writeln!(out, "- {point}");
    }
}

#[allow(clippy::cast_precision_loss)] // Counts far below 2^52.
fn u64_f(value: u64) -> f64 {
    value as f64
}

#[allow(clippy::cast_precision_loss)] // Counts far below 2^52.
fn usize_f(value: usize) -> f64 {
    value as f64
}

fn machine(out: &mut String, r: &Results) {
    let m = &r.machine;
    let dirty = if m.git_dirty.is_empty() {
        "clean working tree".to_owned()
    } else {
        format!("uncommitted changes in: {}", m.git_dirty.join(", "))
    };
    let _ = write!(
        out,
        "\n## Machine\n\n| | |\n|---|---|\n\
         | CPU | {} ({} logical cores, {}) |\n\
         | RAM | {:.1} GiB |\n\
         | Kernel | Linux {} |\n\
         | Broker | {}, topics of 3 partitions, replication factor 1 |\n\
         | PostgreSQL | {} (`fsync=off`, `synchronous_commit=off`, `full_page_writes=off`, as `compose/test`'s) |\n\
         | Code | commit `{}` ({dirty}), release build, {} |\n\
         | Everything | on this one machine: broker, PostgreSQL, the services and the load generator share its cores |\n",
        m.cpu_model,
        m.cores,
        m.arch,
        m.ram_gib,
        m.kernel,
        m.broker,
        m.postgres,
        m.git_commit,
        m.rustc,
    );
}

fn reproduce(out: &mut String, r: &Results) {
    let s = &r.sizes;
    let _ = write!(
        out,
        "\n## How to reproduce\n\n\
         ```sh\n\
         compose/bench            # the full run (25-60 minutes on 2 busy cores), rewrites this page\n\
         compose/bench --quick    # a smoke run of every measurement in a few minutes\n\
         compose/bench --profile query-api,command-service --quick --only write,query\n\
         \x20                        # where the time goes: callgrind and pg_stat_statements\n\
         compose/bench --bin-dir DIR --only write,query\n\
         \x20                        # another build's binaries (copied aside), to compare two builds\n\
         ```\n\n\
         `compose/bench` installs what is missing, starts its own throw-away PostgreSQL \
         (127.0.0.1:25472) and Apache Kafka (127.0.0.1:29132, one KRaft node) in a temporary directory, \
         builds the services and `fm-bench` (`benchmarks/`) in release, and runs `fm-bench run`, \
         which starts the services as processes from their release binaries (command-service \
         :18281, query-api :18282, projection-service :18283, the bare baseline :18284) with \
         their default settings, a fresh topic prefix and a fresh database per measurement. \
         Raw results are kept beside the logs (the path is printed at the end); `fm-bench report \
         --results results.json` renders this page again from them.\n\n\
         This run: {} repetitions; {} clients; {} booking requests per repetition over {} \
         facilities; {} latency samples per mode and repetition from {} clients polling every {} \
         ms; {} events replayed; {} s per query load; memory at {} events.\n",
        s.repetitions,
        s.clients,
        int(usize_f(s.booking_requests)),
        s.facilities,
        s.latency_samples,
        s.latency_clients,
        s.poll_interval_ms,
        int(u64_f(s.replay_events)),
        s.query_seconds,
        std::iter::once(0)
            .chain(s.memory_events.iter().copied())
            .map(|e| int(u64_f(e)))
            .collect::<Vec<_>>()
            .join(", "),
    );
}

fn load_row(out: &mut String, what: &str, l: &Load) {
    let _ = writeln!(
        out,
        "| {what} | {} /s | {} ms | {} ms | {} ms | {} in {:.1} s | {} |",
        num(l.rate()),
        num(l.p50_ms),
        num(l.p99_ms),
        num(l.max_ms),
        int(usize_f(l.ok)),
        l.elapsed_s,
        failures_of(&[l]),
    );
}

/// "Where the CPU went" for `measures` (a label and its repetitions): the machine's busy share
/// and each kind of process's CPU per operation, medians over the repetitions. Only kinds that
/// used at least 2 % of some measure's CPU get a column.
fn cpu_table(out: &mut String, measures: &[(&str, Vec<&Load>)]) {
    let per_op = |load: &Load, kind: &str| -> Option<f64> {
        let cpu = load.cpu.as_ref()?;
        let seconds = if kind.is_empty() {
            cpu.seconds.values().sum()
        } else {
            cpu.seconds.get(kind).copied().unwrap_or(0.0)
        };
        (load.ok > 0).then(|| seconds / usize_f(load.ok) * 1e6)
    };
    let kinds: Vec<&str> = crate::cpu::KINDS
        .into_iter()
        .filter(|kind| {
            measures.iter().flat_map(|(_, loads)| loads).any(|load| {
                per_op(load, kind)
                    .zip(per_op(load, ""))
                    .is_some_and(|(part, all)| all > 0.0 && part / all >= 0.02)
            })
        })
        .collect();
    if kinds.is_empty() {
        return;
    }
    let _ = write!(
        out,
        "\n**Where the CPU went** (every process on the machine, from `/proc` before and after \
         each load; medians over the repetitions): how busy all cores were, and CPU time per \
         operation in µs, in all and by process.\n\n| Measure | Cores busy | All |"
    );
    for kind in &kinds {
        let _ = write!(out, " {kind} |");
    }
    out.push_str("\n|---|---|---|");
    out.push_str(&"---|".repeat(kinds.len()));
    out.push('\n');
    for (label, loads) in measures {
        let median_of = |kind: &str| {
            Spread::of(loads.iter().filter_map(|load| per_op(load, kind)))
                .map_or_else(|| "–".to_owned(), |s| int(s.median))
        };
        let busy = Spread::of(
            loads
                .iter()
                .filter_map(|load| load.cpu.as_ref().map(|cpu| cpu.machine_busy * 100.0)),
        )
        .map_or_else(|| "–".to_owned(), |s| format!("{:.0} %", s.median));
        let _ = write!(out, "| {label} | {busy} | {} |", median_of(""));
        for kind in &kinds {
            let _ = write!(out, " {} |", median_of(kind));
        }
        out.push('\n');
    }
}

const LOAD_HEAD: &str = "| Repetition, measure | Rate | p50 | p99 | max | Count | Failures |\n|---|---|---|---|---|---|---|\n";

fn write_section(out: &mut String, w: &WriteResults, s: &Sizes) {
    let _ = write!(
        out,
        "\n## Booking commands\n\n\
         **Method.** A command-service process on fresh topics; {} facilities registered, then \
         {} keep-alive clients send {} valid `POST /bookings` (director token, spread over the \
         facilities and future days) after a warm-up of one request per client; rate and \
         latency of the 202 answers, every other answer counted as a failure. Baselines, each on \
         fresh topics: **raw produce**, an rdkafka producer with the services' settings \
         (idempotent, `acks=all`, `linger.ms=1`) sending as many records of the size of a real \
         `BookingRequested` record ({} bytes, same key and headers), {} in flight; and **produce \
         + read back**, the same but each send also waits until a consumer with the services' \
         settings (`fetch.wait.max.ms={}`) has read its record back, which is what a write does \
         before it answers (`docs/consistency.md`), without HTTP, the token, validation, the \
         domain or the store.\n\n{LOAD_HEAD}",
        s.facilities,
        s.clients,
        int(usize_f(s.booking_requests)),
        w.record_bytes,
        s.clients,
        Variant::services().fetch_wait_ms,
    );
    for (i, rep) in w.reps.iter().enumerate() {
        let n = i + 1;
        load_row(out, &format!("{n}: `POST /bookings`"), &rep.http);
        load_row(out, &format!("{n}: raw produce"), &rep.raw_produce);
        load_row(
            out,
            &format!("{n}: produce + read back"),
            &rep.produce_read_back,
        );
    }
    out.push_str("\nOrder and load average per repetition: ");
    let notes: Vec<String> = w
        .reps
        .iter()
        .enumerate()
        .map(|(i, rep)| format!("{}: {} (load {})", i + 1, rep.order, rep.load_average))
        .collect();
    out.push_str(&notes.join("; "));
    let _ = write!(
        out,
        ".\n\nRatios per repetition, then their median: throughput ÷ raw produce {}, ÷ produce + \
         read back {}; p99 ÷ produce + read back's p99 {}.\n",
        ratio(w.reps.iter().map(|x| x.http.rate() / x.raw_produce.rate())),
        ratio(
            w.reps
                .iter()
                .map(|x| x.http.rate() / x.produce_read_back.rate())
        ),
        ratio(
            w.reps
                .iter()
                .map(|x| x.http.p99_ms / x.produce_read_back.p99_ms)
        ),
    );
    cpu_table(
        out,
        &[
            ("`POST /bookings`", w.reps.iter().map(|x| &x.http).collect()),
            (
                "raw produce",
                w.reps.iter().map(|x| &x.raw_produce).collect(),
            ),
            (
                "produce + read back",
                w.reps.iter().map(|x| &x.produce_read_back).collect(),
            ),
        ],
    );
}

fn latency_section(out: &mut String, l: &LatencyResults, s: &Sizes) {
    let _ = write!(
        out,
        "\n## Command-to-query latency\n\n\
         **Method.** A command-service, a projection-service and a query-api, as processes on \
         fresh topics and a fresh database. {} clients each loop: `POST /bookings`; the clock \
         starts when the 202 arrives; then either **polling**: `GET /bookings/{{id}}` on the \
         query-api without the consistency token every {} ms until it answers 200 (404 means not \
         yet), or **token**: one `GET /bookings/{{id}}` with the `Consistency-Token` header of \
         the 202, which the query-api holds until its read model has applied that offset (the \
         projector's commit notifies it). {} bookings per mode and \
         repetition, after a warm-up. The baseline, **pipeline**: the least any \"log → \
         PostgreSQL → HTTP\" path can take on this broker: the benchmark produces a record of \
         the same size; one consumer with the services' settings reads it and `INSERT`s it \
         (autocommit) into a table the bare axum + sqlx server serves; the clock starts when a \
         second consumer of the benchmark has read the record back (the command-service answers \
         202 only once its own consumer has read its record back), and the bare server is \
         polled the same way every {} ms until it returns the record. So both clocks start at \
         the same point of a record's life.\n\n{LOAD_HEAD}",
        s.latency_clients, s.poll_interval_ms, s.latency_samples, s.poll_interval_ms,
    );
    for (i, rep) in l.reps.iter().enumerate() {
        let n = i + 1;
        load_row(out, &format!("{n}: polling"), &rep.poll);
        load_row(out, &format!("{n}: consistency token"), &rep.token);
        load_row(out, &format!("{n}: pipeline baseline"), &rep.pipeline);
    }
    let notes: Vec<String> = l
        .reps
        .iter()
        .enumerate()
        .map(|(i, rep)| format!("{}: {} (load {})", i + 1, rep.order, rep.load_average))
        .collect();
    let _ = write!(
        out,
        "\n(The rate column is bookings per second through the whole loop, not a throughput \
         figure.) Order and load average per repetition: {}.\n",
        notes.join("; ")
    );
}

fn replay_section(out: &mut String, p: &ReplayResults) {
    let _ = write!(
        out,
        "\n## Replay\n\n\
         **Method.** {} events ({} booking stories: registration, request, slot held, capture, \
         confirmation, and for every third a cancellation, refund and release; {:.1} MiB of \
         JSON) written straight to fresh topics by a bulk producer in {:.1} s ({} events/s; \
         linger 20 ms, many records in flight). Each repetition: **raw consume**, one consumer \
         with the services' settings reads every partition from offset 0 to the end; \
         **replay**, a projection-service process (default settings: batches of up to 500) on a \
         fresh database, timed from its start until `live.projection_offsets` holds every end \
         offset; then in that database, as many rows shaped like its `bookings` rows (same \
         table definition and indexes) as there are events, by **`INSERT`** (one statement per \
         row, values bound, 500 rows per transaction: the projector's batch) and by one \
         **`COPY`**. A replay folds each batch in memory and writes it set-based (one locking \
         read and one upsert per table per batch, the offsets in the same transaction: \
         docs/read-side.md, \"Batch folding\"), but it also decodes and checks every record \
         against its schema, reads each row it updates and writes it back whole as JSON \
         (`jsonb_populate_recordset`), and its rows carry the history and the payments besides \
         the `bookings` row; so `COPY` of bare rows is a floor it does not reach.\n\n\
         | Repetition | Raw consume | Replay | `INSERT` | `COPY` | Replay ÷ raw consume | Order, load average |\n\
         |---|---|---|---|---|---|---|\n",
        int(u64_f(p.events)),
        int(usize_f(p.stories)),
        mib_bytes(p.bytes),
        p.seed_s,
        int(rate(p.events, p.seed_s)),
    );
    for (i, rep) in p.reps.iter().enumerate() {
        let _ = writeln!(
            out,
            "| {} | {} events/s ({:.1} s) | {} events/s ({:.1} s) | {} rows/s ({:.1} s) | {} rows/s ({:.1} s) | {} × | {}; {} |",
            i + 1,
            int(rate(p.events, rep.raw_consume_s)),
            rep.raw_consume_s,
            int(rate(p.events, rep.replay_s)),
            rep.replay_s,
            int(rate(p.events, rep.insert_s)),
            rep.insert_s,
            int(rate(p.events, rep.copy_s)),
            rep.copy_s,
            num(rep.raw_consume_s / rep.replay_s),
            rep.order,
            rep.load_average,
        );
    }
    // Per event: each repetition's CPU as a load of the log's events.
    let per_event = |cpu: &Option<crate::cpu::CpuUse>, seconds: f64| Load {
        ok: usize::try_from(p.events).unwrap_or(usize::MAX),
        elapsed_s: seconds,
        cpu: cpu.clone(),
        ..Load::default()
    };
    let (consumes, replays): (Vec<Load>, Vec<Load>) = p
        .reps
        .iter()
        .map(|rep| {
            (
                per_event(&rep.raw_consume_cpu, rep.raw_consume_s),
                per_event(&rep.replay_cpu, rep.replay_s),
            )
        })
        .unzip();
    cpu_table(
        out,
        &[
            ("raw consume, per event", consumes.iter().collect()),
            ("replay, per event", replays.iter().collect()),
        ],
    );
}

fn query_section(out: &mut String, q: &QueryResults, s: &Sizes) {
    let _ = write!(
        out,
        "\n## Queries\n\n\
         **Method.** On the read models of the last replay ({} bookings): a query-api process \
         (default settings, a pool of 10 connections) and the bare server, a separate process \
         of axum and sqlx with nothing else (no token, no middleware, a pool of 10) that reads \
         the same rows by the same indexes and builds the JSON in PostgreSQL \
         (`benchmarks/src/bare.rs`). {} keep-alive clients for {} s each, after 1 s of warm-up: \
         `GET /bookings/{{id}}` over scattered ids (the query-api with a director token, without \
         consistency token), and `GET /bookings`, the first page of 50 by service start (the \
         bare server runs the same `ORDER BY … LIMIT 51`). The query-api adds to the bare \
         handler: HS256 token verification, the request-timeout, body-limit, tracing and metrics \
         layers, typed rows serialised in Rust, the payment sub-select and the ETag.\n\n{LOAD_HEAD}",
        int(usize_f(q.bookings)),
        s.clients,
        s.query_seconds,
    );
    for (i, rep) in q.reps.iter().enumerate() {
        let n = i + 1;
        load_row(out, &format!("{n}: query-api, by id"), &rep.by_id_api);
        load_row(out, &format!("{n}: bare, by id"), &rep.by_id_bare);
        load_row(out, &format!("{n}: query-api, list"), &rep.list_api);
        load_row(out, &format!("{n}: bare, list"), &rep.list_bare);
    }
    cpu_table(
        out,
        &[
            (
                "query-api, by id",
                q.reps.iter().map(|x| &x.by_id_api).collect(),
            ),
            (
                "bare, by id",
                q.reps.iter().map(|x| &x.by_id_bare).collect(),
            ),
            (
                "query-api, list",
                q.reps.iter().map(|x| &x.list_api).collect(),
            ),
            ("bare, list", q.reps.iter().map(|x| &x.list_bare).collect()),
        ],
    );
}

fn scale_section(out: &mut String, x: &ScaleResults, s: &Sizes) {
    let _ = write!(
        out,
        "\n## Scale-out\n\n\
         **Method.** Commands: on fresh topics, one command-service process, {} facilities \
         registered, then (for two) a second replica started and ready; {} keep-alive clients \
         send {} `POST /bookings` after a warm-up of one per client, the requests alternating \
         between the replicas. Whole bookings: on fresh topics and a fresh database, one \
         command-service, the gateway simulator and an SMTP sink (in the benchmark's process), \
         and one or two saga-runner processes with their default settings; after a warm-up of \
         one booking per client has finished, {} bookings are requested by {} clients and the \
         clock runs until the last saga is `done` in `saga.progress` (slot held, payment \
         captured, booking confirmed, family mailed). Each replica folds the whole log and \
         answers a write only once its own consumer has read the record back \
         (`docs/consistency.md`); of two runners one consumes the facts (a session lock elects \
         it) and both claim due sagas one at a time under each saga's advisory lock \
         (docs/saga.md, \"Sharing the work between runners\"). Every process of both set-ups shares the machine's cores (see Machine), so a \
         second instance can only add what the first leaves idle.\n\n\
         | Repetition, measure | Rate | p50 | p99 | max | Count | Failures |\n|---|---|---|---|---|---|---|\n",
        s.facilities,
        s.clients,
        int(usize_f(s.booking_requests)),
        int(usize_f(x.saga_bookings)),
        s.clients,
    );
    for (i, rep) in x.reps.iter().enumerate() {
        let n = i + 1;
        load_row(
            out,
            &format!("{n}: `POST /bookings`, one command-service"),
            &rep.commands_one,
        );
        load_row(
            out,
            &format!("{n}: `POST /bookings`, two command-services"),
            &rep.commands_two,
        );
        for (runners, sagas) in [("one saga runner", &rep.sagas_one), ("two", &rep.sagas_two)] {
            let _ = writeln!(
                out,
                "| {n}: whole bookings, {runners} | {} /s done ({} /s accepted) | {} ms (request) | {} ms (request) | {} ms (request) | {} in {:.1} s | {} |",
                num(sagas.rate()),
                num(sagas.posted.rate()),
                num(sagas.posted.p50_ms),
                num(sagas.posted.p99_ms),
                num(sagas.posted.max_ms),
                int(usize_f(sagas.done)),
                sagas.elapsed_s,
                failures_of(&[&sagas.posted]),
            );
        }
    }
    out.push_str("\nOrder and load average per repetition: ");
    let notes: Vec<String> = x
        .reps
        .iter()
        .enumerate()
        .map(|(i, rep)| format!("{}: {} (load {})", i + 1, rep.order, rep.load_average))
        .collect();
    out.push_str(&notes.join("; "));
    let _ = write!(
        out,
        ".\n\nRatios per repetition, then their median: two command-services ÷ one {}; two saga \
         runners ÷ one {}.\n",
        ratio(
            x.reps
                .iter()
                .map(|x| x.commands_two.rate() / x.commands_one.rate())
        ),
        ratio(
            x.reps
                .iter()
                .map(|x| x.sagas_two.rate() / x.sagas_one.rate())
        ),
    );
    scale_cpu(out, x);
}

/// The scale-out section's "Where the CPU went": per command, and per whole booking (a load of
/// its finished sagas).
fn scale_cpu(out: &mut String, x: &ScaleResults) {
    let whole = |sagas: &SagaLoad| Load {
        ok: sagas.done,
        elapsed_s: sagas.elapsed_s,
        cpu: sagas.cpu.clone(),
        ..Load::default()
    };
    let (sagas_one, sagas_two): (Vec<Load>, Vec<Load>) = x
        .reps
        .iter()
        .map(|x| (whole(&x.sagas_one), whole(&x.sagas_two)))
        .unzip();
    cpu_table(
        out,
        &[
            (
                "`POST /bookings`, one command-service",
                x.reps.iter().map(|x| &x.commands_one).collect(),
            ),
            (
                "`POST /bookings`, two command-services",
                x.reps.iter().map(|x| &x.commands_two).collect(),
            ),
            (
                "whole bookings, one saga runner",
                sagas_one.iter().collect(),
            ),
            (
                "whole bookings, two saga runners",
                sagas_two.iter().collect(),
            ),
        ],
    );
}

fn memory_section(out: &mut String, m: &MemoryResults) {
    out.push_str(
        "\n## Memory\n\n\
         **Method.** Valid booking stories (as under Replay) are written straight to one set \
         of topics, growing from one size to the next. At each size every service starts from \
         scratch as a process, and its resident memory is read from `/proc/<pid>/status` \
         (`VmRSS` now, and in brackets `VmHWM`, its peak, and how long it took) once it has \
         caught up: the \
         projection-service once every end offset is stored in a fresh database; the \
         command-service once `/ready` (its in-memory store has folded the whole log), three \
         times: without a snapshot, which is the store alone; keeping a snapshot as \
         `compose/up` configures it, so that it also serialises the store every 30 s while it \
         reads (and once more at shutdown); and restored from that snapshot. The query-api \
         and the bare server are read after 5 s of `GET /bookings/{id}` from 32 clients on those read models. The events' JSON is the sum of the record payloads. \
         The stories are finished as a store meets them once they are done with (issue 18): \
         every third booking cancelled, and all but one in twenty of the others confirmed for \
         a service already held, so at least 95 % of the bookings can no longer change \
         (`benchmarks/src/seed.rs`, `finished_stories`).\n\n\
         | Events (bookings) | Events' JSON | projection-service | command-service, replayed | command-service, replayed keeping snapshots | command-service, from its snapshot | query-api | bare axum + sqlx | raw consume of the log |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    let cell = |memory: &crate::procs::Memory, took: Option<f64>, events: u64| {
        let took = took.map_or_else(String::new, |s| {
            if events == 0 {
                format!("; ready after {s:.1} s")
            } else {
                format!(
                    "; caught up after {s:.1} s, {} events/s",
                    int(rate(events, s))
                )
            }
        });
        format!(
            "{} MiB ({} MiB{took})",
            num(mib(memory.rss_kib)),
            num(mib(memory.peak_kib))
        )
    };
    for p in &m.points {
        let _ = writeln!(
            out,
            "| {} ({}) | {} MiB | {} | {} | {} | {}, snapshot {} MiB | {} | {} | {} |",
            int(u64_f(p.events)),
            int(usize_f(p.bookings)),
            num(mib_bytes(p.bytes)),
            cell(&p.projection.memory, p.projection.catch_up_s, p.events),
            cell(
                &p.command_replay.memory,
                p.command_replay.catch_up_s,
                p.events
            ),
            cell(
                &p.command_snapshots.memory,
                p.command_snapshots.catch_up_s,
                p.events
            ),
            cell(&p.command_snapshot.memory, p.command_snapshot.catch_up_s, 0),
            num(mib_bytes(p.snapshot_bytes)),
            cell(&p.query_api.memory, None, 0),
            cell(&p.bare.memory, None, 0),
            if p.events == 0 {
                "–".to_owned()
            } else {
                format!(
                    "{} events/s ({:.1} s)",
                    int(rate(p.events, p.raw_consume_s)),
                    p.raw_consume_s
                )
            },
        );
    }
    growth(out, m);
    snapshot_figures(out, m);
    for (events, why) in &m.not_measured {
        let _ = writeln!(
            out,
            "\n**Not measured at {} events**: {why}. Figures for that size below are \
             extrapolated from the growth per event above, not measured.",
            int(u64_f(*events))
        );
        if let Some((from, to)) = slope_points(m) {
            let at = |f: fn(&MemoryPoint) -> u64| {
                mib(f(to))
                    + per_event(from, to, f) * u64_f(events.saturating_sub(to.events))
                        / 1024.0
                        / 1024.0
            };
            let _ = writeln!(
                out,
                "Extrapolated RSS at {} events (linear from the growth above): command-service {} MiB, \
                 projection-service {} MiB.",
                int(u64_f(*events)),
                num(at(|p| p.command_replay.memory.rss_kib)),
                num(at(|p| p.projection.memory.rss_kib)),
            );
        }
    }
}

/// The restore's peak against the steady store, and `/health` while a snapshot is written
/// (docs/memory.md, "Snapshots").
fn snapshot_figures(out: &mut String, m: &MemoryResults) {
    let _ = write!(
        out,
        "\n**Snapshots.** A restart from the snapshot peaks (`VmHWM`) at this multiple of the \
         store replayed without one (`VmRSS`):"
    );
    for p in m.points.iter().filter(|p| p.events > 0) {
        let _ = write!(
            out,
            " {} at {} events;",
            num(mib(p.command_snapshot.memory.peak_kib)
                / mib(p.command_replay.memory.rss_kib).max(f64::MIN_POSITIVE)),
            int(u64_f(p.events))
        );
    }
    let _ = write!(
        out,
        " the goal is at most 1.3. `/health` of the restored service while it writes a \
         snapshot (sequential probes a few milliseconds apart, from the record that sets the \
         snapshot off until the file is replaced):"
    );
    for p in &m.points {
        if let Some(stall) = &p.snapshot_stall {
            let _ = write!(
                out,
                " at {} events the longest answer took {} ms (median {} ms, {} probes; the \
                 snapshot was in place {:.1} s after the record);",
                int(u64_f(p.events)),
                num(stall.longest_ms),
                num(stall.median_ms),
                stall.probes,
                stall.written_after_s
            );
        }
    }
    out.push('\n');
}

/// The two points memory growth is measured between: the smallest log that is not empty (so
/// that start-up costs and the first buffers are already paid) and the largest.
fn slope_points(m: &MemoryResults) -> Option<(&MemoryPoint, &MemoryPoint)> {
    let from = m.points.iter().find(|p| p.events > 0)?;
    let to = m.points.last()?;
    (to.events > from.events).then_some((from, to))
}

/// RSS growth per event between two points, in bytes.
fn per_event(from: &MemoryPoint, to: &MemoryPoint, f: fn(&MemoryPoint) -> u64) -> f64 {
    (mib(f(to)) - mib(f(from))) * 1024.0 * 1024.0 / u64_f(to.events - from.events)
}

fn growth(out: &mut String, m: &MemoryResults) {
    let Some((from, to)) = slope_points(m) else {
        return;
    };
    let stories_per_event = usize_f(to.bookings - from.bookings) / u64_f(to.events - from.events);
    let _ = write!(
        out,
        "\nGrowth of RSS from {} to {} events, in bytes per event (per booking story of {:.1} \
         events):",
        int(u64_f(from.events)),
        int(u64_f(to.events)),
        1.0 / stories_per_event.max(f64::MIN_POSITIVE),
    );
    for (name, f) in [
        (
            "command-service",
            (|p: &MemoryPoint| p.command_replay.memory.rss_kib) as fn(&MemoryPoint) -> u64,
        ),
        ("command-service keeping snapshots", |p| {
            p.command_snapshots.memory.rss_kib
        }),
        ("command-service from its snapshot", |p| {
            p.command_snapshot.memory.rss_kib
        }),
        ("projection-service", |p| p.projection.memory.rss_kib),
    ] {
        let bytes = per_event(from, to, f);
        let _ = write!(
            out,
            " {name} {} ({});",
            int(bytes),
            int(bytes / stories_per_event.max(f64::MIN_POSITIVE))
        );
    }
    let json_per_event = u64_f(to.bytes - from.bytes) / u64_f(to.events - from.events);
    let _ = writeln!(
        out,
        " for scale, the events' JSON is {} bytes per event. Only the command-service keeps \
         state per aggregate in memory (every aggregate's state and version, and the \
         idempotency index: `docs/consistency.md`), so only its slope is a cost per event.{} The projection-service keeps its state in PostgreSQL; what it holds is \
         buffers, which grow with how far behind it is rather than with the log: librdkafka \
         pre-fetches records while the consumer is behind (up to `queued.max.messages.kbytes`, \
         64 MiB by default), a batch holds up to 500 records, and the allocator keeps some of \
         what it freed. This run does not tell those apart. The query-api holds nothing of the \
         log: its RSS is after 5 s of load, which the empty log (no booking to read) did not \
         get.",
        int(json_per_event),
        snapshot_costs(to),
    );
}

/// What keeping and restoring snapshots did to the command-service's memory at `to`, when it
/// made a difference.
fn snapshot_costs(to: &MemoryPoint) -> String {
    let mut text = String::new();
    let (plain, keeping) = (
        mib(to.command_replay.memory.rss_kib),
        mib(to.command_snapshots.memory.rss_kib),
    );
    if keeping > plain * 1.1 {
        let _ = write!(
            text,
            " Keeping snapshots cost {} MiB more at {} events ({} against {} MiB): each one \
             serialises the whole store into one buffer ({} MiB of JSON at this size, \
             `command-service/src/snapshot.rs`), and the allocator need not give that memory \
             back once it is freed, so this figure depends on when the last snapshot ran before \
             the measurement.",
            num(keeping - plain),
            int(u64_f(to.events)),
            num(keeping),
            num(plain),
            num(mib_bytes(to.snapshot_bytes)),
        );
    }
    if to.command_snapshot.memory.peak_kib > to.command_replay.memory.peak_kib {
        let _ = write!(
            text,
            " A restart from its snapshot peaks higher than the replay did ({} against {} MiB at \
             {} events): it reads the whole snapshot file ({} MiB) into memory and parses it \
             from there (`command-service/src/snapshot.rs`).",
            num(mib(to.command_snapshot.memory.peak_kib)),
            num(mib(to.command_replay.memory.peak_kib)),
            int(u64_f(to.events)),
            num(mib_bytes(to.snapshot_bytes))
        );
    }
    text
}

/// Which client settings this run's figures support: the services' settings against the best
/// variant by throughput, and what the fetch wait does to the median latency.
fn settings_reading(settings: &SettingsResults) -> String {
    let services = settings.services;
    let rate = |v| variant_median(settings, v, Load::rate);
    let p50 = |v| variant_median(settings, v, |l| l.p50_ms);
    let variants: Vec<Variant> = settings
        .reps
        .first()
        .map(|rep| rep.loads.iter().map(|(v, _)| *v).collect())
        .unwrap_or_default();
    let best = variants
        .iter()
        .copied()
        .max_by(|a, b| rate(*a).total_cmp(&rate(*b)))
        .unwrap_or(services);
    let verdict = if best == services || rate(services) >= 0.9 * rate(best) {
        "so the services keep their settings".to_owned()
    } else {
        format!(
            "which is more than 10 % ahead of the services' settings: a candidate for the \
             defaults, to be confirmed by another run before changing them ({})",
            best.label()
        )
    };
    let waits: Vec<String> = variants
        .iter()
        .filter(|v| v.linger_ms == services.linger_ms)
        .map(|v| format!("{} ms at {} ms", num(p50(*v)), v.fetch_wait_ms))
        .collect();
    let shortest = variants
        .iter()
        .copied()
        .filter(|v| v.linger_ms == services.linger_ms)
        .min_by_key(|v| v.fetch_wait_ms)
        .unwrap_or(services);
    let wait_cost = if p50(services) <= 1.2 * p50(shortest) {
        "the broker answers a waiting fetch when a record arrives, so the longer wait costs no \
         latency here and saves the empty fetches of a short one"
    } else {
        "here the longer wait costs latency: the broker does not answer a waiting fetch as soon \
         as a record arrives"
    };
    format!(
        "**Client settings: the best produce + read back throughput came with {}** ({} /s \
         against {} /s with the services' settings), {verdict}. The median write-and-read-back \
         latency by fetch wait: {}; {wait_cost}.",
        best.label(),
        num(rate(best)),
        num(rate(services)),
        waits.join(", "),
    )
}

/// The median of a setting's figure over repetitions.
fn variant_median(
    settings: &SettingsResults,
    variant: Variant,
    figure: impl Fn(&Load) -> f64,
) -> f64 {
    median(settings.reps.iter().flat_map(|rep| {
        rep.loads
            .iter()
            .filter(|(v, _)| *v == variant)
            .map(|(_, load)| figure(load))
    }))
}

fn settings_section(out: &mut String, settings: &SettingsResults, s: &Sizes) {
    let services = settings.services;
    let _ = write!(
        out,
        "\n## Client settings on this broker\n\n\
         **Method.** Produce + read back (as under Booking commands: {} records of a real \
         `BookingRequested` record's size, {} in flight, each send waiting until a consumer has \
         read it back, which is what every write does before it answers) on fresh topics, once \
         with the services' settings ({}) and once with each setting moved on its own: the \
         consumer's `fetch.wait.max.ms` (`FM_KAFKA__FETCH_WAIT`), how long a fetch may wait at \
         the broker for a record, and the producer's `linger.ms`, how long it may hold a record \
         to batch it with others. The order rotates every repetition. Figures are medians over \
         the repetitions; the ratio is against the services' settings.\n\n\
         | Settings | Rate | p50 | p99 | Rate ÷ services' |\n|---|---|---|---|---|\n",
        int(usize_f(s.booking_requests)),
        s.clients,
        services.label(),
    );
    let base = variant_median(settings, services, Load::rate);
    let mut variants: Vec<Variant> = Vec::new();
    for rep in &settings.reps {
        for (variant, _) in &rep.loads {
            if !variants.contains(variant) {
                variants.push(*variant);
            }
        }
    }
    variants.sort_by_key(|v| (*v != services, v.fetch_wait_ms, v.linger_ms));
    for variant in variants {
        let rate = variant_median(settings, variant, Load::rate);
        let _ = writeln!(
            out,
            "| {}{} | {} /s | {} ms | {} ms | {} × |",
            variant.label(),
            if variant == services {
                " (the services')"
            } else {
                ""
            },
            num(rate),
            num(variant_median(settings, variant, |l| l.p50_ms)),
            num(variant_median(settings, variant, |l| l.p99_ms)),
            num(rate / base),
        );
    }
    let notes: Vec<String> = settings
        .reps
        .iter()
        .enumerate()
        .map(|(i, rep)| format!("{}: {}", i + 1, rep.load_average))
        .collect();
    let _ = writeln!(out, "\nLoad average per repetition: {}.", notes.join("; "));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sections::scale::{SagaLoad, ScaleRep};

    #[test]
    fn a_new_page_keeps_what_the_old_one_had_by_hand_and_nothing_else() {
        let old = format!("# Benchmarks\n\nold figures\n\n{KEPT}\n\n## Profiles\n\nby hand\n");
        let page = keeping_hand_written("# Benchmarks\n\nnew figures\n".into(), Some(&old));
        assert_eq!(
            page,
            format!("# Benchmarks\n\nnew figures\n\n{KEPT}\n\n## Profiles\n\nby hand\n")
        );
        let without = keeping_hand_written("new\n".into(), Some("old, nothing by hand\n"));
        assert_eq!(without, "new\n");
        assert_eq!(keeping_hand_written("new\n".into(), None), "new\n");
    }

    #[test]
    fn integers_have_spaces_between_thousands() {
        assert_eq!(int(1_234_567.4), "1 234 567");
        assert_eq!(int(999.0), "999");
        assert_eq!(int(-12_000.0), "-12 000");
    }

    #[test]
    fn small_ratios_keep_two_significant_digits() {
        assert_eq!(num(0.0043), "0.0043");
        assert_eq!(num(0.012), "0.012");
        assert_eq!(num(0.1), "0.10");
        assert_eq!(num(0.0), "0.00");
        assert_eq!(num(1.234), "1.23");
        assert_eq!(num(42.26), "42.3");
    }

    fn load(rate: f64, p50: f64, p99: f64) -> Load {
        Load {
            ok: 1000,
            elapsed_s: 1000.0 / rate,
            p50_ms: p50,
            p99_ms: p99,
            max_ms: p99 * 2.0,
            ..Load::default()
        }
    }

    fn point(events: u64, command_kib: u64) -> MemoryPoint {
        let memory = |kib| crate::procs::Memory {
            rss_kib: kib,
            peak_kib: kib + 1024,
        };
        let service = |kib, catch_up_s| ServiceMemory {
            memory: memory(kib),
            catch_up_s,
        };
        MemoryPoint {
            events,
            bookings: usize::try_from(events / 7).expect("small"),
            bytes: events * 590,
            seed_s: 1.0,
            seeded: events,
            raw_consume_s: 2.0,
            projection: service(50_000, Some(10.0)),
            command_replay: service(command_kib, Some(5.0)),
            command_snapshots: service(command_kib * 3 / 2, Some(6.0)),
            command_snapshot: service(command_kib, Some(0.5)),
            snapshot_bytes: events * 250,
            query_api: service(10_000, None),
            bare: service(9_000, None),
            load_average: "1 1 1".into(),
            snapshot_stall: None,
        }
    }

    /// A run with every section, two repetitions, one memory size out of reach.
    fn results() -> Results {
        use crate::sections::{
            latency::LatencyRep, query::QueryRep, replay::ReplayRep, settings::SettingsRep,
            write::WriteRep,
        };
        let reps = |n| 0..n;
        Results {
            machine: Machine::read("15.0".into()),
            sizes: Sizes::quick(),
            started_at: "2026-11-25 10:00".into(),
            finished_at: "2026-11-25 10:05".into(),
            load_average_start: "1 1 1".into(),
            load_average_end: "2 2 2".into(),
            write: Some(WriteResults {
                record_bytes: 857,
                reps: reps(2)
                    .map(|i| WriteRep {
                        http: load(500.0 + f64::from(i) * 100.0, 30.0, 90.0),
                        raw_produce: load(2000.0, 10.0, 40.0),
                        produce_read_back: load(1000.0, 25.0, 60.0),
                        order: "HTTP first".into(),
                        load_average: "1 → 1".into(),
                    })
                    .collect(),
            }),
            settings: Some(SettingsResults {
                services: Variant::services(),
                reps: reps(2)
                    .map(|_| SettingsRep {
                        loads: Variant::all()
                            .into_iter()
                            .map(|v| {
                                // A short fetch wait gains nothing; a longer linger batches.
                                let rate = if v.linger_ms == 5 { 1200.0 } else { 1000.0 };
                                (v, load(rate, 20.0, 60.0))
                            })
                            .collect(),
                        load_average: "1 → 1".into(),
                    })
                    .collect(),
            }),
            latency: Some(LatencyResults {
                reps: reps(2)
                    .map(|_| LatencyRep {
                        poll: load(40.0, 14.0, 150.0),
                        token: load(40.0, 23.0, 110.0),
                        pipeline: load(60.0, 13.0, 115.0),
                        order: "poll, token, pipeline".into(),
                        load_average: "1 → 1".into(),
                    })
                    .collect(),
            }),
            replay: Some(ReplayResults {
                events: 10_000,
                stories: 1_429,
                bytes: 5_900_000,
                seed_s: 3.0,
                reps: reps(2)
                    .map(|_| ReplayRep {
                        raw_consume_s: 1.0,
                        replay_s: 8.0,
                        insert_s: 2.0,
                        copy_s: 0.25,
                        order: "raw consume first".into(),
                        load_average: "1 → 1".into(),
                        raw_consume_cpu: None,
                        replay_cpu: None,
                    })
                    .collect(),
            }),
            query: Some(QueryResults {
                bookings: 1_429,
                reps: reps(2)
                    .map(|_| QueryRep {
                        by_id_api: load(1800.0, 15.0, 70.0),
                        by_id_bare: load(3600.0, 7.0, 25.0),
                        list_api: load(330.0, 87.0, 300.0),
                        list_bare: load(260.0, 118.0, 270.0),
                        order: "query-api first".into(),
                        load_average: "1 → 1".into(),
                    })
                    .collect(),
            }),
            memory: Some(MemoryResults {
                points: vec![
                    point(0, 40_000),
                    point(10_000, 50_000),
                    point(30_000, 60_000),
                ],
                not_measured: vec![(1_000_000, "did not catch up within 2 h".into())],
            }),
            scale: Some(scale_results()),
            failures: Vec::new(),
        }
    }

    fn scale_results() -> ScaleResults {
        ScaleResults {
            saga_bookings: 100,
            reps: (0..2)
                .map(|_| ScaleRep {
                    commands_one: load(500.0, 60.0, 200.0),
                    commands_two: load(550.0, 55.0, 190.0),
                    sagas_one: SagaLoad {
                        posted: load(400.0, 70.0, 200.0),
                        done: 100,
                        elapsed_s: 2.0,
                        cpu: None,
                    },
                    sagas_two: SagaLoad {
                        posted: load(400.0, 70.0, 200.0),
                        done: 100,
                        elapsed_s: 1.6,
                        cpu: None,
                    },
                    order: "one, then two".into(),
                    load_average: "1 → 1".into(),
                })
                .collect(),
        }
    }

    #[test]
    fn the_page_puts_each_figure_beside_its_baseline_and_ratio() {
        let page = render(&results());
        for heading in [
            "## Summary",
            "## Reading the figures",
            "## Machine",
            "## How to reproduce",
            "## Booking commands",
            "## Command-to-query latency",
            "## Replay",
            "## Queries",
            "## Memory",
            "## Client settings on this broker",
            "## Scale-out",
        ] {
            assert!(page.contains(heading), "no {heading}");
        }
        // 550 against 500 commands/s; 100 sagas in 1.6 s against 2.0 s.
        assert!(
            page.contains("two command-services ÷ one 1.10 ×; two saga runners ÷ one 1.25 ×"),
            "{page}"
        );
        // 500 and 600 commands/s against 1 000 records/s produced and read back.
        assert!(
            page.contains("0.55 × (0.50–0.60) produce + read back"),
            "{page}"
        );
        // Replay 8 s against a raw consume of 1 s.
        assert!(page.contains("0.12 × raw consume"), "{page}");
        // 90 000 KiB keeping snapshots against 60 000 KiB without, at 30 000 events.
        assert!(
            page.contains("Keeping snapshots cost 29.3 MiB more at 30 000 events"),
            "{page}"
        );
        assert!(page.contains("0.51 ×") || page.contains("0.50 ×"), "{page}");
    }

    #[test]
    fn the_settings_the_figures_favour_are_named_and_a_clear_winner_is_flagged() {
        let page = render(&results());
        // linger 5 ms ran at 1 200 /s against 1 000 /s with the services' settings.
        assert!(
            page.contains("the best produce + read back throughput came with `fetch.wait.max.ms=500`, `linger.ms=5`** (1 200 /s against 1 000 /s"),
            "{page}"
        );
        assert!(page.contains("a candidate for the defaults"), "{page}");
        assert!(
            page.contains(
                "| `fetch.wait.max.ms=500`, `linger.ms=5` | 1 200 /s | 20.0 ms | 60.0 ms | 1.20 × |"
            ),
            "{page}"
        );
        // Every fetch wait had the same latency: the longer one costs nothing.
        assert!(page.contains("costs no latency here"), "{page}");

        let mut even = results();
        for rep in &mut even.settings.as_mut().unwrap().reps {
            for (_, load) in &mut rep.loads {
                *load = super::tests::load(1000.0, 20.0, 60.0);
            }
        }
        let page = render(&even);
        assert!(
            page.contains("so the services keep their settings"),
            "{page}"
        );
    }

    #[test]
    fn a_size_not_reached_is_said_and_extrapolated_from_measured_growth_only() {
        let page = render(&results());
        assert!(page.contains("**Not measured at 1 000 000 events**: did not catch up within 2 h"));
        // From the smallest non-empty log: the command-service grew 10 000 KiB over 20 000
        // events (from the empty log it would be 682 bytes per event): 512 bytes per event, so at
        // 1 000 000 events about 58.6 MiB + 970 000 × 512 B = 532 MiB.
        assert!(page.contains("command-service 512 ("), "{page}");
        assert!(
            page.contains("Extrapolated RSS at 1 000 000 events"),
            "{page}"
        );
        assert!(page.contains("command-service 532 MiB"), "{page}");
    }

    #[test]
    fn a_failed_section_is_listed() {
        let mut failed = results();
        failed.replay = None;
        failed.query = None;
        failed
            .failures
            .push(("replay".into(), "the broker went away".into()));
        let page = render(&failed);
        assert!(page.contains("## Sections that failed in this run"));
        assert!(page.contains("- **replay**: the broker went away"));
        assert!(!page.contains("## Replay\n"));
    }

    #[test]
    fn the_cpu_table_gives_each_busy_process_its_time_per_operation() {
        let with_cpu = |ok: usize, busy: f64, seconds: &[(&str, f64)]| Load {
            ok,
            elapsed_s: 1.0,
            cpu: Some(crate::cpu::CpuUse {
                machine_busy: busy,
                seconds: seconds.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
            }),
            ..Load::default()
        };
        let http = with_cpu(
            1000,
            0.97,
            &[
                ("command-service", 0.5),
                ("PostgreSQL", 0.8),
                ("fm-bench", 0.2),
                ("other", 0.001),
            ],
        );
        let raw = with_cpu(10_000, 0.5, &[("Kafka broker", 0.6), ("fm-bench", 0.4)]);
        let mut out = String::new();
        cpu_table(
            &mut out,
            &[("HTTP", vec![&http]), ("raw", vec![&raw, &raw])],
        );
        assert!(
            out.contains("| Measure | Cores busy | All | command-service | PostgreSQL | Kafka broker | fm-bench |\n"),
            "only the kinds that used 2 % of a measure get a column: {out}"
        );
        assert!(
            out.contains("| HTTP | 97 % | 1 501 | 500 | 800 | 0 | 200 |"),
            "{out}"
        );
        assert!(
            out.contains("| raw | 50 % | 100 | 0 | 0 | 60 | 40 |"),
            "{out}"
        );
        let mut none = String::new();
        cpu_table(&mut none, &[("HTTP", vec![&load(1.0, 1.0, 1.0)])]);
        assert!(none.is_empty(), "no census, no table: {none}");
    }

    #[test]
    fn a_spread_shows_the_range_only_when_there_is_one() {
        assert_eq!(spread([2.0, 1.0, 4.0], " ms"), "2.00 ms (1.00–4.00)");
        assert_eq!(spread([1500.0], "/s"), "1 500/s");
        assert_eq!(spread([], "/s"), "–");
    }
}
