//! The projection-service's configuration.

use std::time::Duration;

use event_log::KafkaSettings;
use platform::settings::{DatabaseSettings, HttpSettings, LogSettings, millis};
use serde::Deserialize;

/// Everything the projection-service reads from its configuration layers.
#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    #[serde(default = "default_http")]
    pub http: HttpSettings,
    #[serde(default)]
    pub kafka: KafkaSettings,
    #[serde(default)]
    pub database: DatabaseSettings,
    #[serde(default)]
    pub log: LogSettings,
    #[serde(default)]
    pub projector: ProjectorSettings,
    /// The master keys that open the bookings' personal data (`FM_PRIVACY__MASTER_KEYS`); the
    /// data keys are in `database` (docs/privacy.md). Only `serve` needs them.
    #[serde(default)]
    pub privacy: Option<privacy::PrivacySettings>,
}

/// How the projectors batch and how often versions are looked at (`FM_PROJECTOR__*`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ProjectorSettings {
    /// At most this many records are applied in one transaction.
    pub batch_size: usize,
    /// How often a building build checks whether it has caught up and can switch live.
    #[serde(deserialize_with = "millis")]
    pub switch_check_interval: Duration,
    /// How often `read_model_builds` is read for new, retired or stopped builds, and versions
    /// are checked for dropping.
    #[serde(deserialize_with = "millis")]
    pub supervise_interval: Duration,
    /// How often each projector samples its lag behind the log (`projection_lag_records`).
    #[serde(deserialize_with = "millis")]
    pub lag_interval: Duration,
    /// How long a read-model version that no query-api reads any more (and that a newer version
    /// has replaced) is kept before it is dropped: a rollback within it needs no rebuild.
    #[serde(deserialize_with = "millis")]
    pub drop_grace: Duration,
}

impl Default for ProjectorSettings {
    fn default() -> Self {
        Self {
            batch_size: 500,
            switch_check_interval: Duration::from_millis(250),
            supervise_interval: Duration::from_millis(500),
            lag_interval: Duration::from_secs(5),
            drop_grace: Duration::from_hours(1),
        }
    }
}

fn default_http() -> HttpSettings {
    HttpSettings::on_port(8083)
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            http: default_http(),
            kafka: KafkaSettings::default(),
            database: DatabaseSettings::default(),
            log: LogSettings::default(),
            projector: ProjectorSettings::default(),
            privacy: None,
        }
    }
}
