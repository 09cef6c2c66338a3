use proptest::prelude::*;
use serde_json::json;

use super::*;
use crate::RejectionKind;
use crate::fixtures::{
    booking_id, other_booking_id, payment_captured, payment_id, price, record_capture,
};
use crate::testing::given;
use crate::values::Currency;

fn gbp(amount_minor: i64) -> Money {
    Money::new(amount_minor, Currency::GBP).unwrap()
}

fn capture_with_reference(reference: &str) -> PaymentCommand {
    PaymentCommand::RecordCapture {
        payment_id: payment_id(),
        booking_id: booking_id(),
        amount: price(),
        gateway_reference: reference.to_owned(),
    }
}

fn decline() -> PaymentCommand {
    PaymentCommand::RecordDecline {
        payment_id: payment_id(),
        booking_id: booking_id(),
        amount: price(),
        reason: "insufficient funds".to_owned(),
    }
}

fn declined() -> PaymentEvent {
    PaymentEvent::PaymentDeclined {
        payment_id: payment_id(),
        booking_id: booking_id(),
        amount: price(),
        reason: "insufficient funds".to_owned(),
    }
}

fn refund(amount: Money, reference: &str) -> PaymentCommand {
    PaymentCommand::RecordRefund {
        amount,
        gateway_reference: reference.to_owned(),
    }
}

fn refunded(reference: &str) -> PaymentEvent {
    PaymentEvent::PaymentRefunded {
        amount: price(),
        gateway_reference: reference.to_owned(),
    }
}

#[test]
fn records_a_capture() {
    let state = given::<Payment>([])
        .when(record_capture())
        .then([payment_captured()]);
    assert_eq!(state.status(), Some(PaymentStatus::Captured));
    assert_eq!(state.captured(), Some(price()));
}

#[test]
fn a_replayed_capture_with_the_same_reference_is_a_no_op() {
    given::<Payment>([payment_captured()])
        .when(record_capture())
        .then([]);
}

#[test]
fn a_second_capture_with_another_reference_is_refused() {
    given::<Payment>([payment_captured()])
        .when(capture_with_reference("cap_0002"))
        .then_err(|e| {
            matches!(e, DomainError::PaymentAlreadyCaptured) && e.kind() == RejectionKind::Conflict
        });
}

#[test]
fn a_declined_payment_cannot_be_captured() {
    given::<Payment>([declined()])
        .when(record_capture())
        .then_err(|e| matches!(e, DomainError::PaymentAlreadyDeclined));
}

#[test]
fn a_payment_id_must_be_derived_from_its_booking() {
    let command = PaymentCommand::RecordCapture {
        payment_id: PaymentId::for_booking(other_booking_id()),
        booking_id: booking_id(),
        amount: price(),
        gateway_reference: "cap_0001".to_owned(),
    };
    given::<Payment>([]).when(command).then_err(|e| {
        matches!(e, DomainError::PaymentIdMismatch) && e.field() == Some("payment_id")
    });
}

#[test]
fn a_capture_needs_a_gateway_reference() {
    given::<Payment>([])
        .when(capture_with_reference("  "))
        .then_err(|e| matches!(e, DomainError::MissingGatewayReference));
}

#[test]
fn records_a_decline() {
    let state = given::<Payment>([]).when(decline()).then([declined()]);
    assert_eq!(state.status(), Some(PaymentStatus::Declined));
    assert_eq!(state.captured(), None);
}

#[test]
fn a_replayed_decline_is_a_no_op() {
    given::<Payment>([declined()]).when(decline()).then([]);
}

#[test]
fn a_captured_payment_cannot_be_declined() {
    given::<Payment>([payment_captured()])
        .when(decline())
        .then_err(|e| matches!(e, DomainError::PaymentAlreadyCaptured));
}

#[test]
fn records_a_full_refund() {
    let state = given::<Payment>([payment_captured()])
        .when(refund(price(), "ref_0001"))
        .then([refunded("ref_0001")]);
    assert_eq!(state.status(), Some(PaymentStatus::Refunded));
    assert_eq!(state.refunded(), Some(price()));
}

#[test]
fn a_replayed_refund_is_a_no_op() {
    given::<Payment>([payment_captured(), refunded("ref_0001")])
        .when(refund(price(), "ref_0001"))
        .then([]);
}

#[test]
fn a_second_refund_under_another_reference_is_refused() {
    given::<Payment>([payment_captured(), refunded("ref_0001")])
        .when(refund(price(), "ref_0002"))
        .then_err(|e| matches!(e, DomainError::PaymentAlreadyRefunded));
}

#[test]
fn refunding_an_unknown_payment_is_not_found() {
    given::<Payment>([])
        .when(refund(price(), "ref_0001"))
        .then_err(|e| {
            matches!(e, DomainError::PaymentNotFound) && e.kind() == RejectionKind::NotFound
        });
}

