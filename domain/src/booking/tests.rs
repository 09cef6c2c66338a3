use chrono::{DateTime, NaiveDate, TimeDelta, TimeZone as _, Utc};
use proptest::prelude::*;
use serde_json::json;

use super::*;
use crate::RejectionKind;
use crate::fixtures::{
    booking_id, booking_requested, deceased, family_contact, now, price, request_booking,
    sealed_personal, slot, slot_at,
};
use crate::pricing::Adjustment;
use crate::testing::given;
use crate::values::Currency;

/// The fixture request with some fields changed.
fn request_with(change: impl FnOnce(&mut BookingCommand)) -> BookingCommand {
    let mut command = request_booking();
    change(&mut command);
    command
}

fn set_slot(command: &mut BookingCommand, new_slot: Slot) {
    if let BookingCommand::Request { slot, .. } = command {
        *slot = new_slot;
    }
}

fn set_date_of_death(command: &mut BookingCommand, date: NaiveDate) {
    if let BookingCommand::Request { deceased, .. } = command {
        deceased.date_of_death = date;
    }
}

fn set_now(command: &mut BookingCommand, instant: DateTime<Utc>) {
    if let BookingCommand::Request { now, .. } = command {
        *now = instant;
    }
}

fn date(y: i32, m: u32, d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(y, m, d).unwrap()
}

fn held() -> BookingEvent {
    BookingEvent::BookingSlotHeld {}
}

fn confirmed() -> BookingEvent {
    BookingEvent::BookingConfirmed {}
}

fn cancel_now() -> BookingCommand {
    BookingCommand::Cancel {
        reason: Some("changed plans".to_owned()),
        now: now(),
    }
}

fn reject() -> BookingCommand {
    BookingCommand::Reject {
        reason: "outside_opening_hours".to_owned(),
    }
}

fn fail() -> BookingCommand {
    BookingCommand::Fail {
        reason: "payment declined".to_owned(),
    }
}

fn invalid_transition(from: BookingStatus, command: &'static str) -> impl Fn(&DomainError) -> bool {
    move |e| {
        matches!(e, DomainError::InvalidTransition { from: f, command: c } if *f == from && *c == command)
            && e.kind() == RejectionKind::Conflict
    }
}

// ---- Request ----

#[test]
fn a_family_requests_a_booking() {
    let state = given::<Booking>([])
        .when(request_booking())
        .then([booking_requested()]);
    assert_eq!(state.status(), Some(BookingStatus::Requested));
    assert_eq!(state.slot(), Some(&slot()));
    assert_eq!(state.booking_id(), Some(booking_id()));
    assert_eq!(state.price(), Some(price()));
}

#[test]
fn a_booking_cannot_be_requested_twice() {
    given::<Booking>([booking_requested()])
        .when(request_booking())
        .then_err(|e| matches!(e, DomainError::BookingAlreadyRequested));
}

#[test]
fn a_booking_needs_at_least_one_family_contact() {
    let command = request_with(|c| {
        if let BookingCommand::Request {
            family_contacts, ..
        } = c
        {
            family_contacts.clear();
        }
    });
    given::<Booking>([]).when(command).then_err(|e| {
        matches!(e, DomainError::NoFamilyContacts) && e.field() == Some("family_contacts")
    });
}

fn with_contacts(count: usize) -> BookingCommand {
    request_with(|c| {
        if let BookingCommand::Request {
            family_contacts, ..
        } = c
        {
            *family_contacts = (0..count)
                .map(|index| {
                    let mut contact = family_contact();
                    contact.email =
                        EmailAddress::parse(&format!("contact-{index}@example.org")).unwrap();
                    contact
                })
                .collect();
        }
    })
}

#[test]
fn a_booking_may_name_ten_family_contacts() {
    let state = given::<Booking>([]).when(with_contacts(10)).then_ok();
    // The contacts themselves are sealed (the aggregate never holds them in the clear): that
    // the request was accepted is what this rule can show.
    assert_eq!(state.status(), Some(BookingStatus::Requested));
}

