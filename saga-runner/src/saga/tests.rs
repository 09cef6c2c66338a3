//! The saga's decisions, fact by fact: given these events (and what acting taught it), the next
//! step is this one. Plus the laws that make it safe: replaying an event changes nothing, and
//! no sequence of facts ends `Done` with money or a slot still held for a booking that is not
//! confirmed.

use chrono::{DateTime, TimeDelta, Utc};
use domain::{
    booking::{BookingEvent, BookingStatus},
    facility::{FacilityEvent, SlotRejectionReason},
    fixtures,
    payment::PaymentEvent,
    values::{Currency, Money, PaymentId},
};
use notifications::NotificationKind;
use proptest::prelude::*;
use uuid::Uuid;

use super::*;

fn t0() -> DateTime<Utc> {
    fixtures::now()
}

fn seconds(n: i64) -> DateTime<Utc> {
    t0() + TimeDelta::seconds(n)
}

fn observed<E>(event: E, at: DateTime<Utc>) -> Observed<E> {
    Observed {
        event,
        event_id: Uuid::new_v4(),
        correlation_id: Uuid::from_u128(7),
        occurred_at: at,
        traceparent: None,
        actor: "byron (family)".to_owned(),
    }
}

/// The facts as events arrive, one builder call per event.
#[derive(Clone)]
struct Given {
    saga: Saga,
    deadlines: Deadlines,
}

fn given() -> Given {
    Given {
        saga: Saga::new(fixtures::booking_id()),
        deadlines: Deadlines::default(),
    }
}

impl Given {
    fn booking(mut self, event: BookingEvent) -> Self {
        self.saga.on_booking(&observed(event, t0()));
        // The worker's next pass, at t0, starts the clock of the new step.
        self.saga.arm_deadlines(t0(), &self.deadlines);
        self
    }
    fn requested(self) -> Self {
        self.booking(fixtures::booking_requested())
    }
    fn slot(mut self, event: FacilityEvent) -> Self {
        self.saga.on_facility(&observed(event, t0()));
        self
    }
    fn reserved(self) -> Self {
        self.slot(FacilityEvent::SlotReserved {
            booking_id: fixtures::booking_id(),
            slot: fixtures::slot(),
        })
    }
    fn released(self) -> Self {
        self.slot(FacilityEvent::SlotReleased {
            booking_id: fixtures::booking_id(),
        })
    }
    fn held(self) -> Self {
        self.requested()
            .reserved()
            .booking(BookingEvent::BookingSlotHeld {})
    }
    fn payment(mut self, event: PaymentEvent) -> Self {
        self.saga.on_payment(&observed(event, t0()));
        self
    }
    fn captured(self) -> Self {
        self.payment(fixtures::payment_captured())
    }
    fn declined(self) -> Self {
        self.payment(PaymentEvent::PaymentDeclined {
            payment_id: fixtures::payment_id(),
            booking_id: fixtures::booking_id(),
            amount: fixtures::price(),
            reason: "card_declined".to_owned(),
        })
    }
    fn refunded(self) -> Self {
        self.payment(PaymentEvent::PaymentRefunded {
            amount: fixtures::price(),
            gateway_reference: "rf-1".to_owned(),
        })
    }
    fn learned(mut self, learned: Learned) -> Self {
        self.saga.learn(learned);
        self
    }
    fn decide(&self) -> Decision {
        self.saga.decide(t0())
    }
    fn decide_at(&self, at: DateTime<Utc>) -> Decision {
        self.saga.decide(at)
    }
}

fn step(step: Step) -> Decision {
    Decision::Do(step)
}

fn notify(kind: NotificationKind) -> Decision {
    Decision::Do(Step::Notify { kind })
}

#[test]
fn waits_for_the_booking_request_when_other_facts_come_first() {
    assert_eq!(given().reserved().decide(), Decision::Wait);
}

#[test]
fn reserves_the_slot_of_a_new_request() {
    let saga = given().requested();
    assert_eq!(saga.decide(), step(Step::ReserveSlot));
    let request = saga.saga.request.as_ref().expect("request kept");
    assert_eq!(request.slot, fixtures::slot());
    assert_eq!(request.price, fixtures::price());
    // The recipients stay sealed until a letter is sent.
    assert_eq!(request.personal, Some(fixtures::sealed_personal()));
    assert!(request.recipients.is_empty());
    assert!(!serde_json::to_string(&saga.saga).unwrap().contains("byron"));
    assert_eq!(saga.saga.correlation_id, Some(Uuid::from_u128(7)));
}

