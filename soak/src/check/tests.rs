//! The checker against hand-built histories: a clean one passes every invariant, and each
//! test breaks exactly one thing and expects exactly that invariant to be reported. Without
//! these a checker that never fails would look the same as a system that never fails.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use uuid::Uuid;

use super::*;
use crate::history::{History, Kind, RawRecord};

const PREFIX: &str = "fm";
const DIRECTOR: &str = "director-1";
const SAGA: &str = "saga-runner";

fn id(n: u128) -> Uuid {
    Uuid::from_u128(n)
}

const FACILITY: u128 = 0xF;
const CONFIRMED: u128 = 0xB1;
const REJECTED: u128 = 0xB2;
const FAILED: u128 = 0xB3;
const REFUNDED: u128 = 0xB4;

fn payment(booking: u128) -> Uuid {
    id(0x1000 + booking)
}

fn slot(hour: u32) -> Value {
    json!({"start": format!("2030-03-04T{hour:02}:00:00+00:00"), "end": format!("2030-03-04T{:02}:00:00+00:00", hour + 1)})
}

fn slot_of(hour: u32) -> Slot {
    Slot::from_test(&slot(hour))
}

impl Slot {
    fn from_test(value: &Value) -> Self {
        let time = |field: &str| {
            chrono::DateTime::parse_from_rfc3339(value[field].as_str().unwrap())
                .unwrap()
                .with_timezone(&chrono::Utc)
        };
        Self {
            start: time("start"),
            end: time("end"),
        }
    }
}

fn gbp(minor: i64) -> Money {
    Money {
        minor,
        currency: "GBP".into(),
    }
}

/// A log being written by hand: every record of an aggregate on partition 0 unless said.
#[derive(Default)]
struct Story {
    records: Vec<RawRecord>,
    ends: BTreeMap<(String, i32), i64>,
    /// The `event_version` of the next events written; 1 when unset.
    version: Option<u64>,
}

// Call sites read better with `json!(..)` written in place than borrowed.
#[allow(clippy::needless_pass_by_value)]
impl Story {
    fn raw(&mut self, topic: &str, partition: i32, value: Vec<u8>) -> Position {
        let end = self.ends.entry((topic.to_owned(), partition)).or_default();
        let position = Position::new(topic, partition, *end);
        *end += 1;
        self.records.push(RawRecord {
            position: position.clone(),
            key: None,
            value: Some(value),
            headers: vec![],
        });
        position
    }

    #[allow(clippy::too_many_arguments)] // A hand-written envelope: every field is the point.
    fn event_on(
        &mut self,
        partition: i32,
        kind: Kind,
        aggregate: Uuid,
        sequence: u64,
        event_type: &str,
        subject: &str,
        key: Option<&str>,
        data: Value,
    ) -> Position {
        let mut envelope = json!({
            "event_id": Uuid::new_v4(),
            "event_type": event_type,
            "event_version": self.version.unwrap_or(1),
            "aggregate_type": kind.as_str(),
            "aggregate_id": aggregate,
            "sequence": sequence,
            "occurred_at": "2030-01-01T00:00:00Z",
            "correlation_id": Uuid::new_v4(),
            "causation_id": Uuid::new_v4(),
            "actor": {"subject": subject, "role": "director"},
            "data": data,
        });
        if let Some(key) = key {
            envelope["idempotency"] = json!({"key": key, "fingerprint": "f"});
        }
        self.raw(
            &kind.topic(PREFIX),
            partition,
            serde_json::to_vec(&envelope).unwrap(),
        )
    }

    fn event(
        &mut self,
        kind: Kind,
        aggregate: Uuid,
        sequence: u64,
        event_type: &str,
        data: Value,
    ) -> Position {
        self.event_on(0, kind, aggregate, sequence, event_type, SAGA, None, data)
    }

    fn requested(&mut self, booking: u128, hour: u32, key: &str) -> Position {
        self.event_on(
            0,
            Kind::Booking,
            id(booking),
            1,
            "BookingRequested",
            DIRECTOR,
            Some(key),
            json!({
                "booking_id": id(booking), "facility_id": id(FACILITY), "service_type": "burial",
                "slot": slot(hour), "deceased": {"full_name": "A B", "date_of_death": "2030-01-01"},
                "family_contacts": [{"name": "C D", "relationship": "son", "email": format!("family-{booking:x}@example.org"), "phone": null}],
                "price": {"amount_minor": 100_000 + i64::try_from(booking).unwrap(), "currency": "GBP"},
            }),
        )
    }
}

