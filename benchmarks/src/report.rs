//! `docs/benchmarks.md`, written from a run's results: every figure beside its baseline from
//! the same run, as a ratio, with the machine, the method and how to reproduce it.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::{
    config::Sizes,
    machine::Machine,
    sections::{
        latency::LatencyResults,
        memory::{MemoryPoint, MemoryResults},
        query::QueryResults,
        replay::{ReplayResults, rate},
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
    pub latency: Option<LatencyResults>,
    pub replay: Option<ReplayResults>,
    pub query: Option<QueryResults>,
    pub memory: Option<MemoryResults>,
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

/// Two significant decimals for small figures, whole numbers for large ones.
fn num(value: f64) -> String {
    if value.abs() >= 100.0 {
        int(value)
    } else if value.abs() >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
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

/// Renders the whole page.
pub(crate) fn render(results: &Results) -> String {
    let mut out = String::new();
    header(&mut out, results);
    summary(&mut out, results);
    machine(&mut out, results);
    reproduce(&mut out, results);
    if let Some(write) = &results.write {
        write_section(&mut out, write, &results.sizes);
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
    tansu_section(&mut out);
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
         brackets**. Load average (1, 5, 15 min) at the start {}, at the end {}.\n",
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
            "| Booking commands (`POST /bookings` on the command-service, {} clients) | {} commands/s, {} | raw produce: {} records/s; produce + read back: {} records/s, {} | {} of raw produce; {} of produce + read back |",
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
            "| Replay (projection rebuild of {} events into a fresh database) | {} events/s | raw consume: {} events/s; `INSERT`: {} rows/s; `COPY`: {} rows/s | {} of raw consume; {} of `INSERT`; {} of `COPY` |",
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
    if let Some(m) = &r.memory
        && let Some(largest) = m.points.last()
    {
        {
            let _ = writeln!(
                out,
                "| Memory (RSS) at {} events ({} bookings){} | command-service {} MiB (from a snapshot: {} MiB), projection-service {} MiB, query-api {} MiB | bare axum + sqlx: {} MiB; the events' JSON: {} MiB | command-service {} × the events' JSON |",
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
                num(mib(largest.command_snapshot.memory.rss_kib)),
                num(mib(largest.projection.memory.rss_kib)),
                num(mib(largest.query_api.memory.rss_kib)),
                num(mib(largest.bare.memory.rss_kib)),
                num(mib_bytes(largest.bytes)),
                num(mib(largest.command_replay.memory.rss_kib) / mib_bytes(largest.bytes.max(1))),
            );
        }
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
         | Broker | {} (SQLite storage, its header table indexed by `compose/lib.sh`), one broker, topics of 3 partitions |\n\
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
         compose/bench            # the full run (about an hour or more), rewrites this page\n\
         compose/bench --quick    # a smoke run of every measurement in a few minutes\n\
         ```\n\n\
         `compose/bench` installs what is missing, starts its own throw-away PostgreSQL \
         (127.0.0.1:55472) and Tansu (127.0.0.1:59132, SQLite storage) in a temporary directory, \
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
         settings (`fetch.wait.max.ms=10`) has read its record back, which is what a write does \
         before it answers (`docs/consistency.md`), without HTTP, the token, validation, the \
         domain or the store.\n\n{LOAD_HEAD}",
        s.facilities,
        s.clients,
        int(usize_f(s.booking_requests)),
        w.record_bytes,
        s.clients,
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
         the 202, which the query-api holds until its read model has applied that offset (it \
         checks every 20 ms, `FM_CONSISTENCY__POLL_INTERVAL`). {} bookings per mode and \
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
         **`COPY`**. A replay writes more than one row per event (offsets, payments, \
         facilities, anomaly checks) and reads what it updates, so `COPY` is a floor no \
         projector reaches.\n\n\
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
}

fn memory_section(out: &mut String, m: &MemoryResults) {
    out.push_str(
        "\n## Memory\n\n\
         **Method.** Valid booking stories (as under Replay) are written straight to one set \
         of topics, growing from one size to the next. At each size every service starts from \
         scratch as a process, and its resident memory is read from `/proc/<pid>/status` \
         (`VmRSS` now, `VmHWM` its peak, in brackets) once it has caught up: the \
         projection-service once every end offset is stored in a fresh database; the \
         command-service once `/ready` (its in-memory store has folded the whole log; it keeps \
         a snapshot, as `compose/up` configures it, so it also writes one every 30 s while it \
         reads and once at shutdown), then a second command-service restored from that \
         snapshot; the query-api and the bare server after 5 s of `GET /bookings/{id}` from \
         32 clients on those read models. The events' JSON is the sum of the record payloads.\n\n\
         | Events (bookings) | Events' JSON | projection-service | command-service, replayed | command-service, from its snapshot | query-api | bare axum + sqlx | raw consume of the log |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    let cell = |memory: &crate::procs::Memory, took: Option<f64>| {
        let took = took.map_or_else(String::new, |s| format!("; ready after {s:.1} s"));
        format!(
            "{} MiB ({} MiB{took})",
            num(mib(memory.rss_kib)),
            num(mib(memory.peak_kib))
        )
    };
    for p in &m.points {
        let _ = writeln!(
            out,
            "| {} ({}) | {} MiB | {} | {} | {}, snapshot {} MiB | {} | {} | {} |",
            int(u64_f(p.events)),
            int(usize_f(p.bookings)),
            num(mib_bytes(p.bytes)),
            cell(&p.projection.memory, p.projection.catch_up_s),
            cell(&p.command_replay.memory, p.command_replay.catch_up_s),
            cell(&p.command_snapshot.memory, p.command_snapshot.catch_up_s),
            num(mib_bytes(p.snapshot_bytes)),
            cell(&p.query_api.memory, None),
            cell(&p.bare.memory, None),
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
    for (events, why) in &m.not_measured {
        let _ = writeln!(
            out,
            "\n**Not measured at {} events**: {why}. Figures for that size below are \
             extrapolated from the growth per event above, not measured.",
            int(u64_f(*events))
        );
        if let (Some(first), Some(last)) = (m.points.first(), m.points.last())
            && last.events > first.events
        {
            {
                let at = |f: fn(&MemoryPoint) -> u64| {
                    let slope = (mib(f(last)) - mib(f(first))) / u64_f(last.events - first.events);
                    mib(f(first)) + slope * u64_f(*events)
                };
                let _ = writeln!(
                    out,
                    "Extrapolated RSS at {} events: command-service {} MiB, projection-service {} MiB.",
                    int(u64_f(*events)),
                    num(at(|p| p.command_replay.memory.rss_kib)),
                    num(at(|p| p.projection.memory.rss_kib)),
                );
            }
        }
    }
}

fn growth(out: &mut String, m: &MemoryResults) {
    let (Some(first), Some(last)) = (m.points.first(), m.points.last()) else {
        return;
    };
    if last.events <= first.events {
        return;
    }
    let events = u64_f(last.events - first.events);
    let bookings = usize_f(last.bookings - first.bookings);
    let per = |f: fn(&MemoryPoint) -> u64| {
        let grown = (mib(f(last)) - mib(f(first))) * 1024.0 * 1024.0;
        (grown / events, grown / bookings.max(1.0))
    };
    let _ = write!(
        out,
        "\nGrowth from {} to {} events, in bytes of RSS per event (per booking story):",
        int(u64_f(first.events)),
        int(u64_f(last.events))
    );
    for (name, f) in [
        (
            "command-service",
            (|p: &MemoryPoint| p.command_replay.memory.rss_kib) as fn(&MemoryPoint) -> u64,
        ),
        ("command-service from its snapshot", |p| {
            p.command_snapshot.memory.rss_kib
        }),
        ("projection-service", |p| p.projection.memory.rss_kib),
        ("query-api", |p| p.query_api.memory.rss_kib),
    ] {
        let (per_event, per_booking) = per(f);
        let _ = write!(out, " {name} {} ({});", int(per_event), int(per_booking));
    }
    let json_per_event = u64_f(last.bytes - first.bytes) / events;
    let _ = writeln!(
        out,
        " for scale, the events' JSON is {} bytes per event. The command-service holds every \
         aggregate's state and version and the idempotency index in memory \
         (`docs/consistency.md`), so it grows with the log. The projection-service keeps its \
         state in PostgreSQL; what it holds while it catches up is buffers: librdkafka \
         pre-fetches records into its queue while the consumer is behind (up to \
         `queued.max.messages.kbytes`, 64 MiB by default) and a batch of up to 500 records, \
         and the allocator keeps some of what it freed (the peak in brackets). The query-api \
         holds no state of the log at all.",
        int(json_per_event)
    );
}

fn tansu_section(out: &mut String) {
    out.push_str(
        "\n## The broker's read path\n\n\
         (Found while building this suite, on 2026-11-25, with `fm-bench seed` and `fm-bench \
         consume`; these figures are from that investigation, not from each run.) Until then, \
         a consumer starting at offset 0 on Tansu stalled once a partition held a few thousand \
         records, and replays ran at about 1 000 events/s. The cause was \
         Tansu 0.6's SQLite schema: its `header` table has no index on `(topition, \
         offset_id)`, and a fetch looks up the headers of each record it returns with one \
         query, which therefore scans every header the broker holds (14 ms per record with \
         20 000 records in the broker, growing with everything ever written). A fetch of a few \
         thousand records outlived the client's timeout, was retried, and never finished. \
         `compose/lib.sh` now creates that index when it starts Tansu (`index_tansu_headers`): \
         the same 20 000 records are read from offset 0 in under 2 s, and the figures above are \
         measured with it. Client settings were tried first and do not help: with \
         `fetch.max.bytes` of 64 or 256 KiB the consumer no longer stalls but reads ~70 \
         records/s (every record still scans the table), and with the index smaller fetches are \
         slower than the default (each fetch also re-scans the rest of its partition to size \
         its answer), so the services' Kafka settings are unchanged. The broker still answers \
         every fetch only when its wait (`FM_KAFKA__FETCH_WAIT`, 10 ms) expires, which bounds \
         the read-back part of every write (`docs/consistency.md`).\n",
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_have_spaces_between_thousands() {
        assert_eq!(int(1_234_567.4), "1 234 567");
        assert_eq!(int(999.0), "999");
        assert_eq!(int(-12_000.0), "-12 000");
    }

    #[test]
    fn a_spread_shows_the_range_only_when_there_is_one() {
        assert_eq!(spread([2.0, 1.0, 4.0], " ms"), "2.00 ms (1.00–4.00)");
        assert_eq!(spread([1500.0], "/s"), "1 500/s");
        assert_eq!(spread([], "/s"), "–");
    }
}
