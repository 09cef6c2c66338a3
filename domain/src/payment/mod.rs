//! The payment aggregate: the money side of one booking.
//!
//! The gateway moves the money; this aggregate records what the gateway answered, so its
//! commands are "record" commands and their decisions are mostly about idempotency: a saga that
//! retries after a crash replays the gateway's answer, which must not count twice. There is one
//! payment per booking, with id [`PaymentId::for_booking`].
//!
//! Status: `captured` → `refunded`, or `declined`. Only full refunds exist for now.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::values::{BookingId, Money, PaymentId};
use crate::{Aggregate, DomainError, DomainEvent};

#[cfg(test)]
mod tests;

/// The payment aggregate (a type-level marker; the data lives in [`PaymentState`]).
#[derive(Debug)]
pub enum Payment {}

/// Where a payment stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentStatus {
    /// The gateway took the money.
    Captured,
    /// The gateway refused. Final.
    Declined,
    /// The money was given back in full. Final.
    Refunded,
}

impl PaymentStatus {
    /// The wire code, in `snake_case`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Captured => "captured",
            Self::Declined => "declined",
            Self::Refunded => "refunded",
        }
    }
}

impl fmt::Display for PaymentStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the payment remembers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentRecord {
    /// The payment's id.
    pub payment_id: PaymentId,
    /// The booking paid for.
    pub booking_id: BookingId,
    /// Where it stands.
    pub status: PaymentStatus,
    /// The amount captured, or the amount that was declined.
    pub amount: Money,
    /// The gateway's reference for the capture, if captured.
    pub capture_reference: Option<String>,
    /// The gateway's reference for the refund, if refunded.
    pub refund_reference: Option<String>,
    /// The amount refunded, if refunded.
    pub refunded: Option<Money>,
}

/// A payment as its decisions need it: nothing until the gateway first answers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentState {
    record: Option<PaymentRecord>,
}

impl PaymentState {
    /// The record, once the gateway has answered.
    pub fn record(&self) -> Option<&PaymentRecord> {
        self.record.as_ref()
    }

    /// The current status, if any.
    pub fn status(&self) -> Option<PaymentStatus> {
        self.record.as_ref().map(|record| record.status)
    }

    /// The amount captured (and still recorded as captured after a refund), if any.
    pub fn captured(&self) -> Option<Money> {
        self.record
            .as_ref()
            .filter(|record| record.status != PaymentStatus::Declined)
            .map(|record| record.amount)
    }

    /// The amount refunded, if any.
    pub fn refunded(&self) -> Option<Money> {
        self.record.as_ref().and_then(|record| record.refunded)
    }
}

/// What a caller (the saga) records about a payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaymentCommand {
    /// The gateway captured `amount`.
    RecordCapture {
        /// Must be `PaymentId::for_booking(booking_id)`.
        payment_id: PaymentId,
        /// The booking paid for.
        booking_id: BookingId,
        /// The amount captured.
        amount: Money,
        /// The gateway's reference for the capture; a replay carries the same one.
        gateway_reference: String,
    },
    /// The gateway declined the capture.
    RecordDecline {
        /// Must be `PaymentId::for_booking(booking_id)`.
        payment_id: PaymentId,
        /// The booking paid for.
        booking_id: BookingId,
        /// The amount that was asked for.
        amount: Money,
        /// The gateway's reason.
        reason: String,
    },
    /// The gateway refunded the captured amount.
    ///
    /// Only full refunds are supported for now: `amount` must equal the captured amount, in the
    /// same currency. Partial refunds would need a running refunded total and several refund
    /// references; nothing in the product asks for them yet.
    RecordRefund {
        /// The amount refunded; must equal the amount captured.
        amount: Money,
        /// The gateway's reference for the refund; a replay carries the same one.
        gateway_reference: String,
    },
}

/// What happened to a payment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event_type", content = "data", deny_unknown_fields)]
pub enum PaymentEvent {
    /// The gateway took the money.
    #[serde(rename = "PaymentCaptured")]
    PaymentCaptured {
        /// The payment's id.
        payment_id: PaymentId,
        /// The booking paid for.
        booking_id: BookingId,
        /// The amount captured.
        amount: Money,
        /// The gateway's reference for the capture.
        gateway_reference: String,
    },
    /// The gateway refused the capture.
    #[serde(rename = "PaymentDeclined")]
    PaymentDeclined {
        /// The payment's id.
        payment_id: PaymentId,
        /// The booking paid for.
        booking_id: BookingId,
        /// The amount that was asked for.
        amount: Money,
        /// The gateway's reason.
        reason: String,
    },
    /// The captured amount was given back in full.
    #[serde(rename = "PaymentRefunded")]
    PaymentRefunded {
        /// The amount refunded.
        amount: Money,
        /// The gateway's reference for the refund.
        gateway_reference: String,
    },
}

impl DomainEvent for PaymentEvent {
    fn event_type(&self) -> &'static str {
        match self {
            Self::PaymentCaptured { .. } => "PaymentCaptured",
            Self::PaymentDeclined { .. } => "PaymentDeclined",
            Self::PaymentRefunded { .. } => "PaymentRefunded",
        }
    }

    fn event_version(&self) -> u16 {
        1
    }

    fn catalogue() -> &'static [(&'static str, u16)] {
        &[
            ("PaymentCaptured", 1),
            ("PaymentDeclined", 1),
            ("PaymentRefunded", 1),
        ]
    }
}