#[test]
fn a_booking_cannot_name_more_than_ten_family_contacts() {
    given::<Booking>([]).when(with_contacts(11)).then_err(|e| {
        matches!(e, DomainError::TooManyFamilyContacts { max: 10 })
            && e.field() == Some("family_contacts")
            && e.rule() == "booking.family_contacts_max"
            && e.kind() == RejectionKind::Invalid
    });
}

#[test]
fn a_booking_for_nothing_is_refused_at_request() {
    let command = request_with(|c| {
        if let BookingCommand::Request { statement, .. } = c {
            statement.adjustments = vec![Adjustment::new(-125_000, "Waived").unwrap()];
            statement.total_minor = 0;
        }
    });
    given::<Booking>([]).when(command).then_err(|e| {
        matches!(e, DomainError::ZeroPrice)
            && e.field() == Some("statement.total")
            && e.kind() == RejectionKind::Invalid
    });
}

#[test]
fn a_statement_that_does_not_add_up_is_refused() {
    let command = request_with(|c| {
        if let BookingCommand::Request { statement, .. } = c {
            statement.total_minor = 1;
        }
    });
    given::<Booking>([]).when(command).then_err(|e| {
        matches!(e, DomainError::StatementDoesNotAddUp) && e.field() == Some("statement")
    });
}

#[test]
fn the_event_charges_the_statement_s_total() {
    let command = request_with(|c| {
        if let BookingCommand::Request { statement, .. } = c {
            statement.adjustments = vec![Adjustment::new(-124_999, "Nearly all").unwrap()];
            statement.total_minor = 1;
        }
    });
    let outcome = given::<Booking>([]).when(command);
    let Ok(events) = outcome.result() else {
        panic!("refused: {outcome:?}");
    };
    assert!(
        matches!(
            &events[..],
            [BookingEvent::BookingRequested { price, statement, .. }]
                if price.amount_minor() == 1 && statement.total_minor == 1
                    && statement.adjustments[0].reason == "Nearly all"
        ),
        "{events:?}"
    );
}

#[test]
fn a_booking_is_open_until_it_is_closed_or_its_service_is_over() {
    let before = now();
    let after_the_service = slot().end_utc();
    let open = |history: Vec<BookingEvent>, at| given::<Booking>(history).state().is_open(at);
    assert!(!open(vec![], before), "no booking");
    assert!(open(vec![booking_requested()], before));
    assert!(open(vec![booking_requested(), held()], before));
    assert!(open(vec![booking_requested(), held(), confirmed()], before));
    assert!(
        !open(
            vec![booking_requested(), held(), confirmed()],
            after_the_service
        ),
        "a confirmed booking whose service took place is finished"
    );
    let rejected = BookingEvent::BookingRejected {
        reason: "taken".to_owned(),
    };
    let failed = BookingEvent::BookingFailed {
        reason: "declined".to_owned(),
    };
    let cancelled = BookingEvent::BookingCancelled {
        reason: None,
        was_confirmed: false,
    };
    assert!(!open(vec![booking_requested(), rejected], before));
    assert!(!open(vec![booking_requested(), held(), failed], before));
    assert!(!open(vec![booking_requested(), cancelled], before));
}

#[test]
fn a_family_may_ask_for_bookings_until_it_holds_its_limit() {
    for held in 0..3 {
        assert_eq!(OpenBookings { held, limit: 3 }.check_one_more(), Ok(()));
    }
    for held in [3, 4] {
        let refused = OpenBookings { held, limit: 3 }
            .check_one_more()
            .unwrap_err();
        assert_eq!(refused, DomainError::OpenBookingLimitReached { limit: 3 });
        assert_eq!(refused.kind(), RejectionKind::Conflict);
        assert_eq!(refused.rule(), "booking.open_bookings_limit");
    }
}

