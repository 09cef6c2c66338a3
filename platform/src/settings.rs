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

/// Funeral homes as tenants (docs/identity.md, "Tenancy"), `FM_TENANCY__…`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct TenancySettings {
    /// The home of every facility registered before facilities named one (`FacilityRegistered`
    /// without `funeral_home_id`, or with `null`): `FM_TENANCY__DEFAULT_HOME`. By default the
    /// local realm's home A ([`TenancySettings::LOCAL_HOME_A`]), so that a local stack's and the
    /// tests' older events belong to a home someone works for; a deployment sets its own.
    pub default_home: uuid::Uuid,
}

impl TenancySettings {
    /// Home A of the local realm (compose/keycloak/realm.json, the `fm_home` of
    /// `/northern-funerals/home-a`).
    pub const LOCAL_HOME_A: uuid::Uuid = uuid::uuid!("1a27795a-58ce-464e-b3b5-7f8349d9df39");
    /// Home B of the local realm (`/northern-funerals/home-b`).
    pub const LOCAL_HOME_B: uuid::Uuid = uuid::uuid!("7cb62965-dda6-4bfe-ad35-d205430f14d7");
}

impl Default for TenancySettings {
    fn default() -> Self {
        Self {
            default_home: Self::LOCAL_HOME_A,
        }
    }
}

/// How bearer tokens are checked (docs/identity.md). There is no default: a service refuses to
/// start with neither an issuer nor a secret, so no deployment runs with a key that is in the
/// source code.
#[derive(Debug, Clone, Deserialize)]
pub struct AuthSettings {
    /// The OpenID Connect provider's issuer (`FM_AUTH__ISSUER`); when set, tokens are checked by
    /// its published keys and `secret` is ignored.
    #[serde(default)]
    pub issuer: Option<String>,
    /// What a token's `aud` must contain (`FM_AUTH__AUDIENCE`).
    #[serde(default = "default_audience")]
    pub audience: String,
    /// The provider's JWKS address, when not the discovery document's (`FM_AUTH__JWKS_URL`).
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// The shared HS256 secret (`FM_AUTH__SECRET`), the way before the provider.
    #[serde(default)]
    pub secret: Option<SecretString>,
    /// The service's own confidential client at the provider (`FM_AUTH__CLIENT_ID`), for a
    /// service that calls another one (the saga runner).
    #[serde(default)]
    pub client_id: Option<String>,
    /// Its secret (`FM_AUTH__CLIENT_SECRET`).
    #[serde(default)]
    pub client_secret: Option<SecretString>,
    /// The provider's token endpoint, when not the discovery document's (`FM_AUTH__TOKEN_URL`,
    /// e.g. where the services reach the provider by another name than the issuer's).
    #[serde(default)]
    pub token_url: Option<String>,
    /// Tolerance on a provider token's `exp` and `nbf` for clocks that disagree
    /// (`FM_AUTH__LEEWAY`, milliseconds; 30 s by default).
    #[serde(default = "default_leeway", deserialize_with = "millis")]
    pub leeway: Duration,
    /// Age after which the provider's keys are fetched again even when every token names a
    /// known key (`FM_AUTH__JWKS_REFRESH`, milliseconds; 5 min by default): how soon a key the
    /// provider removed stops being trusted (docs/operations.md, key rotation).
    #[serde(default = "default_jwks_refresh", deserialize_with = "millis")]
    pub jwks_refresh: Duration,
    /// How long a fetch of the keys that did not help (it failed, or lacked the key id it was
    /// made for) keeps the provider from being asked again (`FM_AUTH__JWKS_MIN_REFRESH`,
    /// milliseconds; 10 s by default): the bound on what garbage tokens can make it fetch.
    #[serde(default = "default_jwks_min_refresh", deserialize_with = "millis")]
    pub jwks_min_refresh: Duration,
}

fn default_leeway() -> Duration {
    Duration::from_secs(30)
}

fn default_jwks_refresh() -> Duration {
    Duration::from_mins(5)
}

fn default_jwks_min_refresh() -> Duration {
    Duration::from_secs(10)
}

/// The audience of the local realm (compose/keycloak/realm.json).
pub const DEFAULT_AUDIENCE: &str = "funeral-manager-api";

fn default_audience() -> String {
    DEFAULT_AUDIENCE.to_owned()
}

impl AuthSettings {
    /// Settings that check tokens with a shared secret.
    pub fn shared_secret(secret: SecretString) -> Self {
        Self {
            issuer: None,
            audience: default_audience(),
            jwks_url: None,
            secret: Some(secret),
            client_id: None,
            client_secret: None,
            token_url: None,
            leeway: default_leeway(),
            jwks_refresh: default_jwks_refresh(),
            jwks_min_refresh: default_jwks_min_refresh(),
        }
    }

    /// Settings that check tokens by the provider of `issuer`.
    pub fn oidc(issuer: impl Into<String>) -> Self {
        Self {
            issuer: Some(issuer.into()),
            audience: default_audience(),
            jwks_url: None,
            secret: None,
            client_id: None,
            client_secret: None,
            token_url: None,
            leeway: default_leeway(),
            jwks_refresh: default_jwks_refresh(),
            jwks_min_refresh: default_jwks_min_refresh(),
        }
    }
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
