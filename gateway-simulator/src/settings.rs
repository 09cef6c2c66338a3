//! The simulator's configuration: defaults, then `FM_CONFIG_FILE`, then `FM_<SECTION>__<KEY>`.

use std::time::Duration;

use platform::settings::{HttpSettings, LogSettings, millis};
use serde::Deserialize;

/// Everything the simulator reads from its configuration layers.
#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    #[serde(default = "default_http")]
    pub http: HttpSettings,
    #[serde(default)]
    pub log: LogSettings,
    #[serde(default)]
    pub simulator: SimulatorSettings,
}

fn default_http() -> HttpSettings {
    HttpSettings {
        // Longer than `hang`, so that `timeout` hangs until the client gives up rather than
        // being cut short with a 503 by the platform's request timeout.
        request_timeout: Duration::from_hours(1),
        ..HttpSettings::on_port(8090)
    }
}

/// How the simulated faults behave.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct SimulatorSettings {
    /// How long `timeout` and `capture_then_timeout` hang before answering (shutdown cuts it
    /// short). Far beyond any client timeout.
    #[serde(deserialize_with = "millis")]
    pub hang: Duration,
    /// How long `slow` waits when the behaviour gives no `delay_ms`.
    #[serde(deserialize_with = "millis")]
    pub default_delay: Duration,
}

impl Default for SimulatorSettings {
    fn default() -> Self {
        Self {
            hang: Duration::from_mins(10),
            default_delay: Duration::from_secs(1),
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            http: default_http(),
            log: LogSettings::default(),
            simulator: SimulatorSettings::default(),
        }
    }
}
