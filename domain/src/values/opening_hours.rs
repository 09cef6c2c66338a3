//! Weekly opening hours of a facility, in the facility's local time.

use chrono::{Datelike, NaiveTime, Timelike, Weekday};
use serde::{Deserialize, Serialize};

use super::{Slot, TimeZone};
use crate::ValueError;

/// One opening interval on one weekday, `opens` up to `closes`, in the facility's local time.
///
/// Serialises exactly as `{"weekday": "mon", "opens": "09:00", "closes": "17:00"}`. Times are
/// whole minutes; a facility open until midnight closes at `"23:59"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "IntervalRepr", into = "IntervalRepr")]
pub struct OpeningInterval {
    weekday: Weekday,
    opens: NaiveTime,
    closes: NaiveTime,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct IntervalRepr {
    weekday: String,
    opens: String,
    closes: String,
}

impl OpeningInterval {
    /// An interval on `weekday`; `opens` must be before `closes`, both whole minutes.
    pub fn new(weekday: Weekday, opens: NaiveTime, closes: NaiveTime) -> Result<Self, ValueError> {
        for time in [opens, closes] {
            if time.second() != 0 || time.nanosecond() != 0 {
                return Err(ValueError::new(
                    "opening_hours.whole_minutes",
                    "opening times are whole minutes",
                ));
            }
        }
        if opens >= closes {
            return Err(ValueError::new(
                "opening_hours.opens_before_closes",
                "an opening interval must open before it closes",
            ));
        }
        Ok(Self {
            weekday,
            opens,
            closes,
        })
    }

    /// Parses an interval from its wire parts: `"mon"`..`"sun"` and two `"HH:MM"` times.
    pub fn parse(weekday: &str, opens: &str, closes: &str) -> Result<Self, ValueError> {
        Self::new(
            parse_weekday(weekday)?,
            parse_hhmm(opens)?,
            parse_hhmm(closes)?,
        )
    }

    /// The day of the week.
    pub const fn weekday(&self) -> Weekday {
        self.weekday
    }

    /// Local opening time.
    pub const fn opens(&self) -> NaiveTime {
        self.opens
    }

    /// Local closing time.
    pub const fn closes(&self) -> NaiveTime {
        self.closes
    }

    fn sort_key(&self) -> (u32, NaiveTime) {
        (self.weekday.num_days_from_monday(), self.opens)
    }
}

const WEEKDAY_CODES: [(&str, Weekday); 7] = [
    ("mon", Weekday::Mon),
    ("tue", Weekday::Tue),
    ("wed", Weekday::Wed),
    ("thu", Weekday::Thu),
    ("fri", Weekday::Fri),
    ("sat", Weekday::Sat),
    ("sun", Weekday::Sun),
];

fn parse_weekday(code: &str) -> Result<Weekday, ValueError> {
    WEEKDAY_CODES
        .iter()
        .find(|(known, _)| *known == code)
        .map(|(_, weekday)| *weekday)
        .ok_or_else(|| {
            ValueError::new(
                "opening_hours.weekday",
                format!(
                    "{code:?} is not a weekday: expected one of mon, tue, wed, thu, fri, sat, sun"
                ),
            )
        })
}

fn weekday_code(weekday: Weekday) -> &'static str {
    WEEKDAY_CODES[weekday.num_days_from_monday() as usize].0
}

/// Parses exactly `HH:MM` (two digits each, 24-hour clock).
fn parse_hhmm(input: &str) -> Result<NaiveTime, ValueError> {
    let error = || {
        ValueError::new(
            "opening_hours.time_format",
            format!("{input:?} is not a time of day in HH:MM form"),
        )
    };
    let bytes = input.as_bytes();
    let well_formed = bytes.len() == 5
        && bytes[2] == b':'
        && [0, 1, 3, 4].iter().all(|&i| bytes[i].is_ascii_digit());
    if !well_formed {
        return Err(error());
    }
    let hours = input[..2].parse().map_err(|_| error())?;
    let minutes = input[3..].parse().map_err(|_| error())?;
    NaiveTime::from_hms_opt(hours, minutes, 0).ok_or_else(error)
}

impl TryFrom<IntervalRepr> for OpeningInterval {
    type Error = ValueError;

    fn try_from(value: IntervalRepr) -> Result<Self, Self::Error> {
        Self::parse(&value.weekday, &value.opens, &value.closes)
    }
}

