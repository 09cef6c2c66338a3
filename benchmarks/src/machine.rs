//! What the figures were measured on: the machine, the broker, PostgreSQL and the code.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Machine {
    pub cpu_model: String,
    /// Logical CPUs this process may run on.
    pub cores: usize,
    pub ram_gib: f64,
    pub kernel: String,
    pub arch: String,
    pub broker: String,
    pub postgres: String,
    pub git_commit: String,
    /// Paths with uncommitted changes when the run was built (empty: a clean tree).
    pub git_dirty: Vec<String>,
    pub rustc: String,
}

impl Machine {
    /// Reads `/proc` and the variables `compose/bench` sets (`FM_BENCH_BROKER_VERSION`,
    /// `FM_BENCH_GIT_COMMIT`, `FM_BENCH_GIT_DIRTY`, `FM_BENCH_RUSTC`).
    pub(crate) fn read(postgres: String) -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|line| line.strip_prefix("model name"))
            .and_then(|rest| rest.split_once(':'))
            .map_or_else(
                || "unknown".to_owned(),
                |(_, model)| model.trim().to_owned(),
            );
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        #[allow(clippy::cast_precision_loss)] // KiB of RAM, far below 2^52.
        let ram_gib = meminfo
            .lines()
            .find_map(|line| line.strip_prefix("MemTotal:"))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map_or(0.0, |kib| kib as f64 / 1024.0 / 1024.0);
        let var = |name: &str| std::env::var(name).unwrap_or_else(|_| "unknown".to_owned());
        Self {
            cpu_model,
            cores: std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
            ram_gib,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map_or_else(|_| "unknown".to_owned(), |k| k.trim().to_owned()),
            arch: std::env::consts::ARCH.to_owned(),
            broker: var("FM_BENCH_BROKER_VERSION"),
            postgres,
            git_commit: var("FM_BENCH_GIT_COMMIT"),
            git_dirty: std::env::var("FM_BENCH_GIT_DIRTY")
                .unwrap_or_default()
                .split_whitespace()
                .map(str::to_owned)
                .collect(),
            rustc: var("FM_BENCH_RUSTC"),
        }
    }
}

/// The 1, 5 and 15 minute load averages: how busy the shared machine was.
pub(crate) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg").map_or_else(
        |_| "unknown".to_owned(),
        |text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        },
    )
}
