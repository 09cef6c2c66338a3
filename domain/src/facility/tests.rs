use chrono::{DateTime, TimeDelta, TimeZone as _, Utc};
use proptest::prelude::*;
use serde_json::json;

use super::*;
use crate::fixtures::{
    booking_id, facility_id, facility_registered, now, opening_hours, other_booking_id,
    register_facility, slot, slot_at,
};
use crate::testing::given;
use crate::values::{OpeningInterval, TurnaroundBuffer};

fn reserve(booking_id: BookingId, slot: Slot) -> FacilityCommand {
    FacilityCommand::ReserveSlot {
        booking_id,
        slot,
        now: now(),
    }
}

fn reserved(booking_id: BookingId, slot: Slot) -> FacilityEvent {
    FacilityEvent::SlotReserved { booking_id, slot }
}

fn rejected(booking_id: BookingId, slot: Slot, reason: SlotRejectionReason) -> FacilityEvent {
    FacilityEvent::SlotRejected {
        booking_id,
        slot,
        reason,
    }
}

#[test]
fn a_facility_registered_for_a_home_belongs_to_it() {
    let home = FuneralHomeId::new();
    let FacilityCommand::Register {
        facility_id,
        name,
        kind,
        capacity,
        time_zone,
        opening_hours,
        turnaround,
        ..
    } = register_facility()
    else {
        unreachable!()
    };
    let events = Facility::decide(
        &FacilityState::default(),
        FacilityCommand::Register {
            facility_id,
            name,
            kind,
            capacity,
            time_zone,
            opening_hours,
            turnaround,
            funeral_home_id: Some(home),
        },
    )
    .unwrap();
    assert!(matches!(
        &events[..],
        [FacilityEvent::FacilityRegistered { funeral_home_id: Some(h), .. }] if *h == home
    ));
    let state = Facility::replay(&events);
    assert_eq!(state.profile().unwrap().funeral_home_id, Some(home));
    // Registered before homes were named: no home, which readers take as the default one.
    let old = Facility::replay(&[facility_registered()]);
    assert_eq!(old.profile().unwrap().funeral_home_id, None);
}

#[test]
fn registers_a_new_facility() {
    let state = given::<Facility>([])
        .when(register_facility())
        .then([facility_registered()]);
    let profile = state.profile().unwrap();
    assert_eq!(profile.facility_id, facility_id());
    assert_eq!(profile.turnaround.minutes(), 30);
}

#[test]
fn a_facility_cannot_be_registered_twice() {
    given::<Facility>([facility_registered()])
        .when(register_facility())
        .then_err(|e| matches!(e, DomainError::FacilityAlreadyRegistered));
}

#[test]
fn reserves_a_free_slot_within_opening_hours() {
    let state = given::<Facility>([facility_registered()])
        .when(reserve(booking_id(), slot()))
        .then([reserved(booking_id(), slot())]);
    assert_eq!(state.reservation(booking_id()), Some(&slot()));
}

#[test]
fn reserving_on_an_unregistered_facility_is_not_found() {
    given::<Facility>([])
        .when(reserve(booking_id(), slot()))
        .then_err(|e| matches!(e, DomainError::FacilityNotRegistered));
}

#[test]
fn reserving_the_slot_already_held_is_a_no_op() {
    given::<Facility>([facility_registered(), reserved(booking_id(), slot())])
        .when(reserve(booking_id(), slot()))
        .then([]);
}

#[test]
fn a_booking_cannot_hold_two_different_slots() {
    let later = slot_at("2027-03-02T14:00:00+00:00", "2027-03-02T15:00:00+00:00");
    given::<Facility>([facility_registered(), reserved(booking_id(), slot())])
        .when(reserve(booking_id(), later))
        .then_err(|e| {
            matches!(e, DomainError::BookingHoldsAnotherSlot { booking_id: b } if *b == booking_id())
        });
}