#[test]
fn marks_the_slot_held_once_the_facility_reserved_it() {
    assert_eq!(
        given().requested().reserved().decide(),
        step(Step::MarkSlotHeld)
    );
}

#[test]
fn rejects_the_booking_when_the_facility_refuses_the_slot() {
    let saga = given().requested().slot(FacilityEvent::SlotRejected {
        booking_id: fixtures::booking_id(),
        slot: fixtures::slot(),
        reason: SlotRejectionReason::OverlapsExisting,
    });
    assert_eq!(
        saga.decide(),
        step(Step::Reject {
            reason: "the slot could not be booked: the facility is already booked at that time"
                .to_owned()
        })
    );
    let saga = saga.booking(BookingEvent::BookingRejected {
        reason: "x".to_owned(),
    });
    assert_eq!(saga.decide(), notify(NotificationKind::Rejection));
    let saga = saga.learned(Learned::Notified(NotificationKind::Rejection));
    assert_eq!(saga.decide(), Decision::Done);
}

#[test]
fn fails_the_booking_only_when_no_answer_came_before_the_bookings_overall_deadline() {
    let saga = given().requested();
    // Past the reserve deadline: stuck, still asking (an outage is not the family's failure).
    assert_eq!(saga.decide_at(seconds(31)), step(Step::ReserveSlot));
    let late = seconds(30 * 60);
    assert_eq!(
        saga.decide_at(late),
        step(Step::Fail {
            reason: "the facility could not confirm the slot in time".to_owned()
        })
    );
}

#[test]
fn a_reservation_that_lands_after_the_booking_failed_is_released() {
    let saga = given()
        .requested()
        .booking(BookingEvent::BookingFailed {
            reason: "late".to_owned(),
        })
        .learned(Learned::Notified(NotificationKind::Failure));
    assert_eq!(saga.decide(), Decision::Done);
    let saga = saga.reserved();
    assert_eq!(saga.decide(), step(Step::ReleaseSlot));
    assert_eq!(saga.released().decide(), Decision::Done);
}

#[test]
fn captures_once_the_slot_is_held_and_confirms_once_captured() {
    let saga = given().held();
    assert_eq!(saga.decide(), step(Step::Capture));
    let saga = saga.captured();
    assert_eq!(saga.decide(), step(Step::Confirm));
    let saga = saga.booking(BookingEvent::BookingConfirmed {});
    assert_eq!(saga.decide(), notify(NotificationKind::Confirmation));
    let saga = saga.learned(Learned::Notified(NotificationKind::Confirmation));
    assert_eq!(saga.decide(), Decision::Done);
}

#[test]
fn a_decline_releases_the_slot_then_fails_the_booking_then_tells_the_family() {
    let saga = given().held().declined();
    assert_eq!(saga.decide(), step(Step::ReleaseSlot));
    let saga = saga.released();
    assert_eq!(
        saga.decide(),
        step(Step::Fail {
            reason: "the payment was declined (card_declined)".to_owned()
        })
    );
    let saga = saga.booking(BookingEvent::BookingFailed {
        reason: "declined".to_owned(),
    });
    assert_eq!(saga.decide(), notify(NotificationKind::Failure));
    assert_eq!(
        saga.learned(Learned::Notified(NotificationKind::Failure))
            .decide(),
        Decision::Done
    );
}

#[test]
fn keeps_retrying_the_capture_until_its_deadline() {
    let saga = given().held().learned(Learned::CaptureUncertain);
    assert_eq!(saga.decide_at(seconds(119)), step(Step::Capture));
}

#[test]
fn past_the_deadline_a_capture_whose_answer_was_lost_is_looked_up_not_compensated() {
    let saga = given().held().learned(Learned::CaptureUncertain);
    let late = seconds(121);
    assert_eq!(saga.decide_at(late), step(Step::LookupCapture));
    // The lookup finds the capture: it is recorded and the booking confirmed after all.
    let found = saga.captured();
    assert_eq!(found.decide_at(late), step(Step::Confirm));
}

