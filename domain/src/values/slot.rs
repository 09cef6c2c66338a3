//! The time span a service occupies at a facility.

use chrono::{DateTime, FixedOffset, SecondsFormat, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

use crate::ValueError;

/// A span of time from `start` to `end`, lasting 30 minutes to 8 hours.
///
/// The caller's UTC offsets are kept (a family in Lisbon sees the offset they typed), but
/// comparisons and equality are on instants: `10:00+00:00` and `11:00+01:00` are the same start.
/// Serialises as `{"start": RFC 3339, "end": RFC 3339}`; deserialising re-checks the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "SlotRepr", into = "SlotRepr")]
pub struct Slot {
    start: DateTime<FixedOffset>,
    end: DateTime<FixedOffset>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SlotRepr {
    start: String,
    end: String,
}

impl Slot {
    /// The shortest slot accepted.
    pub const MIN_DURATION: TimeDelta = TimeDelta::minutes(30);
    /// The longest slot accepted.
    pub const MAX_DURATION: TimeDelta = TimeDelta::hours(8);

    /// A slot from `start` to `end`; `end` must be after `start`, 30 minutes to 8 hours later.
    pub fn new(
        start: DateTime<FixedOffset>,
        end: DateTime<FixedOffset>,
    ) -> Result<Self, ValueError> {
        if end <= start {
            return Err(ValueError::new(
                "slot.end_after_start",
                "a slot must end after it starts",
            ));
        }
        let duration = end - start;
        if duration < Self::MIN_DURATION || duration > Self::MAX_DURATION {
            return Err(ValueError::new(
                "slot.duration_30min_to_8h",
                "a slot lasts from 30 minutes to 8 hours",
            ));
        }
        Ok(Self { start, end })
    }

    /// Parses a slot from two RFC 3339 timestamps with offsets, e.g.
    /// `"2027-03-02T10:00:00+00:00"`.
    pub fn parse(start: &str, end: &str) -> Result<Self, ValueError> {
        Self::new(parse_rfc3339(start)?, parse_rfc3339(end)?)
    }

    /// When the slot starts, in the caller's offset.
    pub const fn start(&self) -> DateTime<FixedOffset> {
        self.start
    }

    /// When the slot ends, in the caller's offset.
    pub const fn end(&self) -> DateTime<FixedOffset> {
        self.end
    }

    /// When the slot starts, in UTC.
    pub fn start_utc(&self) -> DateTime<Utc> {
        self.start.with_timezone(&Utc)
    }

    /// When the slot ends, in UTC.
    pub fn end_utc(&self) -> DateTime<Utc> {
        self.end.with_timezone(&Utc)
    }

    /// How long the slot lasts.
    pub fn duration(&self) -> TimeDelta {
        self.end - self.start
    }

    /// Whether the two slots conflict once each is extended by `buffer` (the facility's
    /// turnaround): `self.start < other.end + buffer && other.start < self.end + buffer`.
    /// Slots that merely touch do not conflict when the buffer is zero.
    pub fn overlaps_with_buffer(&self, other: &Slot, buffer: TimeDelta) -> bool {
        self.start < other.end + buffer && other.start < self.end + buffer
    }
}

fn parse_rfc3339(input: &str) -> Result<DateTime<FixedOffset>, ValueError> {
    DateTime::parse_from_rfc3339(input).map_err(|_| {
        ValueError::new(
            "slot.rfc3339",
            format!("{input:?} is not an RFC 3339 timestamp with an offset"),
        )
    })
}

impl TryFrom<SlotRepr> for Slot {
    type Error = ValueError;

    fn try_from(value: SlotRepr) -> Result<Self, Self::Error> {
        Self::parse(&value.start, &value.end)
    }
}

impl From<Slot> for SlotRepr {
    fn from(value: Slot) -> Self {
        Self {
            start: value.start.to_rfc3339_opts(SecondsFormat::AutoSi, false),
            end: value.end.to_rfc3339_opts(SecondsFormat::AutoSi, false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(start: &str, end: &str) -> Slot {
        Slot::parse(start, end).unwrap()
    }

    #[test]
    fn accepts_30_minutes_to_8_hours() {
        for (start, end) in [
            ("2027-03-02T10:00:00+00:00", "2027-03-02T10:30:00+00:00"),
            ("2027-03-02T10:00:00+00:00", "2027-03-02T18:00:00+00:00"),
            ("2027-03-02T23:30:00+01:00", "2027-03-03T00:30:00+01:00"),
            ("2027-03-02T10:00:00Z", "2027-03-02T12:00:00+01:00"),
        ] {
            assert!(Slot::parse(start, end).is_ok(), "{start} {end}");
        }
    }

    #[test]
    fn rejects_bad_slots() {
        for (start, end, rule) in [
            (
                "2027-03-02T10:00:00+00:00",
                "2027-03-02T10:00:00+00:00",
                "slot.end_after_start",
            ),
            (
                "2027-03-02T11:00:00+00:00",
                "2027-03-02T10:00:00+00:00",
                "slot.end_after_start",
            ),
            (
                "2027-03-02T10:00:00+00:00",
                "2027-03-02T10:29:59+00:00",
                "slot.duration_30min_to_8h",
            ),
            (
                "2027-03-02T10:00:00+00:00",
                "2027-03-02T18:00:01+00:00",
                "slot.duration_30min_to_8h",
            ),
            (
                "2027-03-02T10:00:00",
                "2027-03-02T11:00:00+00:00",
                "slot.rfc3339",
            ),
            (
                "2027-03-02 10:00",
                "2027-03-02T11:00:00+00:00",
                "slot.rfc3339",
            ),
            ("2027-03-02T10:00:00+00:00", "tomorrow", "slot.rfc3339"),
        ] {
            assert_eq!(
                Slot::parse(start, end).unwrap_err().rule,
                rule,
                "{start} {end}"
            );
        }
    }

    #[test]
    fn keeps_the_callers_offsets() {
        let s = slot("2027-03-02T11:00:00+01:00", "2027-03-02T12:00:00+01:00");
        assert_eq!(s.start().offset().local_minus_utc(), 3600);
        assert_eq!(
            serde_json::to_value(s).unwrap(),
            serde_json::json!({"start": "2027-03-02T11:00:00+01:00", "end": "2027-03-02T12:00:00+01:00"})
        );
        assert_eq!(s, slot("2027-03-02T10:00:00Z", "2027-03-02T11:00:00Z"));
    }

    #[test]
    fn invalid_slots_do_not_deserialise() {
        for json in [
            serde_json::json!({"start": "2027-03-02T10:00:00+00:00", "end": "2027-03-02T10:10:00+00:00"}),
            serde_json::json!({"start": "2027-03-02T10:00:00+00:00"}),
            serde_json::json!({"start": "2027-03-02T10:00:00+00:00", "end": "2027-03-02T11:00:00+00:00", "room": 1}),
        ] {
            assert!(
                serde_json::from_value::<Slot>(json.clone()).is_err(),
                "{json}"
            );
        }
    }

    #[test]
    fn overlap_includes_the_buffer() {
        let ten = slot("2027-03-02T10:00:00Z", "2027-03-02T11:00:00Z");
        let eleven = slot("2027-03-02T11:00:00Z", "2027-03-02T12:00:00Z");
        let eleven_thirty = slot("2027-03-02T11:30:00Z", "2027-03-02T12:30:00Z");
        assert!(!ten.overlaps_with_buffer(&eleven, TimeDelta::zero()));
        assert!(ten.overlaps_with_buffer(&eleven, TimeDelta::minutes(1)));
        assert!(eleven.overlaps_with_buffer(&ten, TimeDelta::minutes(1)));
        assert!(!ten.overlaps_with_buffer(&eleven_thirty, TimeDelta::minutes(30)));
        assert!(ten.overlaps_with_buffer(&eleven_thirty, TimeDelta::minutes(31)));
        assert!(ten.overlaps_with_buffer(&ten, TimeDelta::zero()));
        assert_eq!(ten.duration(), TimeDelta::hours(1));
    }
}
