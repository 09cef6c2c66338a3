use super::*;
use crate::RejectionKind;
use crate::fixtures::booking_id;
use crate::testing::given;

fn reason(text: &str) -> String {
    text.to_owned()
}

fn parked(step: SagaStep) -> SagaEvent {
    SagaEvent::SagaParked {
        booking_id: booking_id(),
        step,
        reason: reason("the gateway refused the request"),
    }
}

fn park(step: SagaStep) -> SagaCommand {
    SagaCommand::Park {
        booking_id: booking_id(),
        step,
        reason: reason("the gateway refused the request"),
    }
}

fn resolved() -> SagaEvent {
    SagaEvent::SagaResolvedByHand {
        booking_id: booking_id(),
        reason: reason("refunded outside the system"),
    }
}

fn resolve() -> SagaCommand {
    SagaCommand::Resolve {
        booking_id: booking_id(),
        reason: reason("refunded outside the system"),
    }
}

#[test]
fn parks_a_saga_at_a_step() {
    let state = given::<Saga>([])
        .when(park(SagaStep::Refund))
        .then([parked(SagaStep::Refund)]);
    assert_eq!(state.parked(), Some(SagaStep::Refund));
}

#[test]
fn parking_a_saga_already_parked_at_that_step_is_a_no_op() {
    given::<Saga>([parked(SagaStep::Refund)])
        .when(park(SagaStep::Refund))
        .then([]);
}

#[test]
fn a_retry_unparks_the_saga() {
    let state = given::<Saga>([parked(SagaStep::Capture)])
        .when(SagaCommand::Retry {
            booking_id: booking_id(),
            reason: reason("the provider is back"),
        })
        .then([SagaEvent::SagaRetryRequested {
            booking_id: booking_id(),
            reason: reason("the provider is back"),
        }]);
    assert_eq!(state.parked(), None);
}

#[test]
fn skipping_the_parked_step_unparks_the_saga() {
    let state = given::<Saga>([parked(SagaStep::NotifyFailure)])
        .when(SagaCommand::Skip {
            booking_id: booking_id(),
            step: SagaStep::NotifyFailure,
            reason: reason("the director phoned the family"),
        })
        .then([SagaEvent::SagaStepSkipped {
            booking_id: booking_id(),
            step: SagaStep::NotifyFailure,
            reason: reason("the director phoned the family"),
        }]);
    assert_eq!(state.parked(), None);
}

#[test]
fn a_step_whose_effect_is_a_fact_of_the_log_cannot_be_skipped() {
    for step in [
        SagaStep::ReserveSlot,
        SagaStep::Capture,
        SagaStep::Refund,
        SagaStep::ReleaseSlot,
        SagaStep::Confirm,
    ] {
        given::<Saga>([])
            .when(SagaCommand::Skip {
                booking_id: booking_id(),
                step,
                reason: reason("try"),
            })
            .then_err(|e| {
                matches!(e, DomainError::SagaStepNotSkippable { .. })
                    && e.kind() == RejectionKind::Invalid
                    && e.field() == Some("step")
            });
    }
}

#[test]
fn a_saga_resolved_by_hand_refuses_every_other_action() {
    given::<Saga>([resolved()])
        .when(park(SagaStep::Capture))
        .then_err(|e| {
            matches!(e, DomainError::SagaResolved) && e.kind() == RejectionKind::Conflict
        });
    given::<Saga>([resolved()])
        .when(SagaCommand::Retry {
            booking_id: booking_id(),
            reason: reason("again"),
        })
        .then_err(|e| matches!(e, DomainError::SagaResolved));
}

#[test]
fn resolving_a_resolved_saga_again_is_a_no_op() {
    given::<Saga>([resolved()]).when(resolve()).then([]);
}

#[test]
fn resolving_a_parked_saga_settles_it() {
    let state = given::<Saga>([parked(SagaStep::Refund)])
        .when(resolve())
        .then([resolved()]);
    assert!(state.resolved());
    assert_eq!(state.parked(), None);
}

#[test]
fn every_step_name_parses_back_and_an_unknown_one_is_refused() {
    for step in SagaStep::ALL {
        assert_eq!(SagaStep::parse(step.as_str()), Ok(step));
        assert_eq!(
            serde_json::to_value(step).unwrap(),
            serde_json::json!(step.as_str())
        );
    }
    assert_eq!(SagaStep::parse("teleport").unwrap_err().rule, "saga.step");
}