impl From<OpeningInterval> for IntervalRepr {
    fn from(value: OpeningInterval) -> Self {
        Self {
            weekday: weekday_code(value.weekday).to_owned(),
            opens: value.opens.format("%H:%M").to_string(),
            closes: value.closes.format("%H:%M").to_string(),
        }
    }
}

/// A facility's weekly opening hours: at least one interval, and no two intervals on the same
/// weekday overlap (touching is allowed).
///
/// Serialises as a JSON array of [`OpeningInterval`]s, sorted by weekday (Monday first) and
/// opening time whatever the input order, so that equal hours have one representation.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "Vec<OpeningInterval>", into = "Vec<OpeningInterval>")]
pub struct OpeningHours(Vec<OpeningInterval>);

impl OpeningHours {
    /// Weekly hours made of `intervals`.
    pub fn new(mut intervals: Vec<OpeningInterval>) -> Result<Self, ValueError> {
        if intervals.is_empty() {
            return Err(ValueError::new(
                "opening_hours.empty",
                "a facility needs at least one opening interval",
            ));
        }
        intervals.sort_by_key(OpeningInterval::sort_key);
        let overlap = intervals
            .windows(2)
            .any(|pair| pair[0].weekday == pair[1].weekday && pair[1].opens < pair[0].closes);
        if overlap {
            return Err(ValueError::new(
                "opening_hours.overlap",
                "opening intervals on the same weekday cannot overlap",
            ));
        }
        Ok(Self(intervals))
    }

    /// The intervals, Monday first, then by opening time.
    pub fn intervals(&self) -> &[OpeningInterval] {
        &self.0
    }

    /// Whether `slot` lies within one opening interval, in the facility's zone `tz`.
    ///
    /// Both ends are converted to local time (so daylight-saving days are handled), must fall
    /// on the same local date, and must lie inside a single interval of that date's weekday:
    /// `start >= opens` and `end <= closes`. A slot spanning two touching intervals is refused,
    /// because the facility may close in between.
    pub fn contains(&self, tz: &TimeZone, slot: &Slot) -> bool {
        let start = slot.start().with_timezone(&tz.tz());
        let end = slot.end().with_timezone(&tz.tz());
        if start.date_naive() != end.date_naive() {
            return false;
        }
        let (weekday, from, to) = (start.weekday(), start.time(), end.time());
        self.0.iter().any(|interval| {
            interval.weekday == weekday && interval.opens <= from && to <= interval.closes
        })
    }
}

impl TryFrom<Vec<OpeningInterval>> for OpeningHours {
    type Error = ValueError;

