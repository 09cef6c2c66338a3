//! Where a load's CPU time went: a census of every process on the machine (`/proc/<pid>/stat`)
//! before and after, grouped by what the process is, beside how busy all cores were
//! (`/proc/stat`). Two shared cores run the service, PostgreSQL, the broker and the load
//! generator at once, so a figure is bounded by whichever of them needs the CPU; this says
//! which, per request, without a profiler slowing anything down.
//!
//! Clock ticks are converted with the machine's own count: all cores together tick
//! `cores × HZ` times a second, so a process's ticks ÷ all ticks × cores × wall time is its
//! CPU time, whatever `HZ` is.

use std::{
    collections::{BTreeMap, HashMap},
    time::Instant,
};

use serde::{Deserialize, Serialize};

/// The CPU a load used.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct CpuUse {
    /// Busy share of all cores over the load, 0–1.
    pub machine_busy: f64,
    /// CPU seconds by kind of process ([`KINDS`]).
    pub seconds: BTreeMap<String, f64>,
}

/// The kinds of process, in the order a report lists them.
pub(crate) const KINDS: [&str; 10] = [
    COMMAND_SERVICE,
    "query-api",
    "projection-service",
    "saga-runner",
    BARE_SERVER,
    POSTGRES,
    BROKER,
    LOAD,
    "gateway, SMTP",
    OTHER,
];
const COMMAND_SERVICE: &str = "command-service";
const BARE_SERVER: &str = "bare server";
const POSTGRES: &str = "PostgreSQL";
const BROKER: &str = "Kafka broker";
const LOAD: &str = "fm-bench";
const OTHER: &str = "other";

/// What every process had used at one moment.
#[derive(Debug)]
pub(crate) struct Census {
    at: Instant,
    /// `/proc/stat`: busy and all ticks of all cores.
    busy: u64,
    total: u64,
    /// pid → (kind, user + system ticks).
    processes: HashMap<u32, (&'static str, u64)>,
}

impl Census {
    /// Now; `None` where `/proc` cannot be read (not Linux).
    pub(crate) fn take() -> Option<Self> {
        let (busy, total) = machine_ticks()?;
        let me = std::process::id();
        let processes = std::fs::read_dir("/proc")
            .ok()?
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter_map(|pid| {
                let (comm, ticks) = process_ticks(pid)?;
                Some((pid, (kind_of(pid, me, &comm), ticks)))
            })
            .collect();
        Some(Self {
            at: Instant::now(),
            busy,
            total,
            processes,
        })
    }

    /// What was used between this census and now (a process that started since counts all it
    /// used; one that ended since is missed, which a load's long-lived processes are not).
    pub(crate) fn since(&self) -> Option<CpuUse> {
        let now = Self::take()?;
        let all_ticks = now.total.checked_sub(self.total).filter(|t| *t > 0)?;
        #[allow(clippy::cast_precision_loss)] // Ticks of one load, far below 2^52.
        let seconds_per_tick =
            usize_f(cores()) * now.at.duration_since(self.at).as_secs_f64() / all_ticks as f64;
        let mut seconds = BTreeMap::new();
        for (pid, (kind, ticks)) in &now.processes {
            let before = self.processes.get(pid).map_or(0, |(_, t)| *t);
            let used = ticks.saturating_sub(before);
            if used > 0 {
                #[allow(clippy::cast_precision_loss)]
                let used = used as f64 * seconds_per_tick;
                *seconds.entry((*kind).to_owned()).or_insert(0.0) += used;
            }
        }
        #[allow(clippy::cast_precision_loss)]
        let machine_busy = now.busy.saturating_sub(self.busy) as f64 / all_ticks as f64;
        Some(CpuUse {
            machine_busy,
            seconds,
        })
    }
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

#[allow(clippy::cast_precision_loss)] // A core count.
fn usize_f(value: usize) -> f64 {
    value as f64
}

/// Busy and all ticks of all cores (`/proc/stat`'s `cpu` line; idle and I/O wait are not busy).
fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = stat
        .lines()
        .next()?
        .strip_prefix("cpu ")?
        .split_whitespace()
        .take(8) // user nice system idle iowait irq softirq steal (guest is inside user)
        .map(|field| field.parse().ok())
        .collect::<Option<_>>()?;
    let total: u64 = fields.iter().sum();
    let idle = fields.get(3)? + fields.get(4)?;
    Some((total - idle, total))
}

/// A process's name and user + system ticks (all its threads, `/proc/<pid>/stat`).
fn process_ticks(pid: u32) -> Option<(String, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (head, rest) = stat.rsplit_once(')')?;
    let comm = head.split_once('(')?.1.to_owned();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3 of the man page, utime 14 and stime 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((comm, utime + stime))
}

/// What a process is, from its name (at most 15 characters in `/proc`) and, for the ones a name
/// does not tell apart, its command line.
fn kind_of(pid: u32, me: u32, comm: &str) -> &'static str {
    let cmdline = || std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    match comm {
        _ if pid == me => LOAD,
        "command-service" => COMMAND_SERVICE,
        "query-api" => "query-api",
        "projection-serv" => "projection-service",
        "saga-runner" => "saga-runner",
        "postgres" => POSTGRES,
        "fm-bench" if cmdline().contains("bare-server") => BARE_SERVER,
        "fm-bench" => LOAD,
        "java" if cmdline().contains("kafka") => BROKER,
        "gateway-simulat" | "smtp-sink" => "gateway, SMTP",
        _ => OTHER,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_loop_is_counted_against_this_process() {
        let me = std::process::id();
        let ticks = || process_ticks(me).expect("our own /proc stat").1;
        let census = Census::take().expect("/proc is readable");
        let (started, from) = (Instant::now(), ticks());
        // Spin until this process has used 20 ticks (0.2 s at the usual 100 Hz), however busy
        // the machine is.
        let mut x: u64 = 1;
        while ticks() < from + 20 && started.elapsed().as_secs() < 60 {
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1));
            }
        }
        let wall = started.elapsed().as_secs_f64();
        let used = census.since().expect("/proc is readable");
        let mine = used.seconds.get(LOAD).copied().unwrap_or(0.0);
        assert!(
            mine >= 0.1 && mine <= wall * usize_f(cores()) + 0.05,
            "20 ticks of spinning in {wall:.2} s counted as {mine} s of this process's CPU"
        );
        assert!(used.machine_busy > 0.0 && used.machine_busy <= 1.0);
    }

    #[test]
    fn the_process_name_tells_the_kind() {
        let me = std::process::id();
        assert_eq!(kind_of(me, me, "anything"), LOAD);
        assert_eq!(kind_of(1, me, "postgres"), POSTGRES);
        assert_eq!(kind_of(1, me, "projection-serv"), "projection-service");
        assert_eq!(kind_of(1, me, "bash"), OTHER);
        for kind in [COMMAND_SERVICE, POSTGRES, BROKER, LOAD, OTHER] {
            assert!(KINDS.contains(&kind));
        }
    }
}
