//! The saga stream: what operators (and the saga runner itself) decided about one booking's
//! saga. Not a fact of the booking, the facility or the money, but a decision about the
//! *process* that drives them: park it, retry it now, skip a step, or settle it by hand.
//!
//! Each decision is an event, so the log says who decided (the envelope's actor) and why
//! (`reason`), and every runner replica obeys the same decisions after a restart. One stream per
//! booking, with id [`SagaId::for_booking`](crate::values::SagaId::for_booking); docs/saga.md,
//! "Operator actions", is the design.
//!
//! The rules this stream can check on its own: a saga resolved by hand is final (every other
//! action is refused, resolving it again changes nothing); parking a saga already parked at
//! that step changes nothing; only a step whose effect is the saga's own knowledge may be
//! skipped (a letter, a capture lookup). What only the runner knows (whether the saga exists,
//! is done, or is on the step named) is checked by the runner's ops API before it forwards.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::values::BookingId;
use crate::{Aggregate, DomainError, DomainEvent, ValueError};

#[cfg(test)]
mod tests;

/// The saga stream (a type-level marker; the data lives in [`SagaState`]).
#[derive(Debug)]
pub enum Saga {}

/// A step of the booking saga, by the stable name the runner, its metrics, the ops API and
/// these events use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SagaStep {
    ReserveSlot,
    MarkSlotHeld,
    Capture,
    LookupCapture,
    Confirm,
    Reject,
    ReleaseSlot,
    Fail,
    Refund,
    NotifyConfirmation,
    NotifyRejection,
    NotifyFailure,
    NotifyCancellation,
    /// Recording on the log that the saga parks itself.
    Park,
}

impl SagaStep {
    /// Every step, in the order of the flow.
    pub const ALL: [Self; 14] = [
        Self::ReserveSlot,
        Self::MarkSlotHeld,
        Self::Capture,
        Self::LookupCapture,
        Self::Confirm,
        Self::Reject,
        Self::ReleaseSlot,
        Self::Fail,
        Self::Refund,
        Self::NotifyConfirmation,
        Self::NotifyRejection,
        Self::NotifyFailure,
        Self::NotifyCancellation,
        Self::Park,
    ];

    /// The wire name, in `snake_case`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::ReserveSlot => "reserve_slot",
            Self::MarkSlotHeld => "mark_slot_held",
            Self::Capture => "capture",
            Self::LookupCapture => "lookup_capture",
            Self::Confirm => "confirm",
            Self::Reject => "reject",
            Self::ReleaseSlot => "release_slot",
            Self::Fail => "fail",
            Self::Refund => "refund",
            Self::NotifyConfirmation => "notify_confirmation",
            Self::NotifyRejection => "notify_rejection",
            Self::NotifyFailure => "notify_failure",
            Self::NotifyCancellation => "notify_cancellation",
            Self::Park => "park",
        }
    }

    /// Parses a wire name.
    pub fn parse(name: &str) -> Result<Self, ValueError> {
        Self::ALL
            .into_iter()
            .find(|step| step.as_str() == name)
            .ok_or_else(|| {
                ValueError::new(
                    "saga.step",
                    format!("must be one of: {}", Self::ALL.map(Self::as_str).join(", ")),
                )
            })
    }

    /// Whether an operator may count this step as done without it being performed. Only
    /// steps whose effect is the saga's own knowledge qualify: a letter (the family was told
    /// another way) and a capture lookup (the provider's dashboard shows no money moved).
    /// Skipping any other step would make the saga believe a fact the log does not hold (a
    /// slot, a payment, a booking's status), so it is refused.
    pub const fn skippable(self) -> bool {
        matches!(
            self,
            Self::LookupCapture
                | Self::NotifyConfirmation
                | Self::NotifyRejection
                | Self::NotifyFailure
                | Self::NotifyCancellation
        )
    }
}

impl fmt::Display for SagaStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the stream remembers, as far as its rules need it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SagaState {
    /// The step the saga is parked at, if it is parked.
    parked: Option<SagaStep>,
    /// Whether the saga was resolved by hand (final).
    resolved: bool,
}

impl SagaState {
    /// The step the saga is parked at, if it is parked.
    pub fn parked(&self) -> Option<SagaStep> {
        self.parked
    }

    /// Whether the saga was resolved by hand.
    pub fn resolved(&self) -> bool {
        self.resolved
    }
}