#[test]
fn past_the_deadline_with_no_money_possibly_taken_the_booking_fails_cleanly() {
    let saga = given().held();
    let late = seconds(121);
    assert_eq!(saga.decide_at(late), step(Step::ReleaseSlot));
    let saga = saga.released();
    assert_eq!(
        saga.decide_at(late),
        step(Step::Fail {
            reason: "the payment could not be taken in time".to_owned()
        })
    );
}

#[test]
fn a_capture_recorded_past_the_deadline_is_awaited_not_failed() {
    // The gateway answered after the deadline (or a lookup found the capture) and the saga
    // recorded it; the payment's event has not been read yet.
    let saga = given().held().learned(Learned::CaptureRecorded);
    let late = seconds(121);
    assert_eq!(saga.decide_at(late), step(Step::LookupCapture));
    assert_eq!(saga.captured().decide_at(late), step(Step::Confirm));
    // Recorded once the event was read already: nothing is left in doubt.
    let read_first = given().held().captured().learned(Learned::CaptureRecorded);
    assert!(!read_first.saga.capture.uncertain);
    assert_eq!(read_first.decide_at(late), step(Step::Confirm));
}

#[test]
fn a_capture_attempt_whose_record_was_lost_is_looked_up_before_the_booking_fails() {
    // Found by the soak: the capture request went out, then the pass's transaction was lost
    // (PostgreSQL restarted under it) and with it what the attempt taught; past the deadline
    // the saga failed the booking and kept the money. The write-ahead mark survives.
    let mut saga = given().held();
    saga.saga.capture.attempting = true;
    let late = seconds(121);
    assert_eq!(saga.decide_at(late), step(Step::LookupCapture));
    let found = saga.clone().learned(Learned::CaptureRecorded).captured();
    assert_eq!(found.decide_at(late), step(Step::Confirm));
    let nothing = saga.learned(Learned::CaptureSettled);
    assert!(!nothing.saga.capture.in_doubt());
    assert_eq!(nothing.decide_at(late), step(Step::ReleaseSlot));
}

#[test]
fn the_pass_that_sent_a_capture_accounts_for_it() {
    // A refused connection took no money: the pass that saw it clears its own mark, and
    // the booking fails cleanly at the deadline without a lookup the gateway cannot answer.
    let mut saga = given().held();
    saga.saga.capture.attempting = true;
    saga.saga.performed(&Step::Capture, false, seconds(10));
    assert!(!saga.saga.capture.in_doubt());
    assert_eq!(saga.decide_at(seconds(121)), step(Step::ReleaseSlot));
    // An earlier lost answer stays in doubt.
    let mut earlier = given().held().learned(Learned::CaptureUncertain);
    earlier.saga.capture.attempting = true;
    earlier.saga.performed(&Step::Capture, false, seconds(10));
    assert_eq!(earlier.decide_at(seconds(121)), step(Step::LookupCapture));
}

#[test]
fn a_lost_attempt_stays_in_doubt_when_the_next_one_takes_no_money() {
    // Found by the soak: the capture's pass was lost (PostgreSQL restarted under it), then the
    // next attempts failed fast on the open breaker, and the first of them cleared the lost
    // attempt's mark as if it were its own; past the deadline the booking failed, money kept.
    let mut saga = given().held();
    saga.saga.capture.attempting = true; // left by the lost pass
    // The next pass marks its own attempt (the mark is already set), the breaker refuses it.
    saga.saga.performed(&Step::Capture, true, seconds(10));
    assert!(saga.saga.capture.uncertain);
    assert!(!saga.saga.capture.attempting);
    assert_eq!(saga.decide_at(seconds(121)), step(Step::LookupCapture));
}

#[test]
fn a_capture_read_after_the_slot_was_released_fails_and_refunds_never_confirms() {
    let saga = given().held().released().captured();
    assert_eq!(
        saga.decide(),
        step(Step::Fail {
            reason: "the slot was released before the payment was recorded".to_owned()
        })
    );
    let failed = saga.booking(BookingEvent::BookingFailed {
        reason: "released".to_owned(),
    });
    assert_eq!(failed.decide(), step(Step::Refund));
}

#[test]
fn a_lookup_that_finds_nothing_lets_the_booking_fail() {
    let saga = given()
        .held()
        .learned(Learned::CaptureUncertain)
        .learned(Learned::CaptureSettled);
    assert_eq!(saga.decide_at(seconds(121)), step(Step::ReleaseSlot));
}