#[test]
fn a_booking_keeps_its_personal_data_sealed_and_never_in_the_clear() {
    let mut daughter = family_contact();
    daughter.name = PersonName::parse("Annabella King").unwrap();
    daughter.relationship = Relationship::parse("daughter").unwrap();
    daughter.email = EmailAddress::parse("annabella@example.org").unwrap();
    daughter.phone = None;
    let command = request_with(|c| {
        if let BookingCommand::Request {
            family_contacts, ..
        } = c
        {
            family_contacts.push(daughter);
        }
    });
    let state = given::<Booking>([]).when(command).then_ok();
    assert_eq!(state.details().unwrap().personal, sealed_personal());
    let stored = serde_json::to_string(&state).unwrap();
    for plaintext in ["Ada Lovelace", "Byron", "annabella@example.org", "daughter"] {
        assert!(!stored.contains(plaintext), "{plaintext} in {stored}");
    }
}

#[test]
fn erasing_personal_data_is_recorded_once_and_changes_nothing_else() {
    let erase = || BookingCommand::ErasePersonalData {
        reason: Some("the family asked".to_owned()),
    };
    let state = given::<Booking>([booking_requested(), held()])
        .when(erase())
        .then([BookingEvent::PersonalDataErased {
            reason: Some("the family asked".to_owned()),
        }]);
    assert!(state.personal_data_erased());
    assert_eq!(state.status(), Some(BookingStatus::SlotHeld));
    given::<Booking>([
        booking_requested(),
        BookingEvent::PersonalDataErased { reason: None },
    ])
    .when(erase())
    .then([]);
    given::<Booking>([
        booking_requested(),
        BookingEvent::BookingCancelled {
            reason: None,
            was_confirmed: false,
        },
    ])
    .when(erase())
    .then([BookingEvent::PersonalDataErased {
        reason: Some("the family asked".to_owned()),
    }]);
    given::<Booking>([])
        .when(erase())
        .then_err(|e| matches!(e, DomainError::BookingNotFound));
}

#[test]
fn a_service_cannot_be_booked_in_the_past() {
    let past = slot_at("2027-02-23T10:00:00+00:00", "2027-02-23T11:00:00+00:00");
    given::<Booking>([])
        .when(request_with(|c| set_slot(c, past)))
        .then_err(|e| matches!(e, DomainError::SlotInPast) && e.field() == Some("slot.start"));
}

#[test]
fn a_service_cannot_start_exactly_now() {
    given::<Booking>([])
        .when(request_with(|c| set_now(c, slot().start_utc())))
        .then_err(|e| matches!(e, DomainError::SlotInPast));
}

#[test]
fn the_date_of_death_cannot_be_in_the_future() {
    given::<Booking>([])
        .when(request_with(|c| set_date_of_death(c, date(2027, 2, 26))))
        .then_err(|e| {
            matches!(e, DomainError::DateOfDeathInFuture)
                && e.field() == Some("deceased.date_of_death")
                && e.kind() == RejectionKind::Invalid
        });
}

#[test]
fn the_date_of_death_can_be_today() {
    given::<Booking>([])
        .when(request_with(|c| set_date_of_death(c, date(2027, 2, 25))))
        .then_ok();
}

#[test]
fn today_is_the_facilitys_today() {
    // At 23:30 UTC on 30 June it is already 1 July in London (BST), so a death on 1 July is
    // not in the future there.
    let late_evening = Utc.with_ymd_and_hms(2027, 6, 30, 23, 30, 0).unwrap();
    let command = request_with(|c| {
        set_now(c, late_evening);
        set_date_of_death(c, date(2027, 7, 1));
        set_slot(
            c,
            slot_at("2027-07-06T10:00:00+01:00", "2027-07-06T11:00:00+01:00"),
        );
    });
    given::<Booking>([]).when(command).then_ok();
}