fn price(booking: u128) -> Money {
    gbp(100_000 + i64::try_from(booking).unwrap())
}

fn family(booking: u128) -> BTreeSet<String> {
    BTreeSet::from([format!("family-{booking:x}@example.org")])
}

fn mail(kind: &str, booking: u128) -> Mail {
    Mail {
        file: format!("new/{kind}-{booking:x}"),
        message_id: Some(format!("{kind}.{}@funeral-manager", id(booking))),
        to: family(booking),
    }
}

/// What a soak that went right looks like: a confirmed booking, one rejected for a taken slot,
/// one failed on a declined payment, one cancelled after confirmation and refunded; a losing
/// writer's stale record; a poison record and its dead letter; a refused bad request.
struct World {
    story: Story,
    journal: Vec<Entry>,
    read_models: ReadModels,
    ledger: Ledger,
    mails: Vec<Mail>,
    dead_letters: Vec<DeadLetter>,
    open_sagas: Vec<OpenSaga>,
    /// Positions worth pointing at from tests.
    confirmed_request: Position,
    confirmed_held: Position,
    stale: Position,
}

fn attempt(key: &str, sent_ms: i64, answered_ms: i64, status: Option<u16>) -> Entry {
    Entry::Attempt {
        op: "request_booking".into(),
        subject: DIRECTOR.into(),
        idempotency_key: key.into(),
        sent_ms,
        answered_ms,
        status,
    }
}

fn world() -> World {
    world_registered_at(1)
}

