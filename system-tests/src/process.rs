//! A service binary as a child process (`stack::process`): started with exactly the environment
//! the test gives it (`stack::env` of the test's facts, `test_support::stack_facts`), its log in
//! a file, its port read from its own `listening` log line (it binds port 0, so no port is ever
//! guessed), ready when `/ready` says so, stopped with SIGTERM like an orchestrator does.

use std::{
    path::{Path, PathBuf},
    process::ExitStatus,
    time::Duration,
};

use anyhow::bail;
use stack::{Env, process::Process};

/// A running service process.
#[derive(Debug)]
pub struct ServiceProcess {
    process: Process,
    log: PathBuf,
    url: String,
}

impl ServiceProcess {
    /// Starts `binary` with `env` (and nothing else of this process's `FM_*` environment; give
    /// it port 0), logging into `<log_dir>/<name>.log`; returns once it listens.
    pub async fn start(
        name: &str,
        binary: &Path,
        env: &Env,
        log_dir: &Path,
    ) -> anyhow::Result<Self> {
        let log = log_dir.join(format!("{name}.log"));
        let mut process = Process::spawn(name, binary, &[], env, &log, false)?;
        let port = process.wait_listening(Duration::from_mins(2)).await?;
        Ok(Self {
            process,
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
        self.process.name()
    }

    /// Its log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Whether `GET /ready` answers 200 now.
    pub async fn is_ready(&self, http: &reqwest::Client) -> bool {
        self.process.is_ready(http).await
    }

    /// Waits until `GET /ready` answers 200; fails if it exits first or takes over `timeout`.
    pub async fn wait_ready(
        &mut self,
        http: &reqwest::Client,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        self.process.wait_ready(http, timeout).await?;
        Ok(())
    }

    /// SIGTERM, as an orchestrator stops it, and waits (at most a minute) for it to exit.
    pub async fn stop(self) -> anyhow::Result<ExitStatus> {
        let name = self.process.name().to_owned();
        match self.process.stop(Duration::from_mins(1)).await? {
            Some(status) => Ok(status),
            None => bail!(
                "{name} did not exit within a minute of SIGTERM; its log: {}",
                self.log.display()
            ),
        }
    }
}