/// What an operator (or the runner) decides about a booking's saga. Every reason is the edge's
/// trimmed 1–500 characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SagaCommand {
    /// Stop acting on the saga until it is retried or resolved.
    Park {
        booking_id: BookingId,
        step: SagaStep,
        reason: String,
    },
    /// Act now: unpark, forget the failed attempts, start the step's clock again.
    Retry {
        booking_id: BookingId,
        reason: String,
    },
    /// Count `step` as done.
    Skip {
        booking_id: BookingId,
        step: SagaStep,
        reason: String,
    },
    /// The booking was settled outside the system: the saga does nothing more.
    Resolve {
        booking_id: BookingId,
        reason: String,
    },
}

/// What was decided about a booking's saga.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event_type", content = "data", deny_unknown_fields)]
pub enum SagaEvent {
    /// The saga stopped at `step`.
    #[serde(rename = "SagaParked")]
    SagaParked {
        booking_id: BookingId,
        step: SagaStep,
        reason: String,
    },
    /// Someone asked the saga to act now.
    #[serde(rename = "SagaRetryRequested")]
    SagaRetryRequested {
        booking_id: BookingId,
        reason: String,
    },
    /// `step` counts as done without being performed.
    #[serde(rename = "SagaStepSkipped")]
    SagaStepSkipped {
        booking_id: BookingId,
        step: SagaStep,
        reason: String,
    },
    /// The booking was settled outside the system.
    #[serde(rename = "SagaResolvedByHand")]
    SagaResolvedByHand {
        booking_id: BookingId,
        reason: String,
    },
}

impl SagaEvent {
    /// The booking whose saga this is about.
    pub fn booking_id(&self) -> BookingId {
        match self {
            Self::SagaParked { booking_id, .. }
            | Self::SagaRetryRequested { booking_id, .. }
            | Self::SagaStepSkipped { booking_id, .. }
            | Self::SagaResolvedByHand { booking_id, .. } => *booking_id,
        }
    }
}

impl DomainEvent for SagaEvent {
    fn event_type(&self) -> &'static str {
        match self {
            Self::SagaParked { .. } => "SagaParked",
            Self::SagaRetryRequested { .. } => "SagaRetryRequested",
            Self::SagaStepSkipped { .. } => "SagaStepSkipped",
            Self::SagaResolvedByHand { .. } => "SagaResolvedByHand",
        }
    }

    fn event_version(&self) -> u16 {
        1
    }

    fn catalogue() -> &'static [(&'static str, u16)] {
        &[
            ("SagaParked", 1),
            ("SagaRetryRequested", 1),
            ("SagaStepSkipped", 1),
            ("SagaResolvedByHand", 1),
        ]
    }
}

impl Aggregate for Saga {
    const AGGREGATE_TYPE: &'static str = "saga";
    type State = SagaState;
    type Command = SagaCommand;
    type Event = SagaEvent;

    fn decide(state: &SagaState, command: SagaCommand) -> Result<Vec<SagaEvent>, DomainError> {
        if state.resolved {
            return match command {
                // Settled is settled: saying it again changes nothing.
                SagaCommand::Resolve { .. } => Ok(vec![]),
                _ => Err(DomainError::SagaResolved),
            };
        }
        Ok(match command {
            SagaCommand::Park { step, .. } if state.parked == Some(step) => vec![],
            SagaCommand::Park {
                booking_id,
                step,
                reason,
            } => vec![SagaEvent::SagaParked {
                booking_id,
                step,
                reason,
            }],
            SagaCommand::Retry { booking_id, reason } => {
                vec![SagaEvent::SagaRetryRequested { booking_id, reason }]
            }
            SagaCommand::Skip { step, .. } if !step.skippable() => {
                return Err(DomainError::SagaStepNotSkippable { step });
            }
            SagaCommand::Skip {
                booking_id,
                step,
                reason,
            } => vec![SagaEvent::SagaStepSkipped {
                booking_id,
                step,
                reason,
            }],
            SagaCommand::Resolve { booking_id, reason } => {
                vec![SagaEvent::SagaResolvedByHand { booking_id, reason }]
            }
        })
    }

    fn evolve(mut state: SagaState, event: &SagaEvent) -> SagaState {
        match event {
            SagaEvent::SagaParked { step, .. } => state.parked = Some(*step),
            SagaEvent::SagaRetryRequested { .. } => state.parked = None,
            SagaEvent::SagaStepSkipped { step, .. } => {
                if state.parked == Some(*step) {
                    state.parked = None;
                }
            }
            SagaEvent::SagaResolvedByHand { .. } => {
                state.parked = None;
                state.resolved = true;
            }
        }
        state
    }
}