    fn try_from(value: Vec<OpeningInterval>) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<OpeningHours> for Vec<OpeningInterval> {
    fn from(value: OpeningHours) -> Self {
        value.0
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn interval(weekday: &str, opens: &str, closes: &str) -> OpeningInterval {
        OpeningInterval::parse(weekday, opens, closes).unwrap()
    }

    fn london() -> TimeZone {
        TimeZone::parse("Europe/London").unwrap()
    }

    fn slot(start: &str, end: &str) -> Slot {
        Slot::parse(start, end).unwrap()
    }

    fn sundays_9_to_5() -> OpeningHours {
        OpeningHours::new(vec![interval("sun", "09:00", "17:00")]).unwrap()
    }

    #[test]
    fn an_interval_serialises_as_weekday_and_hh_mm() {
        assert_eq!(
            serde_json::to_value(interval("mon", "09:00", "17:30")).unwrap(),
            json!({"weekday": "mon", "opens": "09:00", "closes": "17:30"})
        );
    }

    #[test]
    fn parses_valid_intervals() {
        for (weekday, opens, closes) in [
            ("mon", "09:00", "17:00"),
            ("sun", "00:00", "23:59"),
            ("wed", "12:30", "12:31"),
        ] {
            let parsed = interval(weekday, opens, closes);
            assert_eq!(weekday_code(parsed.weekday()), weekday);
        }
    }

    #[test]
    fn rejects_invalid_intervals() {
        for (weekday, opens, closes, rule) in [
            ("monday", "09:00", "17:00", "opening_hours.weekday"),
            ("Mon", "09:00", "17:00", "opening_hours.weekday"),
            ("mon", "9:00", "17:00", "opening_hours.time_format"),
            ("mon", "09:00:00", "17:00", "opening_hours.time_format"),
            ("mon", "24:00", "17:00", "opening_hours.time_format"),
            ("mon", "09:60", "17:00", "opening_hours.time_format"),
            ("mon", "+9:00", "17:00", "opening_hours.time_format"),
            ("mon", "17:00", "09:00", "opening_hours.opens_before_closes"),
            ("mon", "09:00", "09:00", "opening_hours.opens_before_closes"),
        ] {
            assert_eq!(
                OpeningInterval::parse(weekday, opens, closes)
                    .unwrap_err()
                    .rule,
                rule,
                "{weekday} {opens} {closes}"
            );
        }
    }

    #[test]
    fn opening_hours_need_an_interval_and_no_overlap() {
        assert_eq!(
            OpeningHours::new(vec![]).unwrap_err().rule,
            "opening_hours.empty"
        );
        let overlapping = vec![
            interval("mon", "09:00", "13:00"),
            interval("mon", "12:00", "17:00"),
        ];
        assert_eq!(
            OpeningHours::new(overlapping).unwrap_err().rule,
            "opening_hours.overlap"
        );
        let touching = vec![
            interval("mon", "13:00", "17:00"),
            interval("mon", "09:00", "13:00"),
        ];
        assert!(OpeningHours::new(touching).is_ok());
        let other_days = vec![
            interval("mon", "09:00", "13:00"),
            interval("tue", "09:00", "13:00"),
        ];
        assert!(OpeningHours::new(other_days).is_ok());
    }

    #[test]
    fn opening_hours_are_kept_in_week_order() {
        let hours = OpeningHours::new(vec![
            interval("sun", "10:00", "12:00"),
            interval("mon", "13:00", "17:00"),
            interval("mon", "09:00", "12:00"),
        ])
        .unwrap();
        assert_eq!(
            serde_json::to_value(&hours).unwrap(),
            json!([
                {"weekday": "mon", "opens": "09:00", "closes": "12:00"},
                {"weekday": "mon", "opens": "13:00", "closes": "17:00"},
                {"weekday": "sun", "opens": "10:00", "closes": "12:00"},
            ])
        );
    }

    #[test]
    fn invalid_opening_hours_do_not_deserialise() {
        for json in [
            json!([]),
            json!([{"weekday": "mon", "opens": "17:00", "closes": "09:00"}]),
            json!([{"weekday": "mon", "opens": "09:00"}]),
            json!([{"weekday": "mon", "opens": "09:00", "closes": "17:00", "note": "x"}]),
            json!([
                {"weekday": "tue", "opens": "09:00", "closes": "17:00"},
                {"weekday": "tue", "opens": "16:00", "closes": "18:00"}
            ]),
        ] {
            assert!(
                serde_json::from_value::<OpeningHours>(json.clone()).is_err(),
                "{json}"
            );
        }
    }

    #[test]
    fn a_slot_inside_one_interval_is_contained() {
        let hours = OpeningHours::new(vec![
            interval("tue", "09:00", "12:00"),
            interval("tue", "12:00", "17:00"),
        ])
        .unwrap();
        // 2027-03-02 is a Tuesday; London is on GMT.
        assert!(hours.contains(
            &london(),
            &slot("2027-03-02T09:00:00Z", "2027-03-02T12:00:00Z")
        ));
        assert!(hours.contains(
            &london(),
            &slot("2027-03-02T16:00:00Z", "2027-03-02T17:00:00Z")
        ));
        assert!(hours.contains(
            &london(),
            &slot("2027-03-02T11:00:00+01:00", "2027-03-02T12:00:00+01:00")
        ));
        assert!(!hours.contains(
            &london(),
            &slot("2027-03-02T08:30:00Z", "2027-03-02T09:30:00Z")
        ));
        assert!(!hours.contains(
            &london(),
            &slot("2027-03-02T16:30:00Z", "2027-03-02T17:30:00Z")
        ));
        // Spanning two touching intervals is not "within one interval".
        assert!(!hours.contains(
            &london(),
            &slot("2027-03-02T11:00:00Z", "2027-03-02T13:00:00Z")
        ));
        // Wednesday has no hours.
        assert!(!hours.contains(
            &london(),
            &slot("2027-03-03T10:00:00Z", "2027-03-03T11:00:00Z")
        ));
    }

    #[test]
    fn a_slot_that_crosses_local_midnight_is_not_contained() {
        let hours = OpeningHours::new(vec![
            interval("mon", "00:00", "23:59"),
            interval("tue", "00:00", "23:59"),
        ])
        .unwrap();
        assert!(!hours.contains(
            &london(),
            &slot("2027-03-01T23:30:00Z", "2027-03-02T00:30:00Z")
        ));
    }

    #[test]
    fn opening_hours_are_read_in_the_facilitys_zone() {
        let hours = OpeningHours::new(vec![interval("tue", "09:00", "17:00")]).unwrap();
        let new_york = TimeZone::parse("America/New_York").unwrap();
        // 14:00Z on 2027-03-02 is 09:00 in New York (EST, UTC-5).
        assert!(hours.contains(
            &new_york,
            &slot("2027-03-02T14:00:00Z", "2027-03-02T15:00:00Z")
        ));
        assert!(!hours.contains(
            &new_york,
            &slot("2027-03-02T09:00:00Z", "2027-03-02T10:00:00Z")
        ));
        let sydney = TimeZone::parse("Australia/Sydney").unwrap();
        // 23:00Z on Monday 2027-03-01 is 10:00 on Tuesday in Sydney (AEDT, UTC+11).
        assert!(hours.contains(
            &sydney,
            &slot("2027-03-01T23:00:00Z", "2027-03-02T00:00:00Z")
        ));
    }

    #[test]
    fn on_the_spring_forward_sunday_hours_follow_british_summer_time() {
        let spring = chrono::NaiveDate::from_ymd_opt(2027, 3, 28).unwrap();
        assert_eq!(spring.weekday(), Weekday::Sun);
        let hours = sundays_9_to_5();
        // Clocks went forward at 01:00Z: 08:00Z is 09:00 BST, inside.
        assert!(hours.contains(
            &london(),
            &slot("2027-03-28T08:00:00Z", "2027-03-28T09:00:00Z")
        ));
        // 16:00Z is 17:00 BST: after closing, though 16:00 would be inside on GMT.
        assert!(!hours.contains(
            &london(),
            &slot("2027-03-28T16:00:00Z", "2027-03-28T16:30:00Z")
        ));
        // The same instants written with the BST offset give the same answer.
        assert!(hours.contains(
            &london(),
            &slot("2027-03-28T09:00:00+01:00", "2027-03-28T10:00:00+01:00")
        ));
        // The Sunday before was still on GMT, so 08:00Z was 08:00 and closed.
        assert!(!hours.contains(
            &london(),
            &slot("2027-03-21T08:00:00Z", "2027-03-21T09:00:00Z")
        ));
    }

    #[test]
    fn on_the_fall_back_sunday_hours_follow_greenwich_mean_time() {
        let autumn = chrono::NaiveDate::from_ymd_opt(2027, 10, 31).unwrap();
        assert_eq!(autumn.weekday(), Weekday::Sun);
        let hours = sundays_9_to_5();
        // Clocks went back at 01:00Z: 09:00Z is 09:00 GMT, inside; 08:30Z is 08:30, closed.
        assert!(hours.contains(
            &london(),
            &slot("2027-10-31T09:00:00Z", "2027-10-31T10:00:00Z")
        ));
        assert!(!hours.contains(
            &london(),
            &slot("2027-10-31T08:30:00Z", "2027-10-31T09:30:00Z")
        ));
        assert!(hours.contains(
            &london(),
            &slot("2027-10-31T16:00:00Z", "2027-10-31T17:00:00Z")
        ));
        // A week earlier, on BST, 08:30Z was 09:30 local and 16:00Z was 17:00 local.
        assert!(hours.contains(
            &london(),
            &slot("2027-10-24T08:30:00Z", "2027-10-24T09:30:00Z")
        ));
        assert!(!hours.contains(
            &london(),
            &slot("2027-10-24T16:00:00Z", "2027-10-24T17:00:00Z")
        ));
    }

    #[test]
    fn a_slot_across_the_missing_hour_is_measured_in_real_time() {
        let hours = OpeningHours::new(vec![interval("sun", "00:30", "04:00")]).unwrap();
        // 00:30Z to 01:30Z is 00:30 GMT to 02:30 BST: one real hour, inside the interval.
        let s = slot("2027-03-28T00:30:00Z", "2027-03-28T01:30:00Z");
        assert_eq!(s.duration(), chrono::TimeDelta::hours(1));
        assert!(hours.contains(&london(), &s));
    }
}
