//! [`SagaStack`]: the whole booking flow for a test — the three services in-process
//! ([`TestStack`]), the gateway [`Simulator`], an [`SmtpSink`], and the saga runner as a real
//! **process** (its binary path comes from the test, `env!("CARGO_BIN_EXE_saga-runner")`), so a
//! test can SIGKILL it and start it again on the same database and topics. A test may add more
//! runner processes on the same database ([`SagaStack::add_runner`]), as a deployment with
//! several replicas has.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, bail};
use chrono::{Duration as Days, NaiveTime, TimeZone, Utc};
use schemas::Role;
use serde_json::Value;
use sqlx::{Connection, PgConnection};
use stack::process::Process;
use uuid::Uuid;

use crate::{TestStack, bodies, simulator::Simulator, smtp_sink::SmtpSink};

/// How the runner is configured, beyond where everything is.
#[derive(Debug, Clone)]
pub struct SagaOptions {
    /// `FM_SAGA__CAPTURE_DEADLINE`.
    pub capture_deadline: Duration,
    /// `FM_GATEWAY__REQUEST_TIMEOUT`.
    pub gateway_timeout: Duration,
    /// `FM_BREAKER__FAILURE_THRESHOLD` and `FM_BREAKER__COOL_DOWN`.
    pub breaker_threshold: u32,
    pub breaker_cool_down: Duration,
    /// `FM_SAGA__CONCURRENCY`.
    pub concurrency: usize,
    /// `FM_SAGA__SETTLE_WINDOW`: how long after its last capture request a lookup that finds
    /// nothing is believed; by default the gateway timeout and 2 s more (the runner requires it
    /// to be longer than the gateway timeout).
    pub settle_window: Option<Duration>,
    /// More settings for the runner (`FM_PRIVACY__ERASE_AFTER`, ...), set last.
    pub env: Vec<(String, String)>,
}

impl Default for SagaOptions {
    fn default() -> Self {
        Self {
            capture_deadline: Duration::from_secs(20),
            gateway_timeout: Duration::from_millis(1500),
            breaker_threshold: 5,
            breaker_cool_down: Duration::from_secs(2),
            concurrency: 16,
            settle_window: None,
            env: Vec::new(),
        }
    }
}

/// Everything the booking flow needs, running.
#[derive(Debug)]
pub struct SagaStack {
    pub stack: TestStack,
    pub simulator: Simulator,
    pub sink: SmtpSink,
    /// The first runner's base URL (its port stays the same across restarts).
    pub saga_url: String,
    /// What the next `start_runner` uses (a test may change it between restarts).
    pub options: SagaOptions,
    binary: PathBuf,
    /// Runner 0 is the first; [`Self::add_runner`] adds more. Each keeps its port.
    runners: Vec<RunnerProcess>,
    log_dir: PathBuf,
    starts: u32,
}

/// A finished saga as [`SagaStack::wait_all_done`] returns it.
#[derive(Debug, Clone)]
pub struct FinishedSaga {
    pub booking_id: Uuid,
    /// Every pass, as the runner recorded it (`step`, `outcome`, `began`, `at`, `runner`).
    pub history: Value,
    /// The booking's final status in the saga's facts.
    pub status: String,
}

/// One saga-runner process of the stack: its port, and the process while it runs.
#[derive(Debug)]
struct RunnerProcess {
    port: u16,
    process: Option<Process>,
}

impl SagaStack {
    /// Starts everything and waits until the runner is ready.
    pub async fn spawn(binary: &Path, options: SagaOptions) -> anyhow::Result<Self> {
        Self::spawn_with(TestStack::spawn().await?, binary, options).await
    }