#[test]
fn rejects_a_slot_in_the_past() {
    let past = slot_at("2027-02-23T10:00:00+00:00", "2027-02-23T11:00:00+00:00");
    given::<Facility>([facility_registered()])
        .when(reserve(booking_id(), past))
        .then([rejected(booking_id(), past, SlotRejectionReason::InPast)]);
}

#[test]
fn rejects_a_slot_that_starts_exactly_now() {
    let starting_now = slot_at("2027-02-25T12:00:00+00:00", "2027-02-25T13:00:00+00:00");
    given::<Facility>([facility_registered()])
        .when(reserve(booking_id(), starting_now))
        .then([rejected(
            booking_id(),
            starting_now,
            SlotRejectionReason::InPast,
        )]);
}

#[test]
fn rejects_a_slot_outside_opening_hours() {
    let evening = slot_at("2027-03-02T17:00:00+00:00", "2027-03-02T18:00:00+00:00");
    given::<Facility>([facility_registered()])
        .when(reserve(booking_id(), evening))
        .then([rejected(
            booking_id(),
            evening,
            SlotRejectionReason::OutsideOpeningHours,
        )]);
}

#[test]
fn opening_hours_are_checked_in_the_facilitys_time_zone() {
    // 16:30 to 17:00 UTC on a summer Tuesday is 17:30 to 18:00 in London: closed.
    let summer_evening = slot_at("2027-06-01T16:30:00+00:00", "2027-06-01T17:00:00+00:00");
    given::<Facility>([facility_registered()])
        .when(reserve(booking_id(), summer_evening))
        .then([rejected(
            booking_id(),
            summer_evening,
            SlotRejectionReason::OutsideOpeningHours,
        )]);
}

#[test]
fn rejects_a_slot_that_overlaps_another_booking() {
    let overlapping = slot_at("2027-03-02T10:30:00+00:00", "2027-03-02T11:30:00+00:00");
    given::<Facility>([facility_registered(), reserved(booking_id(), slot())])
        .when(reserve(other_booking_id(), overlapping))
        .then([rejected(
            other_booking_id(),
            overlapping,
            SlotRejectionReason::OverlapsExisting,
        )]);
}

#[test]
fn rejects_a_slot_that_overlaps_the_buffer() {
    // The chapel needs 30 minutes between services; 11:00 to 11:29 is too soon after 10-11.
    let too_soon = slot_at("2027-03-02T11:29:00+00:00", "2027-03-02T12:29:00+00:00");
    given::<Facility>([facility_registered(), reserved(booking_id(), slot())])
        .when(reserve(other_booking_id(), too_soon))
        .then([rejected(
            other_booking_id(),
            too_soon,
            SlotRejectionReason::OverlapsExisting,
        )]);
    // The buffer applies before a service too.
    let too_close_before = slot_at("2027-03-02T09:00:00+00:00", "2027-03-02T09:45:00+00:00");
    given::<Facility>([facility_registered(), reserved(booking_id(), slot())])
        .when(reserve(other_booking_id(), too_close_before))
        .then([rejected(
            other_booking_id(),
            too_close_before,
            SlotRejectionReason::OverlapsExisting,
        )]);
}

#[test]
fn reserves_a_slot_that_starts_when_the_buffer_ends() {
    let after_buffer = slot_at("2027-03-02T11:30:00+00:00", "2027-03-02T12:30:00+00:00");
    given::<Facility>([facility_registered(), reserved(booking_id(), slot())])
        .when(reserve(other_booking_id(), after_buffer))
        .then([reserved(other_booking_id(), after_buffer)]);
}

#[test]
fn a_rejected_slot_holds_nothing() {
    let past = slot_at("2027-02-23T10:00:00+00:00", "2027-02-23T11:00:00+00:00");
    let state = given::<Facility>([facility_registered()])
        .when(reserve(booking_id(), past))
        .then([rejected(booking_id(), past, SlotRejectionReason::InPast)]);
    assert!(state.reservations().is_empty());
}

