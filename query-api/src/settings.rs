//! The query-api's configuration.

use std::time::Duration;

use platform::settings::{AuthSettings, DatabaseSettings, HttpSettings, LogSettings, millis};
use serde::Deserialize;

/// Everything the query-api reads from its configuration layers.
#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    #[serde(default = "default_http")]
    pub http: HttpSettings,
    #[serde(default)]
    pub database: DatabaseSettings,
    pub auth: AuthSettings,
    #[serde(default)]
    pub log: LogSettings,
    #[serde(default)]
    pub consistency: ConsistencySettings,
}

fn default_http() -> HttpSettings {
    HttpSettings::on_port(8082)
}

/// How long a query waits for the read model to reach a consistency token.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ConsistencySettings {
    #[serde(deserialize_with = "millis")]
    pub max_wait: Duration,
    #[serde(deserialize_with = "millis")]
    pub poll_interval: Duration,
}

impl Default for ConsistencySettings {
    fn default() -> Self {
        Self {
            max_wait: Duration::from_secs(5),
            poll_interval: Duration::from_millis(20),
        }
    }
}

impl Settings {
    /// Defaults everywhere but the secret and the database.
    pub fn new(secret: &str, database: DatabaseSettings) -> Self {
        Self {
            http: default_http(),
            database,
            auth: AuthSettings {
                secret: secret.to_owned().into(),
            },
            log: LogSettings::default(),
            consistency: ConsistencySettings::default(),
        }
    }
}
