//! The command-service's configuration.

use std::time::Duration;

use event_log::KafkaSettings;
use platform::settings::{AuthSettings, DatabaseSettings, HttpSettings, LogSettings, millis};
use privacy::PrivacySettings;
use serde::Deserialize;

/// Everything the command-service reads from its configuration layers.
#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    #[serde(default = "default_http")]
    pub http: HttpSettings,
    #[serde(default)]
    pub kafka: KafkaSettings,
    pub auth: AuthSettings,
    #[serde(default)]
    pub log: platform::settings::LogSettings,
    #[serde(default)]
    pub commands: CommandSettings,
    /// The PostgreSQL that holds the data keys (`privacy.data_keys`, docs/privacy.md): the
    /// command-service's only table, reached through a small pool of its own.
    #[serde(default)]
    pub database: DatabaseSettings,
    /// The master keys and the retention rule (`FM_PRIVACY__*`); no default.
    pub privacy: PrivacySettings,
}

fn default_http() -> HttpSettings {
    HttpSettings::on_port(8081)
}

/// How the write path waits on the log.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct CommandSettings {
    /// How long a writer waits to read its own event back before it answers 503 (the event may
    /// still be admitted; a retry with the same Idempotency-Key finds out).
    #[serde(deserialize_with = "millis")]
    pub outcome_timeout: Duration,
    /// How long an `Idempotency-Key` is remembered (from its event's time).
    #[serde(deserialize_with = "millis")]
    pub idempotency_retention: Duration,
    /// Where this replica keeps its snapshot of the aggregate store; none: replay the whole
    /// log at every start.
    pub snapshot_path: Option<std::path::PathBuf>,
    /// How often the snapshot is rewritten while the log moves.
    #[serde(deserialize_with = "millis")]
    pub snapshot_interval: Duration,
}

impl Default for CommandSettings {
    fn default() -> Self {
        Self {
            outcome_timeout: Duration::from_secs(10),
            idempotency_retention: Duration::from_hours(24),
            snapshot_path: None,
            snapshot_interval: Duration::from_secs(30),
        }
    }
}

impl Settings {
    /// Settings for tests and tools: defaults everywhere but how tokens are checked and where
    /// the data keys live.
    pub fn with_auth(
        auth: AuthSettings,
        database: DatabaseSettings,
        privacy: PrivacySettings,
    ) -> Self {
        Self {
            http: default_http(),
            kafka: KafkaSettings::default(),
            auth,
            log: LogSettings::default(),
            commands: CommandSettings::default(),
            database,
            privacy,
        }
    }
}