/// The world, its facility registered with a `FacilityRegistered` of `version`.
#[allow(clippy::too_many_lines)] // One whole, consistent world, written out so it can be read.
fn world_registered_at(version: u64) -> World {
    let mut story = Story {
        version: Some(version),
        ..Story::default()
    };
    let (b, f, p) = (Kind::Booking, Kind::Facility, Kind::Payment);
    let registered = story.event_on(
        0,
        f,
        id(FACILITY),
        1,
        "FacilityRegistered",
        DIRECTOR,
        Some("facility-1"),
        json!({"facility_id": id(FACILITY), "turnaround_minutes": 30}),
    );
    story.version = None;

    // Confirmed: 10:00.
    let confirmed_request = story.requested(CONFIRMED, 10, "booking-1");
    story.event(
        f,
        id(FACILITY),
        2,
        "SlotReserved",
        json!({"booking_id": id(CONFIRMED), "slot": slot(10)}),
    );
    let confirmed_held = story.event(b, id(CONFIRMED), 2, "BookingSlotHeld", json!({}));
    // A losing writer's second "sequence 2": refused by the rule, never acknowledged.
    let stale = story.event(b, id(CONFIRMED), 2, "BookingSlotHeld", json!({}));
    story.event(p, payment(CONFIRMED), 1, "PaymentCaptured", json!({"payment_id": payment(CONFIRMED), "booking_id": id(CONFIRMED), "amount": {"amount_minor": price(CONFIRMED).minor, "currency": "GBP"}, "gateway_reference": "cap_1"}));
    story.event(b, id(CONFIRMED), 3, "BookingConfirmed", json!({}));

    // Rejected: asks for the confirmed booking's 10:00.
    story.requested(REJECTED, 10, "booking-2");
    story.event(
        f,
        id(FACILITY),
        3,
        "SlotRejected",
        json!({"booking_id": id(REJECTED), "slot": slot(10), "reason": "overlaps_existing"}),
    );
    story.event(
        b,
        id(REJECTED),
        2,
        "BookingRejected",
        json!({"reason": "taken"}),
    );

    // Failed: 13:00, declined, released.
    story.requested(FAILED, 13, "booking-3");
    story.event(
        f,
        id(FACILITY),
        4,
        "SlotReserved",
        json!({"booking_id": id(FAILED), "slot": slot(13)}),
    );
    story.event(b, id(FAILED), 2, "BookingSlotHeld", json!({}));
    story.event(p, payment(FAILED), 1, "PaymentDeclined", json!({"payment_id": payment(FAILED), "booking_id": id(FAILED), "amount": {"amount_minor": price(FAILED).minor, "currency": "GBP"}, "reason": "card_declined"}));
    story.event(
        f,
        id(FACILITY),
        5,
        "SlotReleased",
        json!({"booking_id": id(FAILED)}),
    );
    story.event(
        b,
        id(FAILED),
        3,
        "BookingFailed",
        json!({"reason": "declined"}),
    );

    // Cancelled after confirmation: 13:00 again (free since the release), refunded, released.
    story.requested(REFUNDED, 13, "booking-4");
    story.event(
        f,
        id(FACILITY),
        6,
        "SlotReserved",
        json!({"booking_id": id(REFUNDED), "slot": slot(13)}),
    );
    story.event(b, id(REFUNDED), 2, "BookingSlotHeld", json!({}));
    story.event(p, payment(REFUNDED), 1, "PaymentCaptured", json!({"payment_id": payment(REFUNDED), "booking_id": id(REFUNDED), "amount": {"amount_minor": price(REFUNDED).minor, "currency": "GBP"}, "gateway_reference": "cap_4"}));
    story.event(b, id(REFUNDED), 3, "BookingConfirmed", json!({}));
    let cancelled = story.event_on(
        0,
        b,
        id(REFUNDED),
        4,
        "BookingCancelled",
        DIRECTOR,
        Some("cancel-4"),
        json!({"reason": null, "was_confirmed": true}),
    );
    story.event(p, payment(REFUNDED), 2, "PaymentRefunded", json!({"amount": {"amount_minor": price(REFUNDED).minor, "currency": "GBP"}, "gateway_reference": "ref_4"}));
    story.event(
        f,
        id(FACILITY),
        7,
        "SlotReleased",
        json!({"booking_id": id(REFUNDED)}),
    );

    let poison_bytes = b"soak-poison-1: not an event".to_vec();
    let poison = story.raw(&Kind::Booking.topic(PREFIX), 1, poison_bytes.clone());

    let ack =
        |op: &str, key: &str, aggregate: u128, version: u64, token: &Position, status: u16| {
            Entry::Acknowledged {
                op: op.into(),
                subject: DIRECTOR.into(),
                idempotency_key: Some(key.into()),
                aggregate_id: id(aggregate),
                version,
                token: Some(token.to_string()),
                status,
            }
        };
    let journal = vec![
        ack(
            "register_facility",
            "facility-1",
            FACILITY,
            1,
            &registered,
            201,
        ),
        ack(
            "request_booking",
            "booking-1",
            CONFIRMED,
            1,
            &confirmed_request,
            202,
        ),
        // An idempotent replay, answered with the first outcome.
        ack(
            "request_booking",
            "booking-1",
            CONFIRMED,
            1,
            &confirmed_request,
            202,
        ),
        ack("cancel_booking", "cancel-4", REFUNDED, 4, &cancelled, 200),
        Entry::Refused {
            op: "request_booking".into(),
            subject: DIRECTOR.into(),
            idempotency_key: "bad-1".into(),
            status: 422,
        },
        Entry::Poison {
            marker: "soak-poison-1".into(),
            topic: poison.topic.clone(),
            written: Some(poison.to_string()),
        },
        // Two brokers down from 10 s to 30 s (the window in `World::check`): a write refused
        // with 503, a read answered, the write acknowledged once a broker was back.
        attempt("booking-9", 11_000, 26_000, Some(503)),
        Entry::Read {
            at_ms: 20_000,
            status: Some(200),
        },
        attempt("booking-9", 31_000, 33_000, Some(202)),
    ];

    let booking_row = |booking: u128, status: &str, version: u64| BookingRow {
        booking_id: id(booking),
        facility_id: id(FACILITY),
        status: status.into(),
        version,
        price: price(booking),
    };
    let read_models = ReadModels {
        bookings: vec![
            booking_row(CONFIRMED, "confirmed", 3),
            booking_row(REJECTED, "rejected", 2),
            booking_row(FAILED, "failed", 3),
            booking_row(REFUNDED, "cancelled", 4),
        ],
        facilities: vec![FacilityRow {
            facility_id: id(FACILITY),
            version: 7,
        }],
        reservations: vec![ReservationRow {
            facility_id: id(FACILITY),
            booking_id: id(CONFIRMED),
            slot: slot_of(10),
        }],
        payments: vec![
            PaymentRow {
                payment_id: payment(CONFIRMED),
                booking_id: id(CONFIRMED),
                status: "captured".into(),
                version: 1,
                amount: price(CONFIRMED),
                capture_reference: Some("cap_1".into()),
                refund_reference: None,
            },
            PaymentRow {
                payment_id: payment(FAILED),
                booking_id: id(FAILED),
                status: "declined".into(),
                version: 1,
                amount: price(FAILED),
                capture_reference: None,
                refund_reference: None,
            },
            PaymentRow {
                payment_id: payment(REFUNDED),
                booking_id: id(REFUNDED),
                status: "refunded".into(),
                version: 2,
                amount: price(REFUNDED),
                capture_reference: Some("cap_4".into()),
                refund_reference: Some("ref_4".into()),
            },
        ],
        anomalies: 0,
        offsets: story.ends.clone(),
    };
    let ledger = Ledger {
        captures: vec![
            Capture {
                reference: "cap_1".into(),
                booking_id: id(CONFIRMED),
                amount: price(CONFIRMED),
                refunded_minor: 0,
            },
            Capture {
                reference: "cap_4".into(),
                booking_id: id(REFUNDED),
                amount: price(REFUNDED),
                refunded_minor: price(REFUNDED).minor,
            },
        ],
        refunds: vec![Refund {
            reference: "ref_4".into(),
            capture_reference: "cap_4".into(),
            amount: price(REFUNDED),
        }],
    };
    let mails = vec![
        mail("confirmation", CONFIRMED),
        // A resend after a crash: the same Message-ID twice is one mail.
        mail("confirmation", CONFIRMED),
        mail("rejection", REJECTED),
        mail("failure", FAILED),
        mail("confirmation", REFUNDED),
        mail("cancellation", REFUNDED),
    ];
    let dead_letters = vec![DeadLetter {
        position: Position::new("fm.dead-letter", 0, 0),
        reason: Some("not JSON".into()),
        origin: Some(poison),
        value: poison_bytes,
    }];
    World {
        story,
        journal,
        read_models,
        ledger,
        mails,
        dead_letters,
        open_sagas: vec![],
        confirmed_request,
        confirmed_held,
        stale,
    }
}