#[test]
fn releases_a_held_slot_and_frees_it_for_others() {
    let state = given::<Facility>([facility_registered(), reserved(booking_id(), slot())])
        .when(FacilityCommand::ReleaseSlot {
            booking_id: booking_id(),
        })
        .then([FacilityEvent::SlotReleased {
            booking_id: booking_id(),
        }]);
    assert!(state.reservations().is_empty());
    given::<Facility>([
        facility_registered(),
        reserved(booking_id(), slot()),
        FacilityEvent::SlotReleased {
            booking_id: booking_id(),
        },
    ])
    .when(reserve(other_booking_id(), slot()))
    .then([reserved(other_booking_id(), slot())]);
}

#[test]
fn releasing_a_slot_that_is_not_held_is_a_no_op() {
    given::<Facility>([facility_registered(), reserved(booking_id(), slot())])
        .when(FacilityCommand::ReleaseSlot {
            booking_id: other_booking_id(),
        })
        .then([]);
}

#[test]
fn releasing_on_an_unregistered_facility_is_not_found() {
    given::<Facility>([])
        .when(FacilityCommand::ReleaseSlot {
            booking_id: booking_id(),
        })
        .then_err(|e| matches!(e, DomainError::FacilityNotRegistered));
}

fn sundays_only() -> OpeningHours {
    OpeningHours::new(vec![
        OpeningInterval::parse("sun", "10:00", "16:00").unwrap(),
    ])
    .unwrap()
}

#[test]
fn changes_opening_hours_and_keeps_existing_reservations() {
    let state = given::<Facility>([facility_registered(), reserved(booking_id(), slot())])
        .when(FacilityCommand::ChangeOpeningHours {
            opening_hours: sundays_only(),
        })
        .then([FacilityEvent::OpeningHoursChanged {
            opening_hours: sundays_only(),
        }]);
    assert_eq!(state.reservation(booking_id()), Some(&slot()));
    assert_eq!(state.profile().unwrap().opening_hours, sundays_only());
}

#[test]
fn new_opening_hours_apply_to_new_reservations() {
    let tuesday = slot_at("2027-03-09T10:00:00+00:00", "2027-03-09T11:00:00+00:00");
    given::<Facility>([
        facility_registered(),
        FacilityEvent::OpeningHoursChanged {
            opening_hours: sundays_only(),
        },
    ])
    .when(reserve(booking_id(), tuesday))
    .then([rejected(
        booking_id(),
        tuesday,
        SlotRejectionReason::OutsideOpeningHours,
    )]);
}

#[test]
fn setting_the_same_opening_hours_again_is_a_no_op() {
    given::<Facility>([facility_registered()])
        .when(FacilityCommand::ChangeOpeningHours {
            opening_hours: opening_hours(),
        })
        .then([]);
}

#[test]
fn changing_opening_hours_of_an_unregistered_facility_is_not_found() {
    given::<Facility>([])
        .when(FacilityCommand::ChangeOpeningHours {
            opening_hours: opening_hours(),
        })
        .then_err(|e| {
            matches!(e, DomainError::FacilityNotRegistered)
                && e.kind() == crate::RejectionKind::NotFound
        });
}

