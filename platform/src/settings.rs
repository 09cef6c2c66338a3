//! Typed, layered configuration.
//!
//! Each service declares one `Settings` struct built from the sections here (and its own), every
//! field with a default, and loads it with [`load`]. Layers, later wins: the defaults, the TOML
//! file named by `FM_CONFIG_FILE` (if set), then environment variables `FM_<SECTION>__<KEY>`
//! (`FM_HTTP__PORT=9000`, `FM_KAFKA__BROKERS=10.0.0.5:9092`).

use std::time::Duration;

use secrecy::SecretString;
use serde::{Deserialize, Deserializer, de::DeserializeOwned};

/// Loads a service's settings from the layers described in the module docs.
pub fn load<S: DeserializeOwned>() -> Result<S, config::ConfigError> {
    let mut builder = config::Config::builder();
    if let Ok(path) = std::env::var("FM_CONFIG_FILE") {
        builder = builder.add_source(config::File::with_name(&path).required(true));
    }
    builder
        .add_source(
            config::Environment::with_prefix("FM")
                .prefix_separator("_")
                .separator("__")
                .try_parsing(true),
        )
        .build()?
        .try_deserialize()
}

/// Where a service listens and how it treats requests.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct HttpSettings {
    pub host: String,
    /// 0 picks a free port (tests).
    pub port: u16,
    /// A request that takes longer is answered 503 and its work dropped.
    #[serde(deserialize_with = "millis")]
    pub request_timeout: Duration,
    /// Bodies above this many bytes are refused with 413 before they are read.
    pub body_limit_bytes: usize,
}

impl HttpSettings {
    /// The defaults with a service's own port.
    pub fn on_port(port: u16) -> Self {
        Self {
            port,
            ..Self::default()
        }
    }
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".to_owned(),
            port: 0,
            request_timeout: Duration::from_secs(15),
            body_limit_bytes: 64 * 1024,
        }
    }
}

/// How to reach PostgreSQL. The URL holds a password, so it is a secret.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct DatabaseSettings {
    pub url: SecretString,
    pub max_connections: u32,
    #[serde(deserialize_with = "millis")]
    pub acquire_timeout: Duration,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: SecretString::from("postgres://fm:fm@127.0.0.1:5432/funeral_manager"),
            max_connections: 10,
            acquire_timeout: Duration::from_secs(5),
        }
    }
}

/// The key bearer tokens are signed with. There is no default: a service refuses to start
/// without one, so no deployment runs with a secret that is in the source code.
#[derive(Debug, Clone, Deserialize)]
pub struct AuthSettings {
    pub secret: SecretString,
}

/// Log output.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct LogSettings {
    pub format: LogFormat,
    /// An `EnvFilter` directive; `RUST_LOG` wins when set.
    pub filter: String,
    /// Where to export spans (OTLP over HTTP, a collector's base URL such as
    /// `http://otel-collector:4318`); none by default. The standard
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` works too (`platform::telemetry`).
    pub otlp_endpoint: Option<String>,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            format: LogFormat::Json,
            filter: "info".to_owned(),
            otlp_endpoint: None,
        }
    }
}

/// JSON for machines (the default), pretty for a terminal.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Json,
    Pretty,
}

/// Durations in configuration are whole milliseconds.
pub fn millis<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    u64::deserialize(deserializer).map(Duration::from_millis)
}