impl World {
    /// The read models caught up with everything the story wrote since [`world`].
    fn caught_up(&mut self) {
        self.read_models.offsets = self.story.ends.clone();
    }
}

impl World {
    fn check(self) -> Report {
        let inputs = Inputs {
            history: History::build(&self.story.records, PREFIX),
            log_ends: self
                .story
                .ends
                .iter()
                .filter(|((topic, _), _)| topic.ends_with(".events"))
                .map(|(key, end)| (key.clone(), *end))
                .collect(),
            journal: self.journal,
            read_models: Some(self.read_models),
            saga: true,
            open_sagas: self.open_sagas,
            ledger: self.ledger,
            mails: self.mails,
            mail_kinds: MailKinds::default(),
            dead_letters: self.dead_letters,
            windows: vec![FaultWindow {
                kind: QUORUM_LOSS.into(),
                begin_ms: 10_000,
                end_ms: 30_000,
                detail: "nodes 1 and 2 were down".into(),
            }],
        };
        check(&inputs)
    }
}

/// The invariants a report says were violated, each once.
fn violated(report: &Report) -> BTreeSet<Invariant> {
    report.violations.iter().map(|v| v.invariant).collect()
}

#[track_caller]
fn assert_only(report: &Report, invariant: Invariant) {
    assert_eq!(
        violated(report),
        BTreeSet::from([invariant]),
        "{}",
        report.render(20)
    );
}

#[test]
fn a_clean_history_passes_every_invariant_and_each_was_checked() {
    let report = world().check();
    assert!(report.passed(), "{}", report.render(20));
    for invariant in Invariant::ALL {
        assert!(
            report.checked.get(&invariant).copied().unwrap_or_default() > 0,
            "{invariant} checked nothing"
        );
    }
}

#[test]
fn every_facility_registered_version_folds_alike_and_an_unknown_one_is_reported() {
    // v2 adds the funeral home; the checker reads the turnaround of both the same way.
    let report = world_registered_at(2).check();
    assert!(report.passed(), "{}", report.render(20));
    // A version the checker has not learnt is not guessed at: the facility stays unregistered
    // and every later facility event is an illegal transition.
    let report = world_registered_at(3).check();
    assert!(
        violated(&report).contains(&Invariant::Lifecycle),
        "{}",
        report.render(20)
    );
}