#[test]
fn a_cancellation_after_confirmation_refunds_then_releases_then_tells_the_family() {
    let saga = given()
        .held()
        .captured()
        .booking(BookingEvent::BookingConfirmed {})
        .learned(Learned::Notified(NotificationKind::Confirmation))
        .booking(BookingEvent::BookingCancelled {
            reason: None,
            was_confirmed: true,
        });
    assert_eq!(saga.decide(), step(Step::Refund));
    let saga = saga.refunded();
    assert_eq!(saga.decide(), step(Step::ReleaseSlot));
    let saga = saga.released();
    assert_eq!(saga.decide(), notify(NotificationKind::Cancellation));
    assert_eq!(
        saga.learned(Learned::Notified(NotificationKind::Cancellation))
            .decide(),
        Decision::Done
    );
}

#[test]
fn a_cancellation_during_an_uncertain_capture_looks_the_capture_up_first() {
    let saga =
        given()
            .held()
            .learned(Learned::CaptureUncertain)
            .booking(BookingEvent::BookingCancelled {
                reason: None,
                was_confirmed: false,
            });
    assert_eq!(saga.decide(), step(Step::LookupCapture));
    // The money had moved: give it back.
    assert_eq!(saga.captured().decide(), step(Step::Refund));
}

#[test]
fn a_confirm_refused_because_the_family_cancelled_meanwhile_ends_in_a_refund() {
    let saga = given()
        .held()
        .captured()
        .booking(BookingEvent::BookingCancelled {
            reason: None,
            was_confirmed: false,
        });
    assert_eq!(saga.decide(), step(Step::Refund));
}

#[test]
fn a_mail_given_up_on_ends_the_saga() {
    let saga = given()
        .held()
        .captured()
        .booking(BookingEvent::BookingConfirmed {})
        .learned(Learned::NotificationAbandoned(
            NotificationKind::Confirmation,
        ));
    assert_eq!(saga.decide(), Decision::Done);
}

#[test]
fn a_deadline_runs_from_the_first_attempt_not_from_the_event() {
    let mut saga = Saga::new(fixtures::booking_id());
    saga.on_booking(&observed(fixtures::booking_requested(), t0()));
    // The runner first gets to this saga ten minutes later: it still tries to reserve.
    let later = seconds(600);
    saga.arm_deadlines(later, &Deadlines::default());
    assert_eq!(
        saga.decide(later + TimeDelta::seconds(29)),
        step(Step::ReserveSlot)
    );
    // Arming again does not move the deadline.
    saga.arm_deadlines(later + TimeDelta::seconds(20), &Deadlines::default());
    // Past the reserve deadline the saga is stuck, but an unanswered reservation is the
    // system's own trouble: it keeps asking until the booking's overall deadline (issue 14).
    let reserving = Decision::Do(Step::ReserveSlot);
    assert_eq!(saga.decide(later + TimeDelta::seconds(30)), reserving);
    assert!(saga.deadline_of(&reserving) <= Some(later + TimeDelta::seconds(30)));
    assert_eq!(
        saga.decide(later + TimeDelta::minutes(30) - TimeDelta::seconds(1)),
        reserving
    );
    assert_eq!(
        saga.decide(later + TimeDelta::minutes(30)),
        step(Step::Fail {
            reason: "the facility could not confirm the slot in time".to_owned()
        })
    );
}

#[test]
fn the_deadline_of_a_mail_starts_at_the_outcome() {
    let saga = given()
        .held()
        .captured()
        .booking(BookingEvent::BookingConfirmed {});
    assert!(!saga.saga.notification_overdue(seconds(3599)));
    assert!(saga.saga.notification_overdue(seconds(3600)));
}

#[test]
fn payment_events_settle_an_uncertain_capture() {
    let saga = given().held().learned(Learned::CaptureUncertain).declined();
    assert!(!saga.saga.capture.uncertain);
}

#[test]
fn steps_have_stable_names_and_compensations_are_labelled() {
    assert_eq!(Step::ReserveSlot.name(), "reserve_slot");
    assert_eq!(
        Step::Notify {
            kind: NotificationKind::Cancellation
        }
        .name(),
        "notify_cancellation"
    );
    assert_eq!(Step::Refund.compensation(), Some("refund"));
    assert_eq!(Step::Capture.compensation(), None);
}

// ---------------------------------------------------------------------------------------------
// Laws