#[test]
fn a_service_cannot_be_before_the_date_of_death() {
    given::<Booking>([])
        .when(request_with(|c| set_date_of_death(c, date(2027, 3, 3))))
        .then_err(|e| {
            matches!(e, DomainError::ServiceBeforeDateOfDeath) && e.field() == Some("slot.start")
        });
}

#[test]
fn a_service_can_be_on_the_day_of_death() {
    let command = request_with(|c| {
        set_now(c, Utc.with_ymd_and_hms(2027, 3, 2, 7, 0, 0).unwrap());
        set_date_of_death(c, date(2027, 3, 2));
    });
    given::<Booking>([]).when(command).then_ok();
}

/// Tuesday 2 March 10:00 in Sydney, which is still Monday 1 March (23:00) in UTC and London.
fn sydney_tuesday_morning() -> BookingCommand {
    request_with(|c| {
        set_now(c, Utc.with_ymd_and_hms(2027, 3, 1, 13, 30, 0).unwrap());
        set_date_of_death(c, date(2027, 3, 2));
        set_slot(
            c,
            slot_at("2027-03-02T10:00:00+11:00", "2027-03-02T11:00:00+11:00"),
        );
    })
}

#[test]
fn the_service_date_is_read_in_the_facilitys_time_zone() {
    let mut command = sydney_tuesday_morning();
    if let BookingCommand::Request { facility, .. } = &mut command {
        facility.time_zone = TimeZone::parse("Australia/Sydney").unwrap();
    }
    given::<Booking>([]).when(command).then_ok();

    // The same instants at a London facility fall on Monday 1 March, before the death.
    given::<Booking>([])
        .when(sydney_tuesday_morning())
        .then_err(|e| matches!(e, DomainError::ServiceBeforeDateOfDeath));
}

#[test]
fn a_slot_must_be_within_the_facilitys_opening_hours() {
    let sunday = slot_at("2027-03-07T10:00:00+00:00", "2027-03-07T11:00:00+00:00");
    given::<Booking>([])
        .when(request_with(|c| set_slot(c, sunday)))
        .then_err(|e| {
            matches!(e, DomainError::SlotOutsideOpeningHours) && e.field() == Some("slot")
        });
}

// ---- Lifecycle ----

#[test]
fn commands_on_a_booking_that_does_not_exist_are_not_found() {
    for command in [
        BookingCommand::MarkSlotHeld,
        BookingCommand::Confirm,
        reject(),
        fail(),
        cancel_now(),
    ] {
        given::<Booking>([]).when(command).then_err(|e| {
            matches!(e, DomainError::BookingNotFound) && e.kind() == RejectionKind::NotFound
        });
    }
}

#[test]
fn a_held_slot_moves_the_booking_to_slot_held() {
    let state = given::<Booking>([booking_requested()])
        .when(BookingCommand::MarkSlotHeld)
        .then([held()]);
    assert_eq!(state.status(), Some(BookingStatus::SlotHeld));
}

#[test]
fn marking_the_slot_held_twice_is_a_no_op() {
    given::<Booking>([booking_requested(), held()])
        .when(BookingCommand::MarkSlotHeld)
        .then([]);
}

#[test]
fn a_booking_with_a_held_slot_is_confirmed() {
    let state = given::<Booking>([booking_requested(), held()])
        .when(BookingCommand::Confirm)
        .then([confirmed()]);
    assert_eq!(state.status(), Some(BookingStatus::Confirmed));
}

#[test]
fn confirming_twice_is_a_no_op() {
    given::<Booking>([booking_requested(), held(), confirmed()])
        .when(BookingCommand::Confirm)
        .then([]);
}

#[test]
fn a_booking_cannot_be_confirmed_before_its_slot_is_held() {
    given::<Booking>([booking_requested()])
        .when(BookingCommand::Confirm)
        .then_err(invalid_transition(BookingStatus::Requested, "confirm"));
}

