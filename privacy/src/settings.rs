//! `[privacy]` settings (`FM_PRIVACY__*`).

use std::time::Duration;

use platform::settings::millis;
use secrecy::SecretString;
use serde::{Deserialize, Deserializer};

/// How personal data is protected and forgotten.
#[derive(Debug, Clone, Deserialize)]
pub struct PrivacySettings {
    /// The master keys, `id:base64key` separated by commas (`FM_PRIVACY__MASTER_KEYS`); each key
    /// is 32 random bytes. The first one wraps new data keys; the others only unwrap, until
    /// `fmctl privacy rewrap` has moved every data key to the first. No default: a deployment
    /// never runs with a key that is in the source code.
    pub master_keys: SecretString,
    /// How long an unwrapped data key (or the knowledge that it is erased) is kept in memory
    /// (milliseconds, at most a minute; a minute by default). An erasure reaches every reader
    /// within that time.
    #[serde(default = "default_key_cache", deserialize_with = "millis")]
    pub key_cache: Duration,
    /// Erase a booking's personal data this long after its service (milliseconds;
    /// `FM_PRIVACY__ERASE_AFTER`). Unset (the default): never by itself.
    #[serde(default, deserialize_with = "optional_millis")]
    pub erase_after: Option<Duration>,
    /// Where the data keys live (`FM_PRIVACY__DATABASE_URL`); unset (the default): the
    /// service's own database (`FM_DATABASE__URL`). Every service must reach the same table.
    #[serde(default)]
    pub database_url: Option<SecretString>,
}

fn default_key_cache() -> Duration {
    Duration::from_mins(1)
}

fn optional_millis<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Duration>, D::Error> {
    Ok(Option::<u64>::deserialize(deserializer)?.map(Duration::from_millis))
}

impl PrivacySettings {
    /// Settings with these master keys and the defaults for the rest.
    pub fn with_master_keys(master_keys: impl Into<String>) -> Self {
        Self {
            master_keys: SecretString::from(master_keys.into()),
            key_cache: default_key_cache(),
            erase_after: None,
            database_url: None,
        }
    }
}
