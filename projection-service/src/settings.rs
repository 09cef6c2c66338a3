//! The projection-service's configuration.

use event_log::KafkaSettings;
use platform::settings::{DatabaseSettings, HttpSettings, LogSettings};
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
        }
    }
}