#[test]
fn a_requested_booking_is_rejected_when_the_slot_is_refused() {
    let state = given::<Booking>([booking_requested()])
        .when(reject())
        .then([BookingEvent::BookingRejected {
            reason: "outside_opening_hours".to_owned(),
        }]);
    assert_eq!(state.status(), Some(BookingStatus::Rejected));
}

#[test]
fn rejecting_twice_is_a_no_op() {
    given::<Booking>([
        booking_requested(),
        BookingEvent::BookingRejected {
            reason: "x".to_owned(),
        },
    ])
    .when(reject())
    .then([]);
}

#[test]
fn a_booking_whose_slot_is_held_cannot_be_rejected() {
    given::<Booking>([booking_requested(), held()])
        .when(reject())
        .then_err(invalid_transition(BookingStatus::SlotHeld, "reject"));
}

#[test]
fn a_booking_fails_from_requested_or_slot_held() {
    for history in [vec![booking_requested()], vec![booking_requested(), held()]] {
        let state = given::<Booking>(history)
            .when(fail())
            .then([BookingEvent::BookingFailed {
                reason: "payment declined".to_owned(),
            }]);
        assert_eq!(state.status(), Some(BookingStatus::Failed));
    }
}

#[test]
fn failing_twice_is_a_no_op() {
    given::<Booking>([
        booking_requested(),
        BookingEvent::BookingFailed {
            reason: "x".to_owned(),
        },
    ])
    .when(fail())
    .then([]);
}

#[test]
fn a_confirmed_booking_cannot_fail() {
    given::<Booking>([booking_requested(), held(), confirmed()])
        .when(fail())
        .then_err(invalid_transition(BookingStatus::Confirmed, "fail"));
}

#[test]
fn a_booking_is_cancelled_before_confirmation_without_refund() {
    for history in [vec![booking_requested()], vec![booking_requested(), held()]] {
        let state =
            given::<Booking>(history)
                .when(cancel_now())
                .then([BookingEvent::BookingCancelled {
                    reason: Some("changed plans".to_owned()),
                    was_confirmed: false,
                }]);
        assert_eq!(state.status(), Some(BookingStatus::Cancelled));
    }
}

#[test]
fn cancelling_a_confirmed_booking_asks_for_a_refund() {
    given::<Booking>([booking_requested(), held(), confirmed()])
        .when(BookingCommand::Cancel {
            reason: None,
            now: now(),
        })
        .then([BookingEvent::BookingCancelled {
            reason: None,
            was_confirmed: true,
        }]);
}

#[test]
fn a_service_cannot_be_cancelled_once_it_has_started() {
    for now in [
        slot().start_utc(),
        slot().start_utc() + TimeDelta::minutes(5),
        slot().end_utc(),
    ] {
        given::<Booking>([booking_requested(), held(), confirmed()])
            .when(BookingCommand::Cancel { reason: None, now })
            .then_err(|e| {
                matches!(e, DomainError::ServiceAlreadyStarted)
                    && e.kind() == RejectionKind::Conflict
            });
    }
}

#[test]
fn cancelling_twice_is_a_no_op() {
    given::<Booking>([
        booking_requested(),
        BookingEvent::BookingCancelled {
            reason: None,
            was_confirmed: false,
        },
    ])
    .when(cancel_now())
    .then([]);
}

#[test]
fn rejected_or_failed_bookings_cannot_be_cancelled() {
    given::<Booking>([
        booking_requested(),
        BookingEvent::BookingRejected {
            reason: "x".to_owned(),
        },
    ])
    .when(cancel_now())
    .then_err(invalid_transition(BookingStatus::Rejected, "cancel"));
    given::<Booking>([
        booking_requested(),
        BookingEvent::BookingFailed {
            reason: "x".to_owned(),
        },
    ])
    .when(cancel_now())
    .then_err(invalid_transition(BookingStatus::Failed, "cancel"));
}