#[test]
fn an_acknowledged_write_missing_from_the_log_is_reported() {
    let mut world = world();
    let token = world.confirmed_request.to_string();
    world.journal.push(Entry::Acknowledged {
        op: "request_booking".into(),
        subject: DIRECTOR.into(),
        idempotency_key: Some("booking-9".into()),
        aggregate_id: id(0xB9),
        version: 1,
        token: Some(token),
        status: 202,
    });
    assert_only(&world.check(), Invariant::NoLostAcknowledgedWrite);
}

#[test]
fn an_acknowledgement_naming_the_losing_record_is_reported() {
    let mut world = world();
    world.journal.push(Entry::Acknowledged {
        op: "mark_slot_held".into(),
        subject: SAGA.into(),
        idempotency_key: None,
        aggregate_id: id(CONFIRMED),
        version: 2,
        token: Some(world.stale.to_string()),
        status: 200,
    });
    let report = world.check();
    assert_only(&report, Invariant::NoLostAcknowledgedWrite);
    assert!(
        report
            .render(20)
            .contains("a record the admission rule refused")
    );
}

#[test]
fn two_acknowledgements_of_one_sequence_with_different_records_are_reported() {
    let mut world = world();
    // The winner and the loser of sequence 2 were both told "yes".
    for token in [world.confirmed_held.clone(), world.stale.clone()] {
        world.journal.push(Entry::Acknowledged {
            op: "mark_slot_held".into(),
            subject: SAGA.into(),
            idempotency_key: None,
            aggregate_id: id(CONFIRMED),
            version: 2,
            token: Some(token.to_string()),
            status: 200,
        });
    }
    let report = world.check();
    assert_eq!(
        violated(&report),
        BTreeSet::from([
            Invariant::NoLostAcknowledgedWrite,
            Invariant::OneEventPerSequence
        ]),
        "{}",
        report.render(20)
    );
}

#[test]
fn a_gap_in_a_stream_is_reported() {
    let mut world = world();
    world.story.event(
        Kind::Booking,
        id(CONFIRMED),
        5,
        "BookingCancelled",
        json!({"reason": null, "was_confirmed": true}),
    );
    world.caught_up();
    let report = world.check();
    assert_only(&report, Invariant::OneEventPerSequence);
    assert!(report.render(20).contains("a gap"));
}

#[test]
fn a_stream_split_over_two_partitions_is_reported() {
    let mut world = world();
    world.story.event_on(
        2,
        Kind::Booking,
        id(CONFIRMED),
        1,
        "BookingSlotHeld",
        SAGA,
        None,
        json!({}),
    );
    world.caught_up();
    assert_only(&world.check(), Invariant::OneEventPerSequence);
}

#[test]
fn two_admitted_events_with_one_idempotency_key_are_reported() {
    let mut world = world();
    // Booking 5 was created with booking 1's key: a retry that wrote a second booking.
    world.story.requested(0xB5, 16, "booking-1");
    let report = world.check();
    assert!(
        violated(&report).contains(&Invariant::Idempotency),
        "{}",
        report.render(20)
    );
    assert!(report.render(20).contains("wrote 2 admitted events"));
}

#[test]
fn a_refused_request_that_wrote_an_event_is_reported() {
    let mut world = world();
    world.journal.push(Entry::Refused {
        op: "request_booking".into(),
        subject: DIRECTOR.into(),
        idempotency_key: "booking-3".into(),
        status: 422,
    });
    assert_only(&world.check(), Invariant::Idempotency);
}

#[test]
fn a_replay_answered_with_another_outcome_is_reported() {
    let mut world = world();
    world.journal.push(Entry::Acknowledged {
        op: "request_booking".into(),
        subject: DIRECTOR.into(),
        idempotency_key: Some("booking-1".into()),
        aggregate_id: id(CONFIRMED),
        version: 2,
        token: None,
        status: 202,
    });
    assert_only(&world.check(), Invariant::Idempotency);
}

#[test]
fn an_overlapping_reservation_is_reported_including_the_turnaround() {
    let mut world = world();
    // 11:00–12:00 touches the confirmed 10:00–11:00 slot: inside its 30-minute turnaround.
    world.story.event(
        Kind::Facility,
        id(FACILITY),
        8,
        "SlotReserved",
        json!({"booking_id": id(0xB6), "slot": slot(11)}),
    );
    world.read_models.facilities[0].version = 8;
    world.read_models.reservations.push(ReservationRow {
        facility_id: id(FACILITY),
        booking_id: id(0xB6),
        slot: slot_of(11),
    });
    world.caught_up();
    let report = world.check();
    assert!(
        violated(&report).contains(&Invariant::NoDoubleBooking),
        "{}",
        report.render(20)
    );
    assert!(!violated(&report).contains(&Invariant::ReadModelsEqualFold));
}

