//! The services as real processes (the release binaries), their readiness and their memory.

use std::{
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use tokio::process::{Child, Command};

/// How long a service may take to answer `/ready` when it has no log to catch up with.
pub(crate) const READY_WITHIN: Duration = Duration::from_mins(1);

/// A started process; killed if dropped without [`Process::stop`].
#[derive(Debug)]
pub(crate) struct Process {
    pub name: String,
    pub port: u16,
    pub started: Instant,
    child: Child,
}

impl Process {
    /// Starts `binary` with `env` (on top of this process's environment, minus every `FM_*`
    /// and OpenTelemetry variable, so that only what the run sets reaches the service), its
    /// output appended to `<log_dir>/<name>.log`.
    pub(crate) fn spawn(
        name: &str,
        binary: &Path,
        args: &[&str],
        port: u16,
        env: &[(&str, String)],
        log_dir: &Path,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(log_dir)?;
        let log_path = log_dir.join(format!("{name}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("Failed to open {}", log_path.display()))?;
        let mut command = Command::new(binary);
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            if key.starts_with("FM_") || key.starts_with("OTEL_") || key == "RUST_LOG" {
                command.env_remove(key.as_ref());
            }
        }
        command
            .args(args)
            .env("FM_HTTP__HOST", "127.0.0.1")
            .env("FM_HTTP__PORT", port.to_string())
            .env("FM_LOG__FORMAT", "json")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        let started = Instant::now();
        let child = command
            .spawn()
            .with_context(|| format!("Failed to start {}", binary.display()))?;
        Ok(Self {
            name: name.to_owned(),
            port,
            started,
            child,
        })
    }

    pub(crate) fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub(crate) fn pid(&self) -> anyhow::Result<u32> {
        self.child
            .id()
            .with_context(|| format!("{} has exited", self.name))
    }

    /// Waits until `GET /ready` answers 200 (for the command-service: its store has caught up
    /// with the log as it was at its start); returns how long after the start.
    pub(crate) async fn wait_ready(
        &mut self,
        http: &reqwest::Client,
        timeout: Duration,
    ) -> anyhow::Result<Duration> {
        let url = format!("{}/ready", self.base());
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("{} exited with {status} before it was ready", self.name);
            }
            let answer = http.get(&url).timeout(Duration::from_secs(5)).send().await;
            if answer.is_ok_and(|r| r.status() == reqwest::StatusCode::OK) {
                return Ok(self.started.elapsed());
            }
            if Instant::now() > deadline {
                bail!("{} was not ready within {timeout:?}", self.name);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Fails if the process has exited.
    pub(crate) fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited with {status}", self.name);
        }
        Ok(())
    }

    /// Resident memory now and at its peak.
    pub(crate) fn memory(&self) -> anyhow::Result<Memory> {
        Memory::of(self.pid()?)
    }

    /// SIGTERM, then SIGKILL after 20 s.
    pub(crate) async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(pid) = self.child.id() {
            // No signal crate in the workspace: `kill` is on every machine this runs on.
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
            if tokio::time::timeout(Duration::from_secs(20), self.child.wait())
                .await
                .is_err()
            {
                self.child.kill().await?;
            }
        }
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