#[test]
fn a_cancelled_booking_cannot_be_confirmed() {
    given::<Booking>([
        booking_requested(),
        held(),
        BookingEvent::BookingCancelled {
            reason: None,
            was_confirmed: false,
        },
    ])
    .when(BookingCommand::Confirm)
    .then_err(invalid_transition(BookingStatus::Cancelled, "confirm"));
}

// ---- Wire shape ----

#[test]
fn booking_events_have_a_stable_wire_shape() {
    let expected = [
        json!({"event_type": "BookingRequested", "data": {
            "booking_id": "6a1f7a52-34b4-4e6b-9d0e-0c1f3a9b2c11",
            "facility_id": "5f3c1e2a-8b4d-4c6e-9a01-2b3c4d5e6f70",
            "service_type": "burial",
            "slot": {"start": "2027-03-02T10:00:00+00:00", "end": "2027-03-02T11:00:00+00:00"},
            "date_of_death": "2027-02-20",
            "personal": {
                "key_id": "0d1e2c3b-4a59-4687-9a0b-1c2d3e4f5061",
                "nonce": "AAECAwQFBgcICQoLDA0ODxAREhMUFRYX",
                "ciphertext": "c2VhbGVkIHBlcnNvbmFsIGRhdGEgKG5vdCByZWFsKQ=="
            },
            "price": {"amount_minor": 125_000, "currency": "GBP"},
            "statement": {
                "price_list": {"home_id": "4e0a9f1b-2c3d-4e5f-8a6b-7c8d9e0f1a2b", "version": 1},
                "currency": "GBP",
                "lines": [
                    {"code": "burial", "description": "Burial service", "unit_amount_minor": 95_000, "amount_minor": 95_000},
                    {"code": "chapel.hour", "description": "Chapel, per hour", "unit_amount_minor": 30_000, "minutes": 60, "amount_minor": 30_000}
                ],
                "adjustments": [],
                "total_minor": 125_000
            }
        }}),
        json!({"event_type": "BookingSlotHeld", "data": {}}),
        json!({"event_type": "BookingConfirmed", "data": {}}),
        json!({"event_type": "BookingRejected", "data": {"reason": "overlaps_existing"}}),
        json!({"event_type": "BookingFailed", "data": {"reason": "payment declined: insufficient funds"}}),
        json!({"event_type": "BookingCancelled", "data": {
            "reason": "the family chose another date",
            "was_confirmed": true
        }}),
        json!({"event_type": "PersonalDataErased", "data": {"reason": "retention period ended"}}),
    ];
    let samples = BookingEvent::samples();
    assert_eq!(samples.len(), expected.len());
    for (event, wire) in samples.iter().zip(expected) {
        assert_eq!(serde_json::to_value(event).unwrap(), wire);
    }
}

#[test]
fn absent_optional_fields_are_null_on_the_wire_and_may_be_omitted_on_input() {
    let cancelled = BookingEvent::BookingCancelled {
        reason: None,
        was_confirmed: false,
    };
    assert_eq!(
        serde_json::to_value(&cancelled).unwrap(),
        json!({"event_type": "BookingCancelled", "data": {"reason": null, "was_confirmed": false}})
    );
    let contact: FamilyContact = serde_json::from_value(json!({
        "name": "Byron King", "relationship": "son", "email": "byron@example.org"
    }))
    .unwrap();
    assert_eq!(contact.phone, None);
    assert_eq!(
        serde_json::to_value(&contact).unwrap()["phone"],
        json!(null)
    );
}

#[test]
fn booking_events_refuse_unknown_or_invalid_fields() {
    let mut requested = serde_json::to_value(booking_requested()).unwrap();
    requested["data"]["personal"]["key_id"] = json!("not-a-uuid");
    let mut extra_in_contact = serde_json::to_value(booking_requested()).unwrap();
    extra_in_contact["data"]["personal"]["age"] = json!(40);
    let mut bad_price = serde_json::to_value(booking_requested()).unwrap();
    bad_price["data"]["price"]["amount_minor"] = json!(-1);
    for wire in [
        requested,
        extra_in_contact,
        bad_price,
        json!({"event_type": "BookingConfirmed", "data": {"by": "me"}}),
        json!({"event_type": "BookingConfirmed", "data": {}, "extra": 1}),
        json!({"event_type": "BookingRejected", "data": {}}),
    ] {
        assert!(
            serde_json::from_value::<BookingEvent>(wire.clone()).is_err(),
            "{wire}"
        );
    }
}

