//! Free windows of a facility: its opening hours, minus the slots held, each widened by the
//! turnaround buffer on both sides.
//!
//! Computed at query time rather than stored: they depend on the range asked for, the opening
//! hours can change, and the reservations they are made from are already in the read model.
//! A window is where a new slot fits the facility's rule exactly: inside one opening interval
//! (in the facility's zone, so daylight-saving days are right) and not within the buffer of a
//! held slot. Windows shorter than the shortest slot (30 minutes) are left out.

use chrono::{DateTime, Duration, NaiveDate, NaiveDateTime, TimeZone as _, Utc};
use chrono_tz::Tz;
use domain::values::OpeningHours;

/// The shortest slot a booking may ask for.
pub(crate) const MIN_SLOT: Duration = Duration::minutes(30);

/// A half-open interval of time, `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Window {
    pub(crate) start: DateTime<Utc>,
    pub(crate) end: DateTime<Utc>,
}

/// The local time `at` on `date` in `tz` as an instant; in a spring-forward gap, the first
/// instant after it.
fn local(tz: Tz, date: NaiveDate, at: chrono::NaiveTime) -> Option<DateTime<Utc>> {
    let naive = NaiveDateTime::new(date, at);
    (0..=2)
        .find_map(|hours| {
            tz.from_local_datetime(&(naive + Duration::hours(hours)))
                .earliest()
        })
        .map(|instant| instant.with_timezone(&Utc))
}

/// The opening intervals of every local day that touches `[from, to)`, clipped to it.
fn opening_windows(
    hours: &OpeningHours,
    tz: Tz,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Vec<Window> {
    let first = from.with_timezone(&tz).date_naive() - Duration::days(1);
    let last = to.with_timezone(&tz).date_naive() + Duration::days(1);
    let mut windows = Vec::new();
    let mut date = first;
    while date <= last {
        for interval in hours.intervals() {
            if interval.weekday() != chrono::Datelike::weekday(&date) {
                continue;
            }
            let (Some(opens), Some(closes)) = (
                local(tz, date, interval.opens()),
                local(tz, date, interval.closes()),
            ) else {
                continue;
            };
            let start = opens.max(from);
            let end = closes.min(to);
            if start < end {
                windows.push(Window { start, end });
            }
        }
        date += Duration::days(1);
    }
    windows.sort_by_key(|window| window.start);
    windows
}

/// Free windows in `[from, to)`: opening windows minus each held slot widened by `buffer`.
pub(crate) fn free_windows(
    hours: &OpeningHours,
    tz: Tz,
    buffer: Duration,
    held: &[Window],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Vec<Window> {
    let mut free = opening_windows(hours, tz, from, to);
    for slot in held {
        let blocked = Window {
            start: slot.start - buffer,
            end: slot.end + buffer,
        };
        free = free
            .into_iter()
            .flat_map(|window| {
                if blocked.end <= window.start || window.end <= blocked.start {
                    return vec![window];
                }
                let mut parts = Vec::new();
                if window.start < blocked.start {
                    parts.push(Window {
                        start: window.start,
                        end: blocked.start,
                    });
                }
                if blocked.end < window.end {
                    parts.push(Window {
                        start: blocked.end,
                        end: window.end,
                    });
                }
                parts
            })
            .collect();
    }
    free.retain(|window| window.end - window.start >= MIN_SLOT);
    free
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // Fixed literals.

    use domain::values::OpeningInterval;

    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn window(start: &str, end: &str) -> Window {
        Window {
            start: at(start),
            end: at(end),
        }
    }

    fn weekdays_9_to_17() -> OpeningHours {
        OpeningHours::new(
            ["mon", "tue", "wed", "thu", "fri"]
                .into_iter()
                .map(|day| OpeningInterval::parse(day, "09:00", "17:00").unwrap())
                .collect(),
        )
        .unwrap()
    }

    #[test]
    fn a_held_slot_and_its_buffer_are_cut_out_of_the_opening_hours() {
        // Tuesday 2027-03-02, London is on GMT.
        let free = free_windows(
            &weekdays_9_to_17(),
            chrono_tz::Europe::London,
            Duration::minutes(30),
            &[window("2027-03-02T10:00:00Z", "2027-03-02T11:00:00Z")],
            at("2027-03-02T00:00:00Z"),
            at("2027-03-03T00:00:00Z"),
        );
        assert_eq!(
            free,
            [
                window("2027-03-02T09:00:00Z", "2027-03-02T09:30:00Z"),
                window("2027-03-02T11:30:00Z", "2027-03-02T17:00:00Z"),
            ]
        );
    }

    #[test]
    fn opening_hours_follow_the_facility_zone_across_daylight_saving() {
        // Monday 2027-03-29 is after the clocks went forward: 09:00 London is 08:00 UTC.
        let free = free_windows(
            &weekdays_9_to_17(),
            chrono_tz::Europe::London,
            Duration::minutes(30),
            &[],
            at("2027-03-29T00:00:00Z"),
            at("2027-03-30T00:00:00Z"),
        );
        assert_eq!(
            free,
            [window("2027-03-29T08:00:00Z", "2027-03-29T16:00:00Z")]
        );
    }

    #[test]
    fn windows_are_clipped_to_the_range_and_short_leftovers_dropped() {
        let free = free_windows(
            &weekdays_9_to_17(),
            chrono_tz::Europe::London,
            Duration::minutes(30),
            &[window("2027-03-02T09:45:00Z", "2027-03-02T16:10:00Z")],
            at("2027-03-02T08:00:00Z"),
            at("2027-03-02T17:00:00Z"),
        );
        assert_eq!(free, []);
        let weekend = free_windows(
            &weekdays_9_to_17(),
            chrono_tz::Europe::London,
            Duration::minutes(30),
            &[],
            at("2027-03-06T00:00:00Z"),
            at("2027-03-08T00:00:00Z"),
        );
        assert_eq!(weekend, []);
    }
}