#[test]
fn a_reservation_one_turnaround_away_is_not_an_overlap() {
    let mut world = world();
    // 11:30–12:30 starts exactly one turnaround after 11:00.
    let slot = json!({"start": "2030-03-04T11:30:00+00:00", "end": "2030-03-04T12:30:00+00:00"});
    world.story.event(
        Kind::Facility,
        id(FACILITY),
        8,
        "SlotReserved",
        json!({"booking_id": id(0xB6), "slot": slot}),
    );
    let report = world.check();
    assert!(
        !violated(&report).contains(&Invariant::NoDoubleBooking),
        "{}",
        report.render(20)
    );
}

#[test]
fn an_event_the_lifecycle_does_not_allow_is_reported() {
    let mut world = world();
    // Confirming a rejected booking: admitted (its sequence is next), but not allowed.
    world.story.event(
        Kind::Booking,
        id(REJECTED),
        3,
        "BookingConfirmed",
        json!({}),
    );
    world.read_models.bookings[1].version = 3;
    world.caught_up();
    assert_only(&world.check(), Invariant::Lifecycle);
}

#[test]
fn a_read_model_row_that_differs_from_the_log_is_reported() {
    let mut world = world();
    world.read_models.bookings[2].status = "confirmed".into();
    assert_only(&world.check(), Invariant::ReadModelsEqualFold);
}

#[test]
fn a_missing_reservation_row_is_reported() {
    let mut world = world();
    world.read_models.reservations.clear();
    assert_only(&world.check(), Invariant::ReadModelsEqualFold);
}

#[test]
fn read_models_behind_the_log_are_reported() {
    let mut world = world();
    if let Some(offset) = world.read_models.offsets.values_mut().next() {
        *offset -= 1;
    }
    assert_only(&world.check(), Invariant::ReadModelsEqualFold);
}

#[test]
fn a_projector_anomaly_is_reported() {
    let mut world = world();
    world.read_models.anomalies = 1;
    assert_only(&world.check(), Invariant::ReadModelsEqualFold);
}

#[test]
fn a_booking_left_half_way_is_reported() {
    let mut world = world();
    world.story.requested(0xB7, 16, "booking-7");
    world.story.event(
        Kind::Facility,
        id(FACILITY),
        8,
        "SlotReserved",
        json!({"booking_id": id(0xB7), "slot": slot(16)}),
    );
    world
        .story
        .event(Kind::Booking, id(0xB7), 2, "BookingSlotHeld", json!({}));
    world.read_models.bookings.push(BookingRow {
        booking_id: id(0xB7),
        facility_id: id(FACILITY),
        status: "slot_held".into(),
        version: 2,
        price: price(0xB7),
    });
    world.read_models.facilities[0].version = 8;
    world.read_models.reservations.push(ReservationRow {
        facility_id: id(FACILITY),
        booking_id: id(0xB7),
        slot: slot_of(16),
    });
    world.caught_up();
    let report = world.check();
    assert_only(&report, Invariant::SagasTerminal);
    assert!(report.render(20).contains("stopped at slot_held"));
}

#[test]
fn a_failed_booking_that_still_holds_its_slot_is_reported() {
    let mut world = world();
    // Booking 7 failed, but its slot was never released.
    world.story.requested(0xB7, 16, "booking-7");
    world.story.event(
        Kind::Facility,
        id(FACILITY),
        8,
        "SlotReserved",
        json!({"booking_id": id(0xB7), "slot": slot(16)}),
    );
    world
        .story
        .event(Kind::Booking, id(0xB7), 2, "BookingSlotHeld", json!({}));
    world.story.event(
        Kind::Booking,
        id(0xB7),
        3,
        "BookingFailed",
        json!({"reason": "timeout"}),
    );
    world.read_models.bookings.push(BookingRow {
        booking_id: id(0xB7),
        facility_id: id(FACILITY),
        status: "failed".into(),
        version: 3,
        price: price(0xB7),
    });
    world.read_models.facilities[0].version = 8;
    world.read_models.reservations.push(ReservationRow {
        facility_id: id(FACILITY),
        booking_id: id(0xB7),
        slot: slot_of(16),
    });
    world.mails.push(mail("failure", 0xB7));
    world.caught_up();
    let report = world.check();
    assert_only(&report, Invariant::SagasTerminal);
    assert!(report.render(20).contains("still holds its slot"));
}

