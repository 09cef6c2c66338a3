//! A service binary as a child process: started with the environment [`crate::env`] describes
//! (and nothing of the caller's `FM_*`, `OTEL_*` or `RUST_LOG`), its output in a log file, ready
//! when `GET /ready` answers 200, stopped with SIGTERM as an orchestrator stops it. A service
//! given port 0 binds a port the system picks; [`Process::wait_listening`] reads it from the
//! service's own `listening` log line, so no port is ever guessed.

use std::{
    path::{Path, PathBuf},
    process::{ExitStatus, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

use crate::Env;

/// How often readiness and the listening line are polled.
const POLL: Duration = Duration::from_millis(20);

/// A started process; killed if dropped without [`Process::stop`].
#[derive(Debug)]
pub struct Process {
    name: String,
    port: u16,
    started: Instant,
    log: PathBuf,
    child: Child,
}

impl Process {
    /// Starts `binary` with `args` and `env` on top of this process's environment minus every
    /// `FM_*`, `OTEL_*` and `RUST_LOG`, stdin from /dev/null, stdout and stderr into `log`
    /// (appended with `append`, else truncated). Its port is `env`'s `FM_HTTP__PORT` (0 until
    /// [`Self::wait_listening`] when that is 0 or missing).
    pub fn spawn(
        name: &str,
        binary: &Path,
        args: &[&str],
        env: &Env,
        log: &Path,
        append: bool,
    ) -> anyhow::Result<Self> {
        if let Some(dir) = log.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("Failed to create {}", dir.display()))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(log)
            .with_context(|| format!("Failed to open {}", log.display()))?;
        let mut command = Command::new(binary);
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            if key.starts_with("FM_") || key.starts_with("OTEL_") || key == "RUST_LOG" {
                command.env_remove(key.as_ref());
            }
        }
        command
            .args(args)
            .envs(env)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .kill_on_drop(true);
        let started = Instant::now();
        let child = command
            .spawn()
            .with_context(|| format!("Failed to start {}", binary.display()))?;
        let port = env
            .get("FM_HTTP__PORT")
            .and_then(|port| port.parse().ok())
            .unwrap_or(0);
        Ok(Self {
            name: name.to_owned(),
            port,
            started,
            log: log.to_owned(),
            child,
        })
    }

    /// Its name, as given at start.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its HTTP port (0 while a port-0 service has not been seen listening).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its base URL, `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Its log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// When it was started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> anyhow::Result<u32> {
        self.child
            .id()
            .with_context(|| format!("{} has exited", self.name))
    }

    /// Waits until the service logs its `listening` line (`platform::startup`) and takes its
    /// port from it; fails if it exits first or takes over `timeout`.
    pub async fn wait_listening(&mut self, timeout: Duration) -> anyhow::Result<u16> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(port) = listening_port(&self.log) {
                self.port = port;
                return Ok(port);
            }
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "{} exited ({status}) before it listened; its log: {}",
                    self.name,
                    self.log.display()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not listen within {timeout:?}; its log: {}",
                    self.name,
                    self.log.display()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Whether `GET /ready` answers 200 now.
    pub async fn is_ready(&self, http: &reqwest::Client) -> bool {
        http.get(format!("{}/ready", self.url()))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .is_ok_and(|r| r.status() == reqwest::StatusCode::OK)
    }

    /// Waits until `GET /ready` answers 200 (for the command-service: its store has caught up
    /// with the log as it was at its start); returns how long after the start. Fails if it
    /// exits first or takes over `timeout`.
    pub async fn wait_ready(
        &mut self,
        http: &reqwest::Client,
        timeout: Duration,
    ) -> anyhow::Result<Duration> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "{} exited ({status}) before it was ready; its log: {}",
                    self.name,
                    self.log.display()
                );
            }
            if self.is_ready(http).await {
                return Ok(self.started.elapsed());
            }
            if Instant::now() > deadline {
                bail!(
                    "{} was not ready within {timeout:?}; its log: {}",
                    self.name,
                    self.log.display()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Fails if the process has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited with {status}", self.name);
        }
        Ok(())
    }

    /// SIGKILL, and waits until it is gone.
    pub async fn kill(mut self) -> anyhow::Result<()> {
        self.child.kill().await?;
        Ok(())
    }

    /// Waits up to `timeout` for it to exit on its own: its status, or the process back.
    pub async fn wait_exit(mut self, timeout: Duration) -> Result<ExitStatus, Self> {
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(Ok(status)) => Ok(status),
            _ => Err(self),
        }
    }

    /// SIGTERM, then waits up to `grace` for it to exit: its status, or `None` when it had to
    /// be killed (SIGKILL) after `grace`.
    pub async fn stop(mut self, grace: Duration) -> anyhow::Result<Option<ExitStatus>> {
        let Some(pid) = self.child.id() else {
            return Ok(Some(self.child.wait().await?));
        };
        // No signal crate in the workspace: `kill` is on every machine this runs on.
        let sent = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await?;
        if !sent.success() {
            bail!("kill -TERM {pid} ({}) failed", self.name);
        }
        if let Ok(status) = tokio::time::timeout(grace, self.child.wait()).await {
            return Ok(Some(status?));
        }
        self.child.kill().await?;
        Ok(None)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_port_of_the_listening_line() {
        let dir = std::env::temp_dir().join(format!("fm-stack-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let log = dir.join("svc.log");
        std::fs::write(
            &log,
            "not json\n{\"message\":\"starting\",\"port\":1}\n{\"message\":\"query-api listening\",\"port\":41234}\n",
        )
        .expect("write the log");
        assert_eq!(listening_port(&log), Some(41234));
        std::fs::write(&log, "{\"message\":\"starting\"}\n").expect("write the log");
        assert_eq!(listening_port(&log), None);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn stops_a_process_and_reports_an_early_exit() {
        let dir = std::env::temp_dir().join(format!("fm-stack-proc-{}", std::process::id()));
        let mut env = Env::new();
        env.insert("FM_HTTP__PORT".to_owned(), "1".to_owned());
        let sleeper = Process::spawn(
            "sleeper",
            Path::new("sleep"),
            &["30"],
            &env,
            &dir.join("sleeper.log"),
            false,
        )
        .expect("sleep starts");
        assert_eq!(sleeper.port(), 1);
        let status = sleeper.stop(Duration::from_secs(5)).await.expect("stopped");
        assert!(status.is_some_and(|status| !status.success()));

        let mut quitter = Process::spawn(
            "quitter",
            Path::new("true"),
            &[],
            &Env::new(),
            &dir.join("quitter.log"),
            false,
        )
        .expect("true starts");
        let error = quitter
            .wait_ready(&reqwest::Client::new(), Duration::from_secs(5))
            .await
            .expect_err("it exits before it is ready");
        assert!(error.to_string().contains("quitter exited"), "{error}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
