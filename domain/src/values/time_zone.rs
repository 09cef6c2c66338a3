//! IANA time zones of facilities.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, NaiveDate, TimeZone as _};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use crate::ValueError;

/// An IANA time zone such as `"Europe/London"`; serialises as its name.
///
/// Facilities keep their opening hours in local time, so rules about hours and dates are
/// evaluated in this zone, daylight-saving changes included.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TimeZone(Tz);

impl TimeZone {
    /// Parses an IANA time zone name (case-sensitive, as in the tz database).
    pub fn parse(name: &str) -> Result<Self, ValueError> {
        name.parse::<Tz>().map(Self).map_err(|_| {
            ValueError::new(
                "time_zone.iana",
                format!("{name:?} is not an IANA time zone name"),
            )
        })
    }

    /// Wraps a `chrono_tz` zone.
    pub const fn from_tz(tz: Tz) -> Self {
        Self(tz)
    }

    /// The `chrono_tz` zone, for conversions.
    pub const fn tz(self) -> Tz {
        self.0
    }

    /// The IANA name, e.g. `"Europe/London"`.
    pub fn name(self) -> &'static str {
        self.0.name()
    }

    /// The local calendar date of `instant` in this zone.
    pub fn local_date<Z: chrono::TimeZone>(self, instant: &DateTime<Z>) -> NaiveDate {
        self.0.from_utc_datetime(&instant.naive_utc()).date_naive()
    }
}

impl fmt::Display for TimeZone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for TimeZone {
    type Err = ValueError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for TimeZone {
    type Error = ValueError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<TimeZone> for String {
    fn from(value: TimeZone) -> Self {
        value.name().to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_iana_names() {
        for name in [
            "Europe/London",
            "America/New_York",
            "Australia/Sydney",
            "UTC",
        ] {
            assert_eq!(TimeZone::parse(name).unwrap().name(), name);
        }
    }

    #[test]
    fn rejects_anything_else() {
        for name in [
            "",
            "europe/london",
            "Europe/Londres",
            "GMT+25",
            "+01:00",
            " Europe/London",
        ] {
            assert_eq!(
                TimeZone::parse(name).unwrap_err().rule,
                "time_zone.iana",
                "{name:?}"
            );
        }
    }

    #[test]
    fn local_dates_follow_the_zone() {
        let london = TimeZone::parse("Europe/London").unwrap();
        let sydney = TimeZone::parse("Australia/Sydney").unwrap();
        let instant = DateTime::parse_from_rfc3339("2027-03-01T23:30:00Z").unwrap();
        assert_eq!(
            london.local_date(&instant),
            NaiveDate::from_ymd_opt(2027, 3, 1).unwrap()
        );
        assert_eq!(
            sydney.local_date(&instant),
            NaiveDate::from_ymd_opt(2027, 3, 2).unwrap()
        );
    }
}