#[test]
fn a_saga_row_still_pending_is_reported() {
    let mut world = world();
    world.open_sagas.push(OpenSaga {
        booking_id: id(CONFIRMED),
        state: "notifying".into(),
    });
    assert_only(&world.check(), Invariant::SagasTerminal);
}

#[test]
fn money_kept_for_a_failed_booking_is_reported() {
    let mut world = world();
    world.ledger.captures.push(Capture {
        reference: "cap_3".into(),
        booking_id: id(FAILED),
        amount: price(FAILED),
        refunded_minor: 0,
    });
    let report = world.check();
    assert_only(&report, Invariant::MoneyBalances);
    assert!(report.render(20).contains("kept"));
}

#[test]
fn a_failed_booking_that_was_charged_is_reported_even_when_refunded() {
    let mut world = world();
    world.ledger.captures.push(Capture {
        reference: "cap_3".into(),
        booking_id: id(FAILED),
        amount: price(FAILED),
        refunded_minor: price(FAILED).minor,
    });
    world.ledger.refunds.push(Refund {
        reference: "ref_3".into(),
        capture_reference: "cap_3".into(),
        amount: price(FAILED),
    });
    let report = world.check();
    assert_only(&report, Invariant::MoneyBalances);
    assert!(
        report
            .render(20)
            .contains("failed although the gateway captured its payment"),
        "{}",
        report.render(20)
    );
}

#[test]
fn a_confirmed_booking_charged_twice_is_reported() {
    let mut world = world();
    world.ledger.captures.push(Capture {
        reference: "cap_1b".into(),
        booking_id: id(CONFIRMED),
        amount: price(CONFIRMED),
        refunded_minor: 0,
    });
    assert_only(&world.check(), Invariant::MoneyBalances);
}

#[test]
fn a_refund_the_ledger_does_not_add_up_is_reported() {
    let mut world = world();
    world.ledger.refunds.clear();
    assert_only(&world.check(), Invariant::MoneyBalances);
}

#[test]
fn a_capture_the_gateway_never_made_is_reported() {
    let mut world = world();
    world.ledger.captures[0].reference = "cap_other".into();
    assert_only(&world.check(), Invariant::MoneyBalances);
}

#[test]
fn a_missing_mail_is_reported() {
    let mut world = world();
    world.mails.retain(|mail| {
        mail.message_id.as_deref() != Some(&format!("failure.{}@funeral-manager", id(FAILED)))
    });
    assert_only(&world.check(), Invariant::OneMailPerOutcome);
}

#[test]
fn a_cancellation_that_overtook_the_confirmation_mail_needs_only_its_own_mail() {
    let mut world = world();
    world.mails.retain(|mail| {
        mail.message_id.as_deref()
            != Some(&format!("confirmation.{}@funeral-manager", id(REFUNDED)))
    });
    let report = world.check();
    assert!(report.passed(), "{}", report.render(20));
    assert_eq!(
        report.figures["  confirmations superseded by a cancellation"],
        "1"
    );
}

#[test]
fn a_missing_cancellation_mail_after_a_confirmation_is_reported() {
    let mut world = world();
    world.mails.retain(|mail| {
        mail.message_id.as_deref()
            != Some(&format!("cancellation.{}@funeral-manager", id(REFUNDED)))
    });
    assert_only(&world.check(), Invariant::OneMailPerOutcome);
}

#[test]
fn a_mail_for_an_outcome_that_did_not_happen_is_reported() {
    let mut world = world();
    world.mails.push(mail("failure", CONFIRMED));
    assert_only(&world.check(), Invariant::OneMailPerOutcome);
}

#[test]
fn a_mail_to_the_wrong_family_is_reported() {
    let mut world = world();
    world.mails[2].to = family(CONFIRMED);
    assert_only(&world.check(), Invariant::OneMailPerOutcome);
}

#[test]
fn a_dead_letter_without_a_reason_is_reported() {
    let mut world = world();
    world.dead_letters[0].reason = None;
    assert_only(&world.check(), Invariant::DeadLettersExplained);
}

