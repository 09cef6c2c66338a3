//! The services as real processes (the release binaries, started by `stack::process` with the
//! environment `stack::env` describes), their readiness and their memory.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// How long a service may take to answer `/ready` when it has no log to catch up with.
pub(crate) const READY_WITHIN: Duration = Duration::from_mins(1);

/// A started process; killed if dropped without [`Process::stop`].
#[derive(Debug)]
pub(crate) struct Process {
    pub name: String,
    pub started: Instant,
    inner: stack::process::Process,
}

impl Process {
    /// Starts `binary` with `env` (on top of this process's environment, minus every `FM_*`
    /// and OpenTelemetry variable, so that only what the run sets reaches the service), its
    /// output appended to `<log_dir>/<name>.log`.
    pub(crate) fn spawn(
        name: &str,
        binary: &Path,
        args: &[&str],
        env: &stack::Env,
        log_dir: &Path,
    ) -> anyhow::Result<Self> {
        let log = log_dir.join(format!("{name}.log"));
        let inner = stack::process::Process::spawn(name, binary, args, env, &log, true)?;
        Ok(Self {
            name: name.to_owned(),
            started: inner.started(),
            inner,
        })
    }

    pub(crate) fn base(&self) -> String {
        self.inner.url()
    }

    /// Waits until `GET /ready` answers 200 (for the command-service: its store has caught up
    /// with the log as it was at its start); returns how long after the start.
    pub(crate) async fn wait_ready(
        &mut self,
        http: &reqwest::Client,
        timeout: Duration,
    ) -> anyhow::Result<Duration> {
        self.inner.wait_ready(http, timeout).await
    }

    /// Fails if the process has exited.
    pub(crate) fn check_alive(&mut self) -> anyhow::Result<()> {
        self.inner.check_alive()
    }

    /// Resident memory now and at its peak.
    pub(crate) fn memory(&self) -> anyhow::Result<Memory> {
        Memory::of(self.inner.pid()?)
    }

    /// SIGTERM, then SIGKILL after 20 s.
    pub(crate) async fn stop(self) -> anyhow::Result<()> {
        self.inner.stop(Duration::from_secs(20)).await?;
        Ok(())
    }
}

/// A process's memory from `/proc/<pid>/status`, in KiB.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub(crate) struct Memory {
    /// `VmRSS`: resident now.
    pub rss_kib: u64,
    /// `VmHWM`: the most it has been resident.
    pub peak_kib: u64,
}

impl Memory {
    pub(crate) fn of(pid: u32) -> anyhow::Result<Self> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("Failed to read /proc/{pid}/status"))?;
        let field = |name: &str| -> anyhow::Result<u64> {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
                .with_context(|| format!("no {name} in /proc/{pid}/status"))
        };
        Ok(Self {
            rss_kib: field("VmRSS:")?,
            peak_kib: field("VmHWM:")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process_memory() {
        let memory = Memory::of(std::process::id()).expect("our own /proc status");
        assert!(memory.rss_kib > 0);
        assert!(memory.peak_kib >= memory.rss_kib);
    }
}
