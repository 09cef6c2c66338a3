//! The query-api's configuration.

use std::time::Duration;

use event_log::KafkaSettings;
use platform::{
    rate_limit::RateLimitSettings,
    settings::{
        AuthSettings, DatabaseSettings, HttpSettings, LogSettings, TenancySettings, millis,
    },
};
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
    #[serde(default)]
    pub read_model: ReadModelSettings,
    /// How fast one token subject and one client address may ask for consistency-token waits
    /// (`FM_LIMITS__…`; reads without a token are not limited here).
    #[serde(default = "default_wait_limits")]
    pub limits: RateLimitSettings,
    /// The log, asked for its end so that a consistency token beyond it is answered at once
    /// (`FM_KAFKA__BROKERS`, `FM_KAFKA__TOPIC_PREFIX`); none: such a token waits `max_wait`.
    #[serde(default)]
    pub kafka: Option<KafkaSettings>,
    /// The home of facilities registered without one (`FM_TENANCY__DEFAULT_HOME`; their
    /// read-model rows hold no home, docs/identity.md).
    #[serde(default)]
    pub tenancy: TenancySettings,
    /// Families by invitation (`FM_FAMILY_SESSIONS__*`, docs/identity.md).
    #[serde(default)]
    pub family_sessions: FamilySessionSettings,
}

/// Where the query-api finds the keys of family sessions.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct FamilySessionSettings {
    /// The command-service's `GET /family-sessions/jwks.json` (`FM_FAMILY_SESSIONS__JWKS_URL`);
    /// unset: this query-api accepts no family session.
    pub jwks_url: Option<String>,
}

/// 120 waits a minute per subject with a burst of 30; 1,200 a minute per address with a burst
/// of 200: a wait holds a connection and polls the database for up to `max_wait`.
fn default_wait_limits() -> RateLimitSettings {
    RateLimitSettings {
        per_subject_per_minute: 120,
        per_subject_burst: 30,
        per_address_per_minute: 1200,
        per_address_burst: 200,
    }
}

fn default_http() -> HttpSettings {
    HttpSettings::on_port(8082)
}

/// How long a query waits for the read model to reach a consistency token.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ConsistencySettings {
    /// The longest wait (`FM_CONSISTENCY__MAX_WAIT`, ms); held a second below the request
    /// timeout.
    #[serde(deserialize_with = "millis")]
    pub max_wait: Duration,
    /// How often a wait reads the offsets again when no notification wakes it
    /// (`FM_CONSISTENCY__POLL_INTERVAL`, ms): the fallback for a lost listening connection.
    #[serde(deserialize_with = "millis")]
    pub poll_interval: Duration,
}

impl Default for ConsistencySettings {
    fn default() -> Self {
        Self {
            max_wait: Duration::from_secs(5),
            poll_interval: Duration::from_millis(250),
        }
    }
}

/// How this query-api tells the projection-services it reads its version (`FM_READ_MODEL__*`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ReadModelSettings {
    /// How often it records itself in `read_model_readers`.
    #[serde(deserialize_with = "millis")]
    pub heartbeat_interval: Duration,
    /// How long after its last heartbeat it still counts as running (then its version may be
    /// dropped once the grace period has passed). Above the heartbeat interval, with room for a
    /// slow database.
    #[serde(deserialize_with = "millis")]
    pub reader_expiry: Duration,
}

impl Default for ReadModelSettings {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(5),
            reader_expiry: Duration::from_secs(30),
        }
    }
}

impl Settings {
    /// Defaults everywhere but how tokens are checked and the database, and no rate limits
    /// (tests read much with a few tokens; a test of a limit sets it).
    pub fn new(auth: AuthSettings, database: DatabaseSettings) -> Self {
        Self {
            http: default_http(),
            database,
            auth,
            log: LogSettings::default(),
            consistency: ConsistencySettings::default(),
            read_model: ReadModelSettings::default(),
            limits: RateLimitSettings::UNLIMITED,
            kafka: None,
            tenancy: TenancySettings::default(),
            family_sessions: FamilySessionSettings::default(),
        }
    }
}