#[test]
fn a_dead_letter_nobody_put_there_is_reported() {
    let mut world = world();
    world.dead_letters.push(DeadLetter {
        position: Position::new("fm.dead-letter", 0, 1),
        reason: Some("schema".into()),
        origin: Some(world.confirmed_request.clone()),
        value: b"{\"event_type\": \"BookingRequested\"}".to_vec(),
    });
    assert_only(&world.check(), Invariant::DeadLettersExplained);
}

#[test]
fn a_poison_record_never_dead_lettered_is_reported() {
    let mut world = world();
    world.dead_letters.clear();
    assert_only(&world.check(), Invariant::DeadLettersExplained);
}

#[test]
fn a_poison_record_written_twice_by_a_retried_send_is_explained_both_times() {
    let mut world = world();
    let copy = world.story.raw(
        &Kind::Booking.topic(PREFIX),
        1,
        b"soak-poison-1: not an event".to_vec(),
    );
    world.dead_letters.push(DeadLetter {
        position: Position::new("fm.dead-letter", 0, 1),
        reason: Some("not JSON".into()),
        origin: Some(copy),
        value: b"soak-poison-1: not an event".to_vec(),
    });
    world.caught_up();
    let report = world.check();
    assert!(report.passed(), "{}", report.render(20));
}

#[test]
fn a_record_that_is_not_an_event_and_was_not_injected_is_reported() {
    let mut world = world();
    world
        .story
        .raw(&Kind::Payment.topic(PREFIX), 0, b"{\"half\": ".to_vec());
    world.caught_up();
    assert_only(&world.check(), Invariant::DeadLettersExplained);
}

#[test]
fn without_the_saga_no_saga_mail_or_terminal_check_applies() {
    let mut world = world();
    world.mails.clear();
    world.open_sagas.push(OpenSaga {
        booking_id: id(CONFIRMED),
        state: "capturing".into(),
    });
    let mut inputs = Inputs {
        history: History::build(&world.story.records, PREFIX),
        journal: world.journal,
        read_models: Some(world.read_models),
        saga: false,
        ledger: world.ledger,
        dead_letters: world.dead_letters,
        ..Inputs::default()
    };
    inputs.log_ends = world
        .story
        .ends
        .into_iter()
        .filter(|((topic, _), _)| topic.ends_with(".events"))
        .collect();
    let report = check(&inputs);
    assert!(report.passed(), "{}", report.render(20));
}

#[test]
fn a_sealed_booking_is_read_without_its_people_and_its_letter_must_reach_one_family_only() {
    let booking = id(0xB9);
    let mut story = Story {
        version: Some(2),
        ..Story::default()
    };
    story.event_on(
        0,
        Kind::Booking,
        booking,
        1,
        "BookingRequested",
        DIRECTOR,
        None,
        json!({
            "booking_id": booking, "facility_id": id(FACILITY), "service_type": "burial",
            "slot": slot(9), "date_of_death": "2030-01-01",
            "personal": {"key_id": id(1), "nonce": "AAECAwQFBgcICQoLDA0ODxAREhMUFRYX", "ciphertext": "c2VhbGVk"},
            "price": {"amount_minor": 100_000, "currency": "GBP"},
        }),
    );
    story.version = Some(1);
    story.event_on(
        0,
        Kind::Booking,
        booking,
        2,
        "PersonalDataErased",
        DIRECTOR,
        None,
        json!({"reason": null}),
    );
    let history = History::build(&story.records, PREFIX);
    let fold = &history.bookings[&booking];
    assert_eq!(fold.emails, None);
    assert_eq!(fold.status, "requested", "an erasure changes no status");
    assert_eq!(fold.version, 2);

    let to = |addresses: &[&str]| Mail {
        file: "new/m".into(),
        message_id: Some("m".into()),
        to: addresses.iter().map(|a| (*a).to_owned()).collect(),
    };
    let mut report = Report::default();
    let one_family = to(&["family-1@soak.example", "family-1-b@soak.example"]);
    check_recipients("m", &[&one_family], fold, &mut report);
    assert!(violated(&report).is_empty(), "{:?}", report.violations);
    let two_families = to(&["family-1@soak.example", "family-2@soak.example"]);
    check_recipients("m", &[&two_families], fold, &mut report);
    assert_only(&report, Invariant::OneMailPerOutcome);
}
