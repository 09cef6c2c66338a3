//! A service binary as a child process: started with the test's environment only, its log in a
//! file, its port read from its own `listening` log line (it binds port 0, so no port is ever
//! guessed), ready when `/ready` says so, stopped with SIGTERM like an orchestrator does.

use std::{
    path::{Path, PathBuf},
    process::{ExitStatus, Stdio},
    time::Duration,
};

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

/// A running service process.
#[derive(Debug)]
pub struct ServiceProcess {
    name: String,
    child: Child,
    log: PathBuf,
    url: String,
}

impl ServiceProcess {
    /// Starts `binary` with `env` (and nothing else of this process's `FM_*` environment) on
    /// 127.0.0.1, port 0, logging JSON into `<log_dir>/<name>.log`; returns once it listens.
    pub async fn start(
        name: &str,
        binary: &Path,
        env: &[(&str, String)],
        log_dir: &Path,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(log_dir)?;
        let log = log_dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log)
            .with_context(|| format!("Failed to create {}", log.display()))?;
        let mut command = Command::new(binary);
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            if key.starts_with("FM_") || key.starts_with("OTEL_") || key == "RUST_LOG" {
                command.env_remove(key.as_ref());
            }
        }
        command
            .env("FM_HTTP__HOST", "127.0.0.1")
            .env("FM_HTTP__PORT", "0")
            .env("FM_LOG__FORMAT", "json")
            .env("FM_LOG__FILTER", "info")
            .envs(test_support::no_limits_env())
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .with_context(|| format!("Failed to start {}", binary.display()))?;
        let deadline = tokio::time::Instant::now() + Duration::from_mins(2);
        let port = loop {
            if let Some(port) = listening_port(&log) {
                break port;
            }
            if let Some(status) = child.try_wait()? {
                bail!(
                    "{name} exited ({status}) before it listened; its log: {}",
                    log.display()
                );
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "{name} did not listen within 2 min; its log: {}",
                    log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        Ok(Self {
            name: name.to_owned(),
            child,
            log,
            url: format!("http://127.0.0.1:{port}"),
        })
    }

    /// Its base URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Its name, as given at start.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Whether `GET /ready` answers 200 now.
    pub async fn is_ready(&self, http: &reqwest::Client) -> bool {
        http.get(format!("{}/ready", self.url))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    }

    /// Waits until `GET /ready` answers 200; fails if it exits first or takes over `timeout`.
    pub async fn wait_ready(
        &mut self,
        http: &reqwest::Client,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.is_ready(http).await {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "{} exited ({status}) before it was ready; its log: {}",
                    self.name,
                    self.log.display()
                );
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "{} was not ready within {timeout:?}; its log: {}",
                    self.name,
                    self.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// SIGTERM, as an orchestrator stops it, and waits (at most a minute) for it to exit.
    pub async fn stop(mut self) -> anyhow::Result<ExitStatus> {
        let Some(pid) = self.child.id() else {
            return Ok(self.child.wait().await?);
        };
        // No signal crate in the workspace: `kill` is on every machine this runs on.
        let sent = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await?;
        if !sent.success() {
            bail!("kill -TERM {pid} ({}) failed", self.name);
        }
        if let Ok(status) = tokio::time::timeout(Duration::from_mins(1), self.child.wait()).await {
            return Ok(status?);
        }
        self.child.kill().await?;
        bail!(
            "{} did not exit within a minute of SIGTERM; its log: {}",
            self.name,
            self.log.display()
        )
    }
}

/// The port of the `"<service> listening"` line the start-up logs (`platform::startup`; the JSON
/// format puts an event's fields beside its message).
fn listening_port(log: &Path) -> Option<u16> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|line| {
            line["message"]
                .as_str()
                .is_some_and(|message| message.ends_with(" listening"))
        })
        .and_then(|line| line["port"].as_u64())
        .and_then(|port| u16::try_from(port).ok())
}