#[test]
fn facility_events_have_a_stable_wire_shape() {
    let [registered, hours_changed, reserved, rejected, released] =
        <[FacilityEvent; 5]>::try_from(FacilityEvent::samples()).unwrap();
    assert_eq!(
        serde_json::to_value(&registered).unwrap(),
        json!({"event_type": "FacilityRegistered", "data": {
            "facility_id": "5f3c1e2a-8b4d-4c6e-9a01-2b3c4d5e6f70",
            "name": "St Mary's Chapel",
            "kind": "chapel",
            "capacity": 120,
            "time_zone": "Europe/London",
            "opening_hours": [
                {"weekday": "mon", "opens": "09:00", "closes": "17:00"},
                {"weekday": "tue", "opens": "09:00", "closes": "17:00"},
                {"weekday": "wed", "opens": "09:00", "closes": "17:00"},
                {"weekday": "thu", "opens": "09:00", "closes": "17:00"},
                {"weekday": "fri", "opens": "09:00", "closes": "17:00"},
                {"weekday": "sat", "opens": "10:00", "closes": "14:00"}
            ],
            "turnaround_minutes": 30,
            "funeral_home_id": null
        }})
    );
    assert_eq!(
        serde_json::to_value(&hours_changed).unwrap(),
        json!({"event_type": "OpeningHoursChanged", "data": {"opening_hours": [
            {"weekday": "mon", "opens": "08:30", "closes": "12:00"},
            {"weekday": "mon", "opens": "13:00", "closes": "18:00"},
            {"weekday": "sun", "opens": "11:00", "closes": "15:00"}
        ]}})
    );
    assert_eq!(
        serde_json::to_value(&reserved).unwrap(),
        json!({"event_type": "SlotReserved", "data": {
            "booking_id": "6a1f7a52-34b4-4e6b-9d0e-0c1f3a9b2c11",
            "slot": {"start": "2027-03-02T10:00:00+00:00", "end": "2027-03-02T11:00:00+00:00"}
        }})
    );
    assert_eq!(
        serde_json::to_value(&rejected).unwrap(),
        json!({"event_type": "SlotRejected", "data": {
            "booking_id": "7b2e8c63-45c5-4f7c-8e1f-1d2e4b0c3d22",
            "slot": {"start": "2027-03-02T10:30:00+00:00", "end": "2027-03-02T11:30:00+00:00"},
            "reason": "overlaps_existing"
        }})
    );
    assert_eq!(
        serde_json::to_value(&released).unwrap(),
        json!({"event_type": "SlotReleased", "data": {
            "booking_id": "6a1f7a52-34b4-4e6b-9d0e-0c1f3a9b2c11"
        }})
    );
}

#[test]
fn facility_events_refuse_unknown_or_invalid_fields() {
    for wire in [
        json!({"event_type": "SlotReleased", "data": {
            "booking_id": "6a1f7a52-34b4-4e6b-9d0e-0c1f3a9b2c11", "extra": 1
        }}),
        json!({"event_type": "SlotReleased", "data": {}}),
        json!({"event_type": "SlotExploded", "data": {}}),
        json!({"event_type": "SlotRejected", "data": {
            "booking_id": "6a1f7a52-34b4-4e6b-9d0e-0c1f3a9b2c11",
            "slot": {"start": "2027-03-02T10:30:00+00:00", "end": "2027-03-02T10:35:00+00:00"},
            "reason": "overlaps_existing"
        }}),
        json!({"event_type": "SlotRejected", "data": {
            "booking_id": "6a1f7a52-34b4-4e6b-9d0e-0c1f3a9b2c11",
            "slot": {"start": "2027-03-02T10:30:00+00:00", "end": "2027-03-02T11:30:00+00:00"},
            "reason": "because"
        }}),
    ] {
        assert!(
            serde_json::from_value::<FacilityEvent>(wire.clone()).is_err(),
            "{wire}"
        );
    }
}

// ---- Property: no two reservations ever overlap, turnaround included. ----

#[derive(Debug, Clone)]
enum Op {
    Reserve {
        booking: u128,
        day: i64,
        quarter: i64,
        quarters: i64,
    },
    Release {
        booking: u128,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..8_u128, 0..3_i64, 0..96_i64, 2..=32_i64).prop_map(|(booking, day, quarter, quarters)| {
            Op::Reserve { booking, day, quarter, quarters }
        }),
        1 => (0..8_u128).prop_map(|booking| Op::Release { booking }),
    ]
}

fn open_all_week() -> OpeningHours {
    let days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
    OpeningHours::new(
        days.iter()
            .map(|day| OpeningInterval::parse(day, "07:00", "21:00").unwrap())
            .collect(),
    )
    .unwrap()
}

fn clock() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2027, 3, 1, 0, 0, 0).unwrap()
}

