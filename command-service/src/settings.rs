//! The command-service's configuration.

use std::time::Duration;

use event_log::KafkaSettings;
use platform::{
    rate_limit::RateLimitSettings,
    settings::{
        AuthSettings, DatabaseSettings, HttpSettings, LogSettings, TenancySettings, millis,
    },
};
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
    #[serde(default)]
    pub limits: LimitSettings,
    /// The PostgreSQL that holds the data keys (`privacy.data_keys`, docs/privacy.md): the
    /// command-service's only table, reached through a small pool of its own.
    #[serde(default)]
    pub database: DatabaseSettings,
    /// The master keys and the retention rule (`FM_PRIVACY__*`); no default.
    pub privacy: PrivacySettings,
    /// The home of facilities registered before homes were named (`FM_TENANCY__DEFAULT_HOME`).
    #[serde(default)]
    pub tenancy: TenancySettings,
    /// Families by invitation (`FM_INVITATIONS__*`, docs/identity.md).
    #[serde(default)]
    pub invitations: InvitationSettings,
    /// The SMTP server invitation letters go through (`FM_SMTP__*`, the saga runner's too).
    #[serde(default)]
    pub smtp: notifications::SmtpSettings,
}

/// Families by invitation (docs/identity.md), `FM_INVITATIONS__…`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct InvitationSettings {
    /// How long a code can be exchanged, and a session refreshed (milliseconds; 7 days).
    #[serde(deserialize_with = "millis")]
    pub ttl: Duration,
    /// How long a family session lives: the bound on a revocation reaching the query-api's reads
    /// (milliseconds; 10 minutes).
    #[serde(deserialize_with = "millis")]
    pub session_ttl: Duration,
    /// The front end's page the letter links to; the code follows as `#code=…`.
    pub link_base: String,
    /// Exchanges per minute from one client address (and the burst); 0: no limit.
    pub exchanges_per_address_per_minute: u32,
    /// Exchanges per minute of one code (and the burst); 0: no limit.
    pub exchanges_per_code_per_minute: u32,
}

impl Default for InvitationSettings {
    fn default() -> Self {
        Self {
            ttl: Duration::from_hours(24 * 7),
            session_ttl: Duration::from_mins(10),
            link_base: "http://127.0.0.1:8080/family".to_owned(),
            exchanges_per_address_per_minute: 10,
            exchanges_per_code_per_minute: 5,
        }
    }
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
    /// How many records the tailer may be behind the end of the log before `/ready` turns
    /// false (`FM_COMMANDS__MAX_TAILER_LAG`; 0: never for lag). 10 000 by default: a few
    /// seconds of the heaviest load measured (docs/benchmarks.md), far above what a healthy
    /// replica shows between two measures, while a replica that stalls crosses it quickly.
    pub max_tailer_lag: u64,
    /// How often the lag is measured (`FM_COMMANDS__LAG_CHECK_INTERVAL`, milliseconds; 1 s).
    #[serde(deserialize_with = "millis")]
    pub lag_check_interval: Duration,
    /// Test hook, debug builds only: while set, the tailer reads nothing (a replica made to
    /// lag on purpose). Never in configuration.
    #[cfg(debug_assertions)]
    #[serde(skip)]
    pub pause_tailer: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

impl Default for CommandSettings {
    fn default() -> Self {
        Self {
            outcome_timeout: Duration::from_secs(10),
            idempotency_retention: Duration::from_hours(24),
            snapshot_path: None,
            snapshot_interval: Duration::from_secs(30),
            max_tailer_lag: 10_000,
            lag_check_interval: Duration::from_secs(1),
            #[cfg(debug_assertions)]
            pause_tailer: None,
        }
    }
}

/// Limits on the flow (docs/security.md, API4 and API6), `FM_LIMITS__…`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(default)]
pub struct LimitSettings {
    /// The most open bookings (`domain::booking::BookingState::is_open`) one family token
    /// subject may hold; 0: no limit. Directors are not limited by it.
    pub max_open_bookings_per_family: usize,
    /// How fast one token subject and one client address may write (every write route).
    #[serde(flatten)]
    pub rate: RateLimitSettings,
}

impl LimitSettings {
    /// No limit at all: for tests and load tools that drive many writes with a few tokens
    /// from one address (`FM_LIMITS__MAX_OPEN_BOOKINGS_PER_FAMILY=0`,
    /// `FM_LIMITS__PER_SUBJECT_PER_MINUTE=0`, `FM_LIMITS__PER_ADDRESS_PER_MINUTE=0`).
    pub const UNLIMITED: Self = Self {
        max_open_bookings_per_family: 0,
        rate: RateLimitSettings::UNLIMITED,
    };
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            max_open_bookings_per_family: 3,
            rate: RateLimitSettings::default(),
        }
    }
}

impl Settings {
    /// Settings for tests and tools: defaults everywhere but how tokens are checked and where
    /// the data keys live, and no limits on the flow ([`LimitSettings::UNLIMITED`]: tests
    /// write much with a few tokens; a test of a limit sets it).
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
            limits: LimitSettings::UNLIMITED,
            database,
            privacy,
            tenancy: TenancySettings::default(),
            invitations: InvitationSettings::default(),
            smtp: notifications::SmtpSettings::default(),
        }
    }
}