impl Aggregate for Payment {
    const AGGREGATE_TYPE: &'static str = "payment";
    type State = PaymentState;
    type Command = PaymentCommand;
    type Event = PaymentEvent;

    fn decide(
        state: &PaymentState,
        command: PaymentCommand,
    ) -> Result<Vec<PaymentEvent>, DomainError> {
        match command {
            PaymentCommand::RecordCapture {
                payment_id,
                booking_id,
                amount,
                gateway_reference,
            } => {
                check_ids(state, payment_id, booking_id)?;
                require_reference(&gateway_reference)?;
                match state.record.as_ref() {
                    None => Ok(vec![PaymentEvent::PaymentCaptured {
                        payment_id,
                        booking_id,
                        amount,
                        gateway_reference,
                    }]),
                    Some(record) if record.status == PaymentStatus::Declined => {
                        Err(DomainError::PaymentAlreadyDeclined)
                    }
                    Some(record)
                        if record.capture_reference.as_deref()
                            == Some(gateway_reference.as_str()) =>
                    {
                        Ok(vec![])
                    }
                    Some(_) => Err(DomainError::PaymentAlreadyCaptured),
                }
            }
            PaymentCommand::RecordDecline {
                payment_id,
                booking_id,
                amount,
                reason,
            } => {
                check_ids(state, payment_id, booking_id)?;
                match state.status() {
                    None => Ok(vec![PaymentEvent::PaymentDeclined {
                        payment_id,
                        booking_id,
                        amount,
                        reason,
                    }]),
                    Some(PaymentStatus::Declined) => Ok(vec![]),
                    Some(PaymentStatus::Captured | PaymentStatus::Refunded) => {
                        Err(DomainError::PaymentAlreadyCaptured)
                    }
                }
            }
            PaymentCommand::RecordRefund {
                amount,
                gateway_reference,
            } => record_refund(state, amount, gateway_reference),
        }
    }

    fn evolve(mut state: PaymentState, event: &PaymentEvent) -> PaymentState {
        match event {
            PaymentEvent::PaymentCaptured {
                payment_id,
                booking_id,
                amount,
                gateway_reference,
            } => {
                state.record = Some(PaymentRecord {
                    payment_id: *payment_id,
                    booking_id: *booking_id,
                    status: PaymentStatus::Captured,
                    amount: *amount,
                    capture_reference: Some(gateway_reference.clone()),
                    refund_reference: None,
                    refunded: None,
                });
            }
            PaymentEvent::PaymentDeclined {
                payment_id,
                booking_id,
                amount,
                ..
            } => {
                state.record = Some(PaymentRecord {
                    payment_id: *payment_id,
                    booking_id: *booking_id,
                    status: PaymentStatus::Declined,
                    amount: *amount,
                    capture_reference: None,
                    refund_reference: None,
                    refunded: None,
                });
            }
            PaymentEvent::PaymentRefunded {
                amount,
                gateway_reference,
            } => {
                if let Some(record) = state.record.as_mut() {
                    record.status = PaymentStatus::Refunded;
                    record.refunded = Some(*amount);
                    record.refund_reference = Some(gateway_reference.clone());
                }
            }
        }
        state
    }
}

fn check_ids(
    state: &PaymentState,
    payment_id: PaymentId,
    booking_id: BookingId,
) -> Result<(), DomainError> {
    let recorded_elsewhere = state
        .record
        .as_ref()
        .is_some_and(|record| record.payment_id != payment_id || record.booking_id != booking_id);
    if payment_id != PaymentId::for_booking(booking_id) || recorded_elsewhere {
        return Err(DomainError::PaymentIdMismatch);
    }
    Ok(())
}

fn require_reference(gateway_reference: &str) -> Result<(), DomainError> {
    if gateway_reference.trim().is_empty() {
        return Err(DomainError::MissingGatewayReference);
    }
    Ok(())
}

fn record_refund(
    state: &PaymentState,
    amount: Money,
    gateway_reference: String,
) -> Result<Vec<PaymentEvent>, DomainError> {
    require_reference(&gateway_reference)?;
    let record = state.record.as_ref().ok_or(DomainError::PaymentNotFound)?;
    match record.status {
        PaymentStatus::Declined => Err(DomainError::PaymentNotCaptured),
        PaymentStatus::Refunded => {
            if record.refund_reference.as_deref() == Some(gateway_reference.as_str()) {
                Ok(vec![])
            } else {
                // A second refund under a new reference would be money given back twice.
                Err(DomainError::PaymentAlreadyRefunded)
            }
        }
        PaymentStatus::Captured => {
            let captured = record.amount;
            if amount.currency() != captured.currency() {
                return Err(DomainError::RefundCurrencyMismatch {
                    refund: amount.currency(),
                    captured: captured.currency(),
                });
            }
            if amount.amount_minor() > captured.amount_minor() {
                return Err(DomainError::RefundExceedsCapture {
                    refund: amount,
                    captured,
                });
            }
            if amount.amount_minor() < captured.amount_minor() {
                return Err(DomainError::PartialRefundNotSupported {
                    refund: amount,
                    captured,
                });
            }
            Ok(vec![PaymentEvent::PaymentRefunded {
                amount,
                gateway_reference,
            }])
        }
    }
}