fn command_for(op: &Op) -> FacilityCommand {
    match *op {
        Op::Reserve {
            booking,
            day,
            quarter,
            quarters,
        } => {
            let start = clock() + TimeDelta::days(day) + TimeDelta::minutes(15 * quarter);
            let end = start + TimeDelta::minutes(15 * quarters);
            FacilityCommand::ReserveSlot {
                booking_id: BookingId::from_uuid(uuid::Uuid::from_u128(booking)),
                slot: Slot::new(start.fixed_offset(), end.fixed_offset()).unwrap(),
                // "now" moves with the day so that some requests land in the past.
                now: clock() + TimeDelta::hours(10 * day),
            }
        }
        Op::Release { booking } => FacilityCommand::ReleaseSlot {
            booking_id: BookingId::from_uuid(uuid::Uuid::from_u128(booking)),
        },
    }
}

proptest! {
    #[test]
    fn no_two_reservations_ever_overlap_including_the_buffer(
        buffer in 0..=TurnaroundBuffer::MAX_MINUTES,
        time_zone in prop::sample::select(vec!["Europe/London", "UTC", "America/New_York"]),
        ops in prop::collection::vec(op(), 1..60),
    ) {
        let turnaround = TurnaroundBuffer::from_minutes(buffer).unwrap();
        let time_zone = TimeZone::parse(time_zone).unwrap();
        let mut state = Facility::replay(&[FacilityEvent::FacilityRegistered {
            facility_id: facility_id(),
            name: FacilityName::parse("Test Hall").unwrap(),
            kind: FacilityKind::ReceptionHall,
            capacity: Capacity::new(50).unwrap(),
            time_zone,
            opening_hours: open_all_week(),
            turnaround_minutes: turnaround,
            funeral_home_id: None,
        }]);
        for op in &ops {
            match Facility::decide(&state, command_for(op)) {
                Ok(events) => {
                    prop_assert!(events.len() <= 1);
                    state = events.iter().fold(state, Facility::evolve);
                }
                Err(DomainError::BookingHoldsAnotherSlot { .. }) => {}
                Err(other) => prop_assert!(false, "unexpected refusal {other:?}"),
            }
            let held: Vec<&Slot> = state.reservations().values().collect();
            for (i, a) in held.iter().enumerate() {
                prop_assert!(open_all_week().contains(&time_zone, a));
                for b in &held[i + 1..] {
                    prop_assert!(
                        !a.overlaps_with_buffer(b, turnaround.as_duration()),
                        "{a:?} and {b:?} overlap with a {buffer}-minute buffer"
                    );
                }
            }
        }
    }
}

/// docs/memory.md: a reservation is forgotten only once its end and the turnaround after it
/// lie at or before the horizon; the one still inside its turnaround is kept, and a slot that
/// overlapped it is still refused.
#[test]
fn only_reservations_ended_turnaround_included_are_forgotten() {
    let late = slot_at("2027-03-02T14:00:00+00:00", "2027-03-02T15:00:00+00:00");
    let mut state = Facility::replay(&[
        facility_registered(),
        reserved(booking_id(), slot()),
        reserved(other_booking_id(), late),
    ]);
    let at = |s: &str| -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default()
    };
    // 11:00 end + 30 minutes of turnaround: still held at 11:29.
    assert_eq!(
        state.forget_ended_reservations(at("2027-03-02T11:29:00+00:00")),
        0
    );
    assert_eq!(
        state.forget_ended_reservations(at("2027-03-02T11:30:00+00:00")),
        1
    );
    assert_eq!(state.reservation(booking_id()), None);
    assert_eq!(state.reservation(other_booking_id()), Some(&late));
    assert_eq!(
        state.forget_ended_reservations(at("2027-03-02T16:00:00+00:00")),
        1
    );
    assert!(state.reservations().is_empty());
    assert_eq!(FacilityState::default().forget_ended_reservations(now()), 0);
}
