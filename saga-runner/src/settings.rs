//! The saga runner's configuration (`FM_SECTION__KEY`; durations in milliseconds).

use std::time::Duration;

use event_log::KafkaSettings;
use notifications::SmtpSettings;
use payment_gateway::{Backoff, BreakerPolicy, GatewaySettings};
use platform::settings::{AuthSettings, DatabaseSettings, HttpSettings, LogSettings, millis};
use serde::Deserialize;

use crate::saga::Deadlines;

/// Everything the saga runner reads from its configuration layers.
#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    #[serde(default = "default_http")]
    pub http: HttpSettings,
    #[serde(default)]
    pub kafka: KafkaSettings,
    #[serde(default)]
    pub database: DatabaseSettings,
    /// Signs the `system` tokens of the saga's commands and checks the ops view's callers.
    pub auth: AuthSettings,
    #[serde(default)]
    pub log: LogSettings,
    #[serde(default)]
    pub saga: SagaSettings,
    /// The payment gateway (`FM_GATEWAY__BASE_URL`, ...).
    #[serde(default)]
    pub gateway: GatewaySettings,
    /// The breaker around the gateway (`FM_BREAKER__FAILURE_THRESHOLD`, `FM_BREAKER__COOL_DOWN`).
    #[serde(default)]
    pub breaker: BreakerPolicy,
    /// Retry delays of failed steps (`FM_BACKOFF__BASE`, `__FACTOR`, `__MAX`, `__JITTER`).
    #[serde(default)]
    pub backoff: Backoff,
    /// Where the family's mail goes (`FM_SMTP__HOST`, `FM_SMTP__PORT`, ...).
    #[serde(default)]
    pub smtp: SmtpSettings,
    /// The master keys that open a letter's recipients (`FM_PRIVACY__MASTER_KEYS`); the data
    /// keys are in `database` (docs/privacy.md). Required to serve.
    #[serde(default)]
    pub privacy: Option<privacy::PrivacySettings>,
}

fn default_http() -> HttpSettings {
    HttpSettings::on_port(8084)
}

/// The saga's own knobs (`FM_SAGA__*`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct SagaSettings {
    /// The command-service's base URL.
    pub command_url: String,
    /// A command with no answer after this long is retried.
    #[serde(deserialize_with = "millis")]
    pub command_timeout: Duration,
    /// From the saga's first attempt at a reservation until the facility should have answered;
    /// past it the saga shows as stuck, and keeps trying until `booking_deadline`.
    #[serde(deserialize_with = "millis")]
    pub reserve_deadline: Duration,
    /// From the saga's first attempt at a booking until it must have an outcome, however long
    /// the system could not answer (an outage shorter than this never fails a booking).
    #[serde(deserialize_with = "millis")]
    pub booking_deadline: Duration,
    /// From the slot being held until the payment must be taken.
    #[serde(deserialize_with = "millis")]
    pub capture_deadline: Duration,
    /// From the outcome until the family's mail must have gone.
    #[serde(deserialize_with = "millis")]
    pub notify_deadline: Duration,
    /// How long after its last capture request a lookup that finds nothing is believed: longer
    /// than the provider can still be processing a request whose client gave up
    /// (docs/payments.md says how to choose it). Must exceed the gateway's request timeout.
    #[serde(deserialize_with = "millis")]
    pub settle_window: Duration,
    /// How often the gateway's captures are reconciled with the log.
    #[serde(deserialize_with = "millis")]
    pub reconcile_interval: Duration,
    /// How far back the reconciliation compares captures.
    #[serde(deserialize_with = "millis")]
    pub reconcile_horizon: Duration,
    /// This runner's name in the sagas' history (default: host name and process id).
    pub instance: Option<String>,
    /// How long a performed command's event is awaited before the command is sent again.
    #[serde(deserialize_with = "millis")]
    pub await_event: Duration,
    /// Sagas acted on at once by one replica.
    pub concurrency: usize,
    /// Records applied to the sagas in one transaction.
    pub batch_size: usize,
    /// How often due sagas are looked for when nothing wakes the worker.
    #[serde(deserialize_with = "millis")]
    pub poll_interval: Duration,
    /// Fault injection for the crash tests (`FM_SAGA__CRASH_AFTER=<step>`): the process kills
    /// itself with SIGKILL right after performing that step's effect and before recording it,
    /// the worst moment to crash. Never set outside tests.
    pub crash_after: Option<String>,
}

impl Default for SagaSettings {
    fn default() -> Self {
        Self {
            command_url: "http://127.0.0.1:8081".to_owned(),
            command_timeout: Duration::from_secs(15),
            reserve_deadline: Duration::from_secs(30),
            booking_deadline: Duration::from_mins(30),
            capture_deadline: Duration::from_mins(2),
            notify_deadline: Duration::from_hours(1),
            settle_window: Duration::from_mins(10),
            reconcile_interval: Duration::from_mins(5),
            reconcile_horizon: Duration::from_hours(24 * 7),
            instance: None,
            await_event: Duration::from_secs(3),
            concurrency: 16,
            batch_size: 200,
            poll_interval: Duration::from_millis(500),
            crash_after: None,
        }
    }
}

impl SagaSettings {
    /// The deadlines of the pure state machine.
    pub fn deadlines(&self) -> Deadlines {
        let delta = |d: Duration| chrono::TimeDelta::from_std(d).unwrap_or(chrono::TimeDelta::MAX);
        Deadlines {
            reserve: delta(self.reserve_deadline),
            booking: delta(self.booking_deadline),
            capture: delta(self.capture_deadline),
            notify: delta(self.notify_deadline),
            settle: delta(self.settle_window),
        }
    }

    /// This runner's name in the history: `FM_SAGA__INSTANCE`, else `<host>-<pid>`.
    pub fn instance(&self) -> String {
        self.instance.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|name| name.trim().to_owned())
                .ok()
                .filter(|name| !name.is_empty())
                .or_else(|| std::env::var("HOSTNAME").ok())
                .unwrap_or_else(|| "saga-runner".to_owned());
            format!("{host}-{}", std::process::id())
        })
    }
}

impl Settings {
    /// Settings for tests and tools: defaults everywhere but how tokens are checked and got.
    pub fn with_auth(auth: AuthSettings) -> Self {
        Self {
            http: default_http(),
            kafka: KafkaSettings::default(),
            database: DatabaseSettings::default(),
            auth,
            log: LogSettings::default(),
            saga: SagaSettings::default(),
            gateway: GatewaySettings::default(),
            breaker: BreakerPolicy::default(),
            backoff: Backoff::default(),
            smtp: SmtpSettings::default(),
            privacy: None,
        }
    }
}