    /// As [`Self::spawn`], around services already started (e.g. [`TestStack::spawn_on`] a
    /// broker of the test's own).
    pub async fn spawn_with(
        stack: TestStack,
        binary: &Path,
        options: SagaOptions,
    ) -> anyhow::Result<Self> {
        let simulator = Simulator::spawn().await?;
        let sink = SmtpSink::start().await?;
        let port = free_port()?;
        let log_dir = std::env::temp_dir().join(format!("fm-saga-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&log_dir)?;
        let mut saga = Self {
            stack,
            simulator,
            sink,
            saga_url: format!("http://127.0.0.1:{port}"),
            binary: binary.to_owned(),
            options,
            runners: vec![RunnerProcess {
                port,
                process: None,
            }],
            log_dir,
            starts: 0,
        };
        saga.start_runner(None).await?;
        Ok(saga)
    }

    /// Starts the (first) runner process (again). With `crash_after`, the process SIGKILLs
    /// itself right after performing that step's effect, before recording it.
    pub async fn start_runner(&mut self, crash_after: Option<&str>) -> anyhow::Result<()> {
        self.start_runner_at(0, crash_after).await
    }

    /// Starts one more runner process on the same database, topics and services, on a port of
    /// its own, and waits until it is ready; returns its number for
    /// [`Self::kill_runner_at`], [`Self::start_runner_at`] and [`Self::runner_url`].
    pub async fn add_runner(&mut self) -> anyhow::Result<usize> {
        self.runners.push(RunnerProcess {
            port: free_port()?,
            process: None,
        });
        let index = self.runners.len() - 1;
        self.start_runner_at(index, None).await?;
        Ok(index)
    }

    /// The base URL of runner `index`.
    pub fn runner_url(&self, index: usize) -> Option<String> {
        self.runners
            .get(index)
            .map(|runner| format!("http://127.0.0.1:{}", runner.port))
    }

    /// Starts runner `index` (again); see [`Self::start_runner`].
    pub async fn start_runner_at(
        &mut self,
        index: usize,
        crash_after: Option<&str>,
    ) -> anyhow::Result<()> {
        let Some(runner) = self.runners.get(index) else {
            bail!("there is no runner {index}");
        };
        if runner.process.is_some() {
            bail!("runner {index} is already running");
        }
        let port = runner.port;
        self.starts += 1;
        let log = self
            .log_dir
            .join(format!("runner{index}-{}.log", self.starts));
        let facts = stack::Facts {
            database_url: Some(self.stack.database_url.clone()),
            brokers: Some(self.stack.kafka.brokers.clone()),
            topic_prefix: Some(self.stack.kafka.topic_prefix.clone()),
            command_url: Some(self.stack.command_url.clone()),
            gateway_url: Some(self.simulator.url()),
            smtp: Some(("127.0.0.1".to_owned(), self.sink.port())),
            ..test_support::stack_facts()
        };
        let mut env = stack::env(
            &facts,
            &stack::Instance::new(stack::Service::SagaRunner, port),
        );
        let options = &self.options;
        let settle_window = options
            .settle_window
            .unwrap_or(options.gateway_timeout + Duration::from_secs(2));
        env.extend(
            [
                (
                    "FM_SAGA__CAPTURE_DEADLINE",
                    millis(options.capture_deadline),
                ),
                ("FM_SAGA__CONCURRENCY", options.concurrency.to_string()),
                ("FM_SAGA__SETTLE_WINDOW", millis(settle_window)),
                ("FM_SAGA__AWAIT_EVENT", "1500".to_owned()),
                ("FM_SAGA__POLL_INTERVAL", "200".to_owned()),
                (
                    "FM_GATEWAY__REQUEST_TIMEOUT",
                    millis(options.gateway_timeout),
                ),
                ("FM_GATEWAY__CONNECT_TIMEOUT", "500".to_owned()),
                (
                    "FM_BREAKER__FAILURE_THRESHOLD",
                    options.breaker_threshold.to_string(),
                ),
                ("FM_BREAKER__COOL_DOWN", millis(options.breaker_cool_down)),
                ("FM_BACKOFF__BASE", "100".to_owned()),
                ("FM_BACKOFF__MAX", "1000".to_owned()),
            ]
            .map(|(key, value)| (key.to_owned(), value)),
        );
        if let Some(step) = crash_after {
            env.insert("FM_SAGA__CRASH_AFTER".to_owned(), step.to_owned());
        }
        // A test's own settings for the runner (`SagaOptions::env`) come last.
        env.extend(options.env.iter().cloned());
        let mut process = Process::spawn(
            &format!("saga runner {index}"),
            &self.binary,
            &[],
            &env,
            &log,
            false,
        )
        .context("Failed to start the saga runner")?;
        let ready = process
            .wait_ready(&self.stack.http, Duration::from_secs(30))
            .await;
        self.runners[index].process = Some(process);
        ready.map(|_| ())
    }

    /// SIGKILLs the (first) runner and waits until it is gone.
    pub async fn kill_runner(&mut self) -> anyhow::Result<()> {
        self.kill_runner_at(0).await
    }

    /// SIGKILLs runner `index` and waits until it is gone.
    pub async fn kill_runner_at(&mut self, index: usize) -> anyhow::Result<()> {
        if let Some(process) = self.runners.get_mut(index).and_then(|r| r.process.take()) {
            process.kill().await?;
        }
        Ok(())
    }

    /// Waits for the runner to exit on its own (a crash point), and says how it ended.
    pub async fn wait_runner_exit(
        &mut self,
        timeout: Duration,
    ) -> anyhow::Result<std::process::ExitStatus> {
        let Some(process) = self.runners[0].process.take() else {
            bail!("the runner is not running");
        };
        match process.wait_exit(timeout).await {
            Ok(status) => Ok(status),
            Err(process) => {
                self.runners[0].process = Some(process);
                bail!("the runner did not exit within {timeout:?}")
            }
        }
    }

    /// Where the runner's logs are.
    pub fn log_dir(&self) -> &Path {
        &self.log_dir
    }

    /// A director's token.
    pub async fn director(&self) -> String {
        self.stack.token(Role::Director, "director-1").await
    }

    /// An ops token.
    pub async fn ops(&self) -> String {
        self.stack.token(Role::Ops, "ops-1").await
    }

    /// Registers the standard chapel (open 08:00–20:00 every day, 30-minute turnaround).
    pub async fn register_facility(&self) -> anyhow::Result<Uuid> {
        let response = self
            .stack
            .http
            .post(format!("{}/facilities", self.stack.command_url))
            .bearer_auth(self.director().await)
            .json(&bodies::facility())
            .send()
            .await?;
        let status = response.status();
        let body: Value = response.json().await?;
        if status.as_u16() != 201 {
            bail!("registering a facility answered {status}: {body}");
        }
        id_of(&body, "facility_id")
    }

    /// Requests a one-hour booking `days_ahead` days from now in slot `index` of that day
    /// (0..8: 08:00, 09:30, ... 18:30 London time, so no two indexes overlap), for a total of
    /// `amount_minor` pence (the home's list, and a director's adjustment to that total).
    pub async fn request_booking(
        &self,
        facility: Uuid,
        days_ahead: i64,
        index: u32,
        amount_minor: i64,
    ) -> anyhow::Result<Uuid> {
        let body = booking_body(facility, days_ahead, index, amount_minor);
        let response = self
            .stack
            .http
            .post(format!("{}/bookings", self.stack.command_url))
            .bearer_auth(self.director().await)
            .json(&body)
            .send()
            .await?;
        let status = response.status();
        let body: Value = response.json().await?;
        if status.as_u16() != 202 {
            bail!("requesting a booking answered {status}: {body}");
        }
        id_of(&body, "booking_id")
    }

    /// Cancels a booking as the director.
    pub async fn cancel(&self, booking: Uuid) -> anyhow::Result<()> {
        let response = self
            .stack
            .http
            .post(format!(
                "{}/bookings/{booking}/cancel",
                self.stack.command_url
            ))
            .bearer_auth(self.director().await)
            .json(&serde_json::json!({"reason": "The family changed their plans"}))
            .send()
            .await?;
        if !response.status().is_success() {
            let status = response.status();
            bail!("cancel answered {status}: {}", response.text().await?);
        }
        Ok(())
    }

    /// The runner's view of one saga (`GET /sagas/{id}`), or `None` before it exists.
    pub async fn saga(&self, booking: Uuid) -> anyhow::Result<Option<Value>> {
        let response = self
            .stack
            .http
            .get(format!("{}/sagas/{booking}", self.saga_url))
            .bearer_auth(self.ops().await)
            .send()
            .await?;
        match response.status().as_u16() {
            200 => Ok(Some(response.json().await?)),
            404 => Ok(None),
            status => bail!("GET /sagas/{booking} answered {status}"),
        }
    }

    /// The runner's list of sagas under `filter` (`in_flight`, `stuck`, ...).
    pub async fn sagas(&self, filter: &str) -> anyhow::Result<Value> {
        let response = self
            .stack
            .http
            .get(format!(
                "{}/sagas?filter={filter}&limit=1000",
                self.saga_url
            ))
            .bearer_auth(self.ops().await)
            .send()
            .await?;
        if !response.status().is_success() {
            bail!("GET /sagas answered {}", response.status());
        }
        Ok(response.json().await?)
    }

    /// Waits until the booking's saga is done; returns its view.
    pub async fn wait_done(&self, booking: Uuid, timeout: Duration) -> anyhow::Result<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let saga = self.saga(booking).await.ok().flatten();
            if let Some(saga) = &saga
                && saga["done"] == Value::Bool(true)
            {
                return Ok(saga.clone());
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "the saga of {booking} was not done within {timeout:?}: {}; runner log in {}",
                    saga.map_or_else(|| "no saga".to_owned(), |s| s.to_string()),
                    self.log_dir.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until `expected` sagas exist and every one is done, reading the runner's table
    /// directly; returns each one's booking id, history and final status.
    pub async fn wait_all_done(
        &self,
        expected: usize,
        timeout: Duration,
    ) -> anyhow::Result<Vec<FinishedSaga>> {
        let mut db = PgConnection::connect(&self.stack.database_url).await?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let rows: Vec<(Uuid, bool, Value, Option<String>)> = sqlx::query_as(
                "SELECT booking_id, done, history, facts ->> 'status' FROM saga.sagas",
            )
            .fetch_all(&mut db)
            .await?;
            let finished = rows.iter().filter(|(_, done, ..)| *done).count();
            if finished == expected && rows.len() == expected {
                return Ok(rows
                    .into_iter()
                    .map(|(booking_id, _, history, status)| FinishedSaga {
                        booking_id,
                        history,
                        status: status.unwrap_or_default(),
                    })
                    .collect());
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "{finished}/{expected} sagas done within {timeout:?}; runner logs in {}",
                    self.log_dir.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The booking as the query-api shows it, once its status is `status` (waits up to 15 s).
    pub async fn booking_with_status(&self, booking: Uuid, status: &str) -> anyhow::Result<Value> {
        self.booking_with_status_within(booking, status, Duration::from_secs(15))
            .await
    }

    /// The booking as the query-api shows it, once its status is `status`.
    pub async fn booking_with_status_within(
        &self,
        booking: Uuid,
        status: &str,
        timeout: Duration,
    ) -> anyhow::Result<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let response = self
                .stack
                .http
                .get(format!("{}/bookings/{booking}", self.stack.query_url))
                .bearer_auth(self.director().await)
                .send()
                .await?;
            let body: Value = if response.status().is_success() {
                response.json().await?
            } else {
                Value::Null
            };
            if body["status"] == status {
                return Ok(body);
            }
            if tokio::time::Instant::now() > deadline {
                bail!("booking {booking} did not reach {status}: {body}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The mails the sink holds for a booking, by Message-ID.
    pub fn mails_for(&self, booking: Uuid) -> Vec<String> {
        let suffix = format!(".{booking}@funeral-manager>");
        self.sink
            .messages()
            .into_iter()
            .map(|mail| mail.message_id)
            .filter(|id| id.ends_with(&suffix))
            .collect()
    }
}

impl Drop for SagaStack {
    fn drop(&mut self) {
        // The runner's logs are kept for a failing test only.
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.log_dir);
        }
    }
}

/// The steps a saga view (`GET /sagas/{id}`, or `saga_progress` in the query-api) shows as
/// performed, oldest first.
pub fn performed_steps(saga: &Value) -> Vec<String> {
    saga["history"]
        .as_array()
        .map(|history| {
            history
                .iter()
                .filter(|entry| entry["outcome"] == "performed")
                .filter_map(|entry| entry["step"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// A booking body for [`SagaStack::request_booking`]: a director's (it may carry an adjustment).
pub fn booking_body(facility: Uuid, days_ahead: i64, index: u32, amount_minor: i64) -> Value {
    let mut body = bodies::booking(&facility.to_string(), days_ahead);
    let day = (Utc::now() + Days::days(days_ahead)).date_naive();
    let minutes = 8 * 60 + 90 * index.min(7);
    let time = NaiveTime::from_hms_opt(minutes / 60, minutes % 60, 0).expect("a valid time");
    let start = chrono_tz::Europe::London
        .from_local_datetime(&day.and_time(time))
        .earliest()
        .expect("the time exists on that London day");
    let end = start + Days::hours(1);
    body["slot"] = serde_json::json!({"start": start.to_rfc3339(), "end": end.to_rfc3339()});
    // The home's list prices the booking; a director's adjustment brings it to the amount the
    // test counts money by.
    let adjustment = amount_minor - test_support::ONE_HOUR_BURIAL_IN_A_CHAPEL;
    if adjustment != 0 {
        body["adjustments"] =
            serde_json::json!([{"amount_minor": adjustment, "reason": "Test amount"}]);
    }
    body
}

fn id_of(body: &Value, field: &str) -> anyhow::Result<Uuid> {
    body[field]
        .as_str()
        .and_then(|id| Uuid::parse_str(id).ok())
        .with_context(|| format!("no {field} in {body}"))
}

fn millis(duration: Duration) -> String {
    duration.as_millis().to_string()
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}
