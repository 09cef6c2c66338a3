//! Property: every value object survives a trip through JSON unchanged.

use std::fmt::Debug;

use chrono::{DateTime, FixedOffset, NaiveTime, TimeDelta, Weekday};
use proptest::prelude::*;
use serde::Serialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use super::*;

fn round_trips<T>(value: &T) -> Result<(), TestCaseError>
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let json = serde_json::to_value(value).unwrap();
    let back: T = serde_json::from_value(json.clone())
        .map_err(|e| TestCaseError::fail(format!("{json} does not deserialise: {e}")))?;
    prop_assert_eq!(&back, value);
    Ok(())
}

fn email() -> impl Strategy<Value = EmailAddress> {
    "[A-Za-z0-9._%+'-]{1,30}@[A-Za-z0-9]{1,10}(\\.[A-Za-z0-9-]{1,10}){1,3}"
        .prop_map(|raw| EmailAddress::parse(&raw).unwrap())
}

fn phone() -> impl Strategy<Value = PhoneNumber> {
    "\\+[1-9][0-9]{7,14}".prop_map(|raw| PhoneNumber::parse(&raw).unwrap())
}

fn currency() -> impl Strategy<Value = Currency> {
    prop::sample::select(Currency::all().collect::<Vec<_>>())
}

fn money() -> impl Strategy<Value = Money> {
    (0..=i64::MAX, currency()).prop_map(|(amount, currency)| Money::new(amount, currency).unwrap())
}

fn slot() -> impl Strategy<Value = Slot> {
    (
        1_700_000_000_i64..2_000_000_000,
        -48_i32..=56,
        30_i64..=480,
        0_u32..1_000_000_000,
    )
        .prop_map(|(start_secs, quarter_hours, minutes, nanos)| {
            let offset = FixedOffset::east_opt(quarter_hours * 15 * 60).unwrap();
            let start = DateTime::from_timestamp(start_secs, nanos)
                .unwrap()
                .with_timezone(&offset);
            Slot::new(start, start + TimeDelta::minutes(minutes)).unwrap()
        })
}

fn time_zone() -> impl Strategy<Value = TimeZone> {
    prop::sample::select(chrono_tz::TZ_VARIANTS.to_vec()).prop_map(TimeZone::from_tz)
}

const WEEKDAYS: [Weekday; 7] = [
    Weekday::Mon,
    Weekday::Tue,
    Weekday::Wed,
    Weekday::Thu,
    Weekday::Fri,
    Weekday::Sat,
    Weekday::Sun,
];

fn opening_hours() -> impl Strategy<Value = OpeningHours> {
    // One or two non-overlapping intervals on each weekday that has any.
    let day = (0_u32..600, 1_u32..300, 0_u32..120, 1_u32..300);
    let fallback = prop::sample::select(WEEKDAYS.to_vec());
    (prop::collection::vec(prop::option::of(day), 7), fallback).prop_map(|(days, fallback)| {
        let minute = |m: u32| NaiveTime::from_hms_opt(m / 60, m % 60, 0).unwrap();
        let mut intervals = Vec::new();
        for (weekday, day) in WEEKDAYS.into_iter().zip(days) {
            if let Some((opens, length, gap, second)) = day {
                let closes = opens + length;
                intervals
                    .push(OpeningInterval::new(weekday, minute(opens), minute(closes)).unwrap());
                let reopens = closes + gap;
                if reopens + second < 24 * 60 {
                    intervals.push(
                        OpeningInterval::new(weekday, minute(reopens), minute(reopens + second))
                            .unwrap(),
                    );
                }
            }
        }
        if intervals.is_empty() {
            intervals.push(OpeningInterval::new(fallback, minute(540), minute(1020)).unwrap());
        }
        OpeningHours::new(intervals).unwrap()
    })
}

proptest! {
    #[test]
    fn ids_round_trip(raw in any::<u128>()) {
        round_trips(&FacilityId::from_uuid(Uuid::from_u128(raw)))?;
        round_trips(&BookingId::from_uuid(Uuid::from_u128(raw)))?;
        round_trips(&PaymentId::from_uuid(Uuid::from_u128(raw)))?;
    }

    #[test]
    fn emails_round_trip(value in email()) {
        round_trips(&value)?;
    }

    #[test]
    fn phone_numbers_round_trip(value in phone()) {
        round_trips(&value)?;
    }

    #[test]
    fn money_round_trips(value in money()) {
        round_trips(&value)?;
        round_trips(&value.currency())?;
    }

    #[test]
    fn slots_round_trip_with_their_offsets(value in slot()) {
        round_trips(&value)?;
        let back: Slot = serde_json::from_value(serde_json::to_value(value).unwrap()).unwrap();
        prop_assert_eq!(back.start().offset().local_minus_utc(), value.start().offset().local_minus_utc());
        prop_assert_eq!(back.end().offset().local_minus_utc(), value.end().offset().local_minus_utc());
    }

    #[test]
    fn time_zones_round_trip(value in time_zone()) {
        round_trips(&value)?;
    }

    #[test]
    fn opening_hours_round_trip(value in opening_hours()) {
        round_trips(&value)?;
    }

    #[test]
    fn names_round_trip(raw in "[^\\p{Cc}]{1,200}") {
        prop_assume!(!raw.trim().is_empty());
        round_trips(&FacilityName::parse(&raw).unwrap())?;
        round_trips(&PersonName::parse(&raw).unwrap())?;
        round_trips(&Relationship::parse(&raw).unwrap())?;
    }

    #[test]
    fn quantities_round_trip(people in Capacity::MIN..=Capacity::MAX, minutes in 0..=TurnaroundBuffer::MAX_MINUTES) {
        round_trips(&Capacity::new(people).unwrap())?;
        round_trips(&TurnaroundBuffer::from_minutes(minutes).unwrap())?;
    }

    #[test]
    fn vocabularies_round_trip(
        kind in prop::sample::select(FacilityKind::ALL),
        service in prop::sample::select(ServiceType::ALL),
    ) {
        round_trips(&kind)?;
        round_trips(&service)?;
    }
}
