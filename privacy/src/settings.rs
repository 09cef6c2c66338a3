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
    /// Erase a booking's personal data this long after its service ended
    /// (`FM_PRIVACY__ERASE_AFTER`: `30d`, `12h`, `15m`, `10s`, `500ms`, or whole milliseconds).
    /// Unset (the default): never by itself. Applied by the saga runner's privacy job.
    #[serde(default, deserialize_with = "optional_duration")]
    pub erase_after: Option<Duration>,
    /// A data key whose booking never reached the log (a request the domain refused) is removed
    /// this long after it was made (`FM_PRIVACY__ORPHAN_KEYS_AFTER`, as `erase_after`; a day by
    /// default). Applied by the saga runner's privacy job.
    #[serde(default = "default_orphan_keys_after", deserialize_with = "duration")]
    pub orphan_keys_after: Duration,
    /// How often the saga runner's privacy job runs (`FM_PRIVACY__SWEEP_INTERVAL`, as
    /// `erase_after`; ten minutes by default).
    #[serde(default = "default_sweep_interval", deserialize_with = "duration")]
    pub sweep_interval: Duration,
    /// Where the data keys live (`FM_PRIVACY__DATABASE_URL`); unset (the default): the
    /// service's own database (`FM_DATABASE__URL`). Every service must reach the same table.
    #[serde(default)]
    pub database_url: Option<SecretString>,
}

fn default_key_cache() -> Duration {
    Duration::from_mins(1)
}

fn default_orphan_keys_after() -> Duration {
    Duration::from_hours(24)
}

fn default_sweep_interval() -> Duration {
    Duration::from_mins(10)
}

/// A duration in the settings: whole milliseconds, or a whole number with a unit.
#[derive(Deserialize)]
#[serde(untagged)]
enum DurationText {
    Millis(u64),
    Text(String),
}

/// Parses `30d`, `12h`, `15m`, `10s`, `500ms` or `1500` (milliseconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as 30d, 12h, 15m, 10s or 500ms"))?;
    let millis_per = match unit.trim() {
        "" | "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        other => return Err(format!("unknown unit {other:?} (d, h, m, s or ms)")),
    };
    number
        .checked_mul(millis_per)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("{text:?} is too long"))
}

fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    match DurationText::deserialize(deserializer)? {
        DurationText::Millis(millis) => Ok(Duration::from_millis(millis)),
        DurationText::Text(text) => parse_duration(&text).map_err(serde::de::Error::custom),
    }
}

fn optional_duration<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Duration>, D::Error> {
    match Option::<DurationText>::deserialize(deserializer)? {
        None => Ok(None),
        Some(DurationText::Millis(millis)) => Ok(Some(Duration::from_millis(millis))),
        Some(DurationText::Text(text)) if text.trim().is_empty() => Ok(None),
        Some(DurationText::Text(text)) => parse_duration(&text)
            .map(Some)
            .map_err(serde::de::Error::custom),
    }
}

impl PrivacySettings {
    /// Settings with these master keys and the defaults for the rest.
    pub fn with_master_keys(master_keys: impl Into<String>) -> Self {
        Self {
            master_keys: SecretString::from(master_keys.into()),
            key_cache: default_key_cache(),
            erase_after: None,
            orphan_keys_after: default_orphan_keys_after(),
            sweep_interval: default_sweep_interval(),
            database_url: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::parse_duration;

    #[test]
    fn durations_are_read_with_their_unit_or_as_milliseconds() {
        assert_eq!(parse_duration("30d"), Ok(Duration::from_hours(720)));
        assert_eq!(parse_duration("12h"), Ok(Duration::from_hours(12)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_mins(15)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1500"), Ok(Duration::from_millis(1500)));
        for bad in ["", "d", "3w", "-1d", "1.5h", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