/// Any fact the log or the saga's own actions can deliver, in any order.
#[derive(Debug, Clone)]
enum Fact {
    Booking(BookingEvent),
    Facility(FacilityEvent),
    Payment(PaymentEvent),
    Learned(Learned),
    /// The write-ahead mark of a capture attempt whose pass never recorded its outcome.
    CaptureAttemptLost,
}

fn any_fact() -> impl Strategy<Value = Fact> {
    let booking = fixtures::booking_id();
    let money = Money::new(125_000, Currency::parse("GBP").expect("GBP")).expect("money");
    prop_oneof![
        Just(Fact::Booking(fixtures::booking_requested())),
        Just(Fact::Booking(BookingEvent::BookingSlotHeld {})),
        Just(Fact::Booking(BookingEvent::BookingConfirmed {})),
        Just(Fact::Booking(BookingEvent::BookingFailed {
            reason: "r".to_owned()
        })),
        Just(Fact::Booking(BookingEvent::BookingRejected {
            reason: "r".to_owned()
        })),
        any::<bool>().prop_map(
            |was_confirmed| Fact::Booking(BookingEvent::BookingCancelled {
                reason: None,
                was_confirmed
            })
        ),
        Just(Fact::Facility(FacilityEvent::SlotReserved {
            booking_id: booking,
            slot: fixtures::slot()
        })),
        Just(Fact::Facility(FacilityEvent::SlotReleased {
            booking_id: booking
        })),
        Just(Fact::Payment(PaymentEvent::PaymentCaptured {
            payment_id: PaymentId::for_booking(booking),
            booking_id: booking,
            amount: money,
            gateway_reference: "cp".to_owned()
        })),
        Just(Fact::Payment(PaymentEvent::PaymentRefunded {
            amount: money,
            gateway_reference: "rf".to_owned()
        })),
        Just(Fact::Learned(Learned::CaptureUncertain)),
        Just(Fact::Learned(Learned::CaptureRecorded)),
        Just(Fact::Learned(Learned::CaptureSettled)),
        Just(Fact::CaptureAttemptLost),
    ]
}

fn apply(saga: &mut Saga, fact: &Fact) {
    match fact {
        Fact::Booking(event) => {
            saga.on_booking(&observed(event.clone(), t0()));
            saga.arm_deadlines(t0(), &Deadlines::default());
        }
        Fact::Facility(event) => saga.on_facility(&observed(event.clone(), t0())),
        Fact::Payment(event) => saga.on_payment(&observed(event.clone(), t0())),
        Fact::Learned(learned) => saga.learn(*learned),
        Fact::CaptureAttemptLost => saga.capture.attempting = true,
    }
}

proptest! {
    /// A redelivered event (Kafka is at-least-once) never changes the next decision.
    #[test]
    fn applying_an_event_twice_decides_like_applying_it_once(
        facts in proptest::collection::vec(any_fact(), 1..12),
        at in 0_i64..4000,
    ) {
        let mut once = Saga::new(fixtures::booking_id());
        let mut twice = Saga::new(fixtures::booking_id());
        for fact in &facts {
            apply(&mut once, fact);
            apply(&mut twice, fact);
            if !matches!(fact, Fact::Learned(_)) {
                apply(&mut twice, fact);
            }
        }
        prop_assert_eq!(once.decide(seconds(at)), twice.decide(seconds(at)));
    }

    /// A saga only ends when nothing is left half-done: a booking that is not confirmed holds
    /// no slot and no money and has no capture in doubt, and a confirmed one is paid for.
    #[test]
    fn done_means_nothing_is_left_half_done(
        facts in proptest::collection::vec(any_fact(), 1..12),
        at in 0_i64..4000,
    ) {
        let mut saga = Saga::new(fixtures::booking_id());
        for fact in &facts {
            apply(&mut saga, fact);
        }
        if saga.decide(seconds(at)) == Decision::Done {
            match saga.status {
                Some(BookingStatus::Confirmed) => {}
                Some(_) => {
                    prop_assert!(saga.slot != SlotFact::Reserved);
                    let captured = matches!(saga.payment, PaymentFact::Captured { .. });
                    prop_assert!(!captured, "money kept");
                    prop_assert!(!saga.capture.in_doubt());
                }
                None => prop_assert!(false, "done before the booking was requested"),
            }
        }
    }
}