#[test]
fn statuses_read_and_print_in_snake_case() {
    for status in BookingStatus::ALL {
        assert_eq!(
            status.to_string().parse::<BookingStatus>().unwrap(),
            *status
        );
        assert_eq!(
            serde_json::to_value(status).unwrap(),
            json!(status.as_str())
        );
    }
    assert_eq!(BookingStatus::SlotHeld.to_string(), "slot_held");
    assert!("SlotHeld".parse::<BookingStatus>().is_err());
}

// ---- Property: the lifecycle never leaves the transition graph. ----

fn allowed(from: BookingStatus, to: BookingStatus) -> bool {
    use BookingStatus::{Cancelled, Confirmed, Failed, Rejected, Requested, SlotHeld};
    matches!(
        (from, to),
        (Requested, SlotHeld | Rejected | Failed | Cancelled)
            | (SlotHeld, Confirmed | Failed | Cancelled)
            | (Confirmed, Cancelled)
    )
}

fn any_command() -> impl Strategy<Value = BookingCommand> {
    let start = slot().start_utc();
    prop_oneof![
        Just(request_booking()),
        Just(BookingCommand::MarkSlotHeld),
        Just(BookingCommand::Confirm),
        "[a-z ]{0,12}".prop_map(|reason| BookingCommand::Reject { reason }),
        "[a-z ]{0,12}".prop_map(|reason| BookingCommand::Fail { reason }),
        (proptest::option::of("[a-z ]{0,12}"), -600_i64..600).prop_map(move |(reason, minutes)| {
            BookingCommand::Cancel {
                reason,
                now: start + TimeDelta::minutes(minutes),
            }
        }),
    ]
}

proptest! {
    #[test]
    fn the_lifecycle_stays_within_the_transition_graph(
        commands in prop::collection::vec(any_command(), 1..30),
    ) {
        let mut state = BookingState::default();
        let mut final_status: Option<BookingStatus> = None;
        for command in commands {
            let before = state.status();
            let result = Booking::decide(&state, command);
            match (&result, before) {
                (Ok(events), _) => {
                    prop_assert!(events.len() <= 1);
                    state = events.iter().fold(state, Booking::evolve);
                }
                (Err(DomainError::BookingNotFound), None) => {}
                (Err(e), Some(_)) => prop_assert!(matches!(
                    e,
                    DomainError::BookingAlreadyRequested
                        | DomainError::InvalidTransition { .. }
                        | DomainError::ServiceAlreadyStarted
                ), "unexpected refusal {e:?}"),
                (Err(e), None) => prop_assert!(false, "unexpected refusal {e:?} before request"),
            }
            let after = state.status();
            match (before, after) {
                (None, Some(status)) => prop_assert_eq!(status, BookingStatus::Requested),
                (Some(from), Some(to)) if from != to => {
                    prop_assert!(allowed(from, to), "{from} -> {to} is not a transition");
                }
                (None, None) | (Some(_), Some(_)) => {}
                (Some(_), None) => prop_assert!(false, "a booking disappeared"),
            }
            if let Some(status) = final_status {
                prop_assert_eq!(after, Some(status), "left final status {}", status);
            }
            if let Some(status) = after.filter(|s| s.is_final()) {
                final_status = Some(status);
            }
        }
    }
}

#[test]
fn the_sample_price_is_in_pounds() {
    assert_eq!(price().currency(), Currency::GBP);
    assert_eq!(deceased().full_name.as_str(), "Ada Lovelace");
}