#[test]
fn a_declined_payment_cannot_be_refunded() {
    given::<Payment>([declined()])
        .when(refund(price(), "ref_0001"))
        .then_err(|e| matches!(e, DomainError::PaymentNotCaptured));
}

#[test]
fn a_refund_must_be_in_the_captured_currency() {
    let euros = Money::new(price().amount_minor(), Currency::EUR).unwrap();
    given::<Payment>([payment_captured()])
        .when(refund(euros, "ref_0001"))
        .then_err(|e| {
            matches!(e, DomainError::RefundCurrencyMismatch { refund, captured }
                if *refund == Currency::EUR && *captured == Currency::GBP)
                && e.field() == Some("amount.currency")
        });
}

#[test]
fn a_refund_cannot_exceed_the_capture() {
    given::<Payment>([payment_captured()])
        .when(refund(gbp(125_001), "ref_0001"))
        .then_err(|e| matches!(e, DomainError::RefundExceedsCapture { .. }));
}

#[test]
fn partial_refunds_are_not_supported_yet() {
    given::<Payment>([payment_captured()])
        .when(refund(gbp(100), "ref_0001"))
        .then_err(|e| matches!(e, DomainError::PartialRefundNotSupported { .. }));
}

#[test]
fn payment_events_have_a_stable_wire_shape() {
    let expected = [
        json!({"event_type": "PaymentCaptured", "data": {
            "payment_id": payment_id().to_string(),
            "booking_id": "6a1f7a52-34b4-4e6b-9d0e-0c1f3a9b2c11",
            "amount": {"amount_minor": 125_000, "currency": "GBP"},
            "gateway_reference": "cap_0001"
        }}),
        json!({"event_type": "PaymentDeclined", "data": {
            "payment_id": payment_id().to_string(),
            "booking_id": "6a1f7a52-34b4-4e6b-9d0e-0c1f3a9b2c11",
            "amount": {"amount_minor": 125_000, "currency": "GBP"},
            "reason": "insufficient funds"
        }}),
        json!({"event_type": "PaymentRefunded", "data": {
            "amount": {"amount_minor": 125_000, "currency": "GBP"},
            "gateway_reference": "ref_0001"
        }}),
    ];
    let samples = PaymentEvent::samples();
    assert_eq!(samples.len(), expected.len());
    for (event, wire) in samples.iter().zip(expected) {
        assert_eq!(serde_json::to_value(event).unwrap(), wire);
    }
}

#[test]
fn payment_events_refuse_unknown_fields() {
    let wire = json!({"event_type": "PaymentRefunded", "data": {
        "amount": {"amount_minor": 1, "currency": "GBP"},
        "gateway_reference": "ref_0001",
        "partial": true
    }});
    assert!(serde_json::from_value::<PaymentEvent>(wire).is_err());
}

// ---- Property: the refunded amount never exceeds the captured amount. ----

fn any_command() -> impl Strategy<Value = PaymentCommand> {
    let reference = prop::sample::select(vec!["r1", "r2", "r3"]);
    let currency = prop::sample::select(vec![Currency::GBP, Currency::EUR]);
    prop_oneof![
        (0..1_000_i64, reference.clone()).prop_map(|(amount, reference)| {
            PaymentCommand::RecordCapture {
                payment_id: payment_id(),
                booking_id: booking_id(),
                amount: Money::new(amount, Currency::GBP).unwrap(),
                gateway_reference: reference.to_owned(),
            }
        }),
        (0..1_000_i64).prop_map(|amount| PaymentCommand::RecordDecline {
            payment_id: payment_id(),
            booking_id: booking_id(),
            amount: Money::new(amount, Currency::GBP).unwrap(),
            reason: "declined".to_owned(),
        }),
        (0..1_000_i64, currency, reference).prop_map(|(amount, currency, reference)| {
            PaymentCommand::RecordRefund {
                amount: Money::new(amount, currency).unwrap(),
                gateway_reference: reference.to_owned(),
            }
        }),
    ]
}

proptest! {
    #[test]
    fn the_refunded_amount_never_exceeds_the_captured_amount(
        commands in prop::collection::vec(any_command(), 1..20),
    ) {
        let mut state = PaymentState::default();
        let mut history: Vec<PaymentEvent> = Vec::new();
        for command in commands {
            if let Ok(events) = Payment::decide(&state, command) {
                state = events.iter().fold(state, Payment::evolve);
                history.extend(events);
            }
            if let Some(refunded) = state.refunded() {
                let captured = state.captured();
                prop_assert!(captured.is_some(), "refunded without a capture");
                let captured = captured.unwrap();
                prop_assert_eq!(refunded.currency(), captured.currency());
                prop_assert!(refunded.amount_minor() <= captured.amount_minor());
            }
            let count = |event_type: &str| history.iter().filter(|e| e.event_type() == event_type).count();
            prop_assert!(count("PaymentCaptured") <= 1);
            prop_assert!(count("PaymentRefunded") <= 1);
            prop_assert!(count("PaymentCaptured") + count("PaymentDeclined") <= 1);
        }
    }
}
