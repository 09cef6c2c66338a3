//! The port the saga uses to move money, and the answers it can get.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::{
    payment::PaymentStatus,
    values::{BookingId, Money},
};
use serde::{Deserialize, Serialize};

/// A payment provider, seen from the saga.
///
/// Every call that moves money carries an idempotency key: the saga derives it from the event
/// that caused the step, so a retry (after a timeout, a crash, a redelivered event) asks the
/// provider the same question again and can never charge or refund twice.
///
/// Object safe (`Arc<dyn PaymentGateway>` works) thanks to `async_trait`.
#[async_trait]
pub trait PaymentGateway: Send + Sync {
    /// Takes `amount` for a booking. `Err(Declined)` is the provider's final "no"; every other
    /// error leaves the outcome unknown: retry with the same key, or [`lookup`](Self::lookup).
    async fn capture(&self, request: &CaptureRequest) -> Result<Captured, GatewayError>;

    /// Gives back (part of) a capture.
    async fn refund(&self, request: &RefundRequest) -> Result<Refunded, GatewayError>;

    /// What the provider did with an idempotency key, if it ever saw it. The saga asks this
    /// before compensating a call that timed out: the money may have moved although the
    /// answer never arrived.
    async fn lookup(&self, idempotency_key: &str) -> Result<Option<PaymentRecord>, GatewayError>;

    /// Every capture the provider made since `since` (the provider's ledger), with what has
    /// been refunded of each: what the reconciliation compares with the log.
    async fn captures(&self, since: DateTime<Utc>) -> Result<Vec<LedgerCapture>, GatewayError>;
}

/// One capture in the provider's ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerCapture {
    pub reference: String,
    pub idempotency_key: String,
    pub booking_id: BookingId,
    pub amount: Money,
    /// How much of it has been given back since.
    pub refunded_minor: i64,
    /// When the provider made it.
    pub created_at: DateTime<Utc>,
}

/// Take money for a booking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureRequest {
    /// The same key for every attempt at the same capture.
    pub idempotency_key: String,
    pub booking_id: BookingId,
    pub amount: Money,
}

/// The provider took the money.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Captured {
    /// The provider's reference for the capture; a refund names it.
    pub reference: String,
}

/// Give money back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundRequest {
    /// The same key for every attempt at the same refund.
    pub idempotency_key: String,
    /// The [`Captured::reference`] of the capture to refund.
    pub capture_reference: String,
    pub amount: Money,
}

/// The provider gave the money back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refunded {
    /// The provider's reference for the refund.
    pub reference: String,
}

/// What the provider did with one idempotency key (one capture or one refund).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentRecord {
    pub idempotency_key: String,
    /// `captured` or `declined` for a capture's key, `refunded` for a refund's key.
    pub status: PaymentStatus,
    /// The capture's or the refund's reference; none when declined.
    pub reference: Option<String>,
    /// Why the provider declined, when it did.
    pub decline_reason: Option<String>,
    /// The amount asked for.
    pub amount: Money,
}

/// Why a gateway call did not succeed.
///
/// A business answer ([`Declined`](Self::Declined)) is final and says nothing about the
/// provider's health. Infrastructure failures ([`Unavailable`](Self::Unavailable),
/// [`Timeout`](Self::Timeout), [`Server`](Self::Server), [`InvalidResponse`](Self::InvalidResponse))
/// leave the outcome unknown, are worth retrying with the same key, and count against the
/// circuit breaker.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    /// The provider refused to move the money (card declined, insufficient funds). Final.
    #[error("payment declined: {reason}")]
    Declined { reason: String },
    /// The provider refused the request itself (an idempotency key reused with another body, a
    /// refund above what was captured, an unknown capture). Final: retrying will not help.
    #[error("the gateway rejected the request ({status}): {detail}")]
    Rejected { status: u16, detail: String },
    /// The provider could not be reached (connection refused or reset).
    #[error("the gateway is unavailable: {0}")]
    Unavailable(String),
    /// No answer within the request timeout. The money may have moved: look the key up.
    #[error("the gateway did not answer in time")]
    Timeout,
    /// The provider answered with a 5xx status.
    #[error("the gateway failed with status {0}")]
    Server(u16),
    /// The provider answered something this adapter does not understand.
    #[error("the gateway's answer could not be understood: {0}")]
    InvalidResponse(String),
    /// The provider is still working on an earlier request with this idempotency key (409): the
    /// money may be moving. Ask again later, or look the key up once it has settled.
    #[error("the gateway is still processing an earlier request with this key")]
    InProgress,
    /// The circuit breaker is open: the call was not made.
    #[error("the gateway's circuit breaker is open")]
    CircuitOpen,
}

impl GatewayError {
    /// The provider itself is in trouble: these count against the circuit breaker.
    pub const fn is_infrastructure(&self) -> bool {
        matches!(
            self,
            Self::Unavailable(_) | Self::Timeout | Self::Server(_) | Self::InvalidResponse(_)
        )
    }

    /// Worth trying again later with the same idempotency key (after a backoff, or after the
    /// breaker's cool-down for [`CircuitOpen`](Self::CircuitOpen)).
    pub const fn is_retryable(&self) -> bool {
        self.is_infrastructure() || matches!(self, Self::CircuitOpen | Self::InProgress)
    }

    /// No retry with this request can ever succeed ([`Rejected`](Self::Rejected)): the saga
    /// parks for an operator instead of retrying until a deadline.
    pub const fn is_permanent(&self) -> bool {
        matches!(self, Self::Rejected { .. })
    }

    /// The request may have reached the provider and moved money although no answer says so:
    /// a timeout, a 5xx, an answer that could not be read, or a request still in progress. A
    /// refused connection or an open breaker sent nothing; a decline or a refusal is an answer.
    pub const fn may_have_moved_money(&self) -> bool {
        matches!(
            self,
            Self::Timeout | Self::Server(_) | Self::InvalidResponse(_) | Self::InProgress
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_decline_is_a_business_answer_not_a_retryable_failure() {
        let declined = GatewayError::Declined {
            reason: "insufficient funds".to_owned(),
        };
        assert!(!declined.is_infrastructure());
        assert!(!declined.is_retryable());
    }

    #[test]
    fn infrastructure_failures_are_retryable_and_an_open_circuit_too() {
        for error in [
            GatewayError::Unavailable("refused".to_owned()),
            GatewayError::Timeout,
            GatewayError::Server(502),
            GatewayError::InvalidResponse("garbage".to_owned()),
        ] {
            assert!(error.is_infrastructure(), "{error}");
            assert!(error.is_retryable(), "{error}");
        }
        assert!(!GatewayError::CircuitOpen.is_infrastructure());
        assert!(GatewayError::CircuitOpen.is_retryable());
        let rejected = GatewayError::Rejected {
            status: 422,
            detail: "key reused".to_owned(),
        };
        assert!(!rejected.is_retryable());
        assert!(rejected.is_permanent());
    }

    #[test]
    fn a_request_still_in_progress_is_retried_and_keeps_the_money_in_doubt() {
        let error = GatewayError::InProgress;
        assert!(error.is_retryable());
        assert!(
            !error.is_infrastructure(),
            "the provider is working, not failing"
        );
        assert!(!error.is_permanent());
        assert!(error.may_have_moved_money());
        assert!(!GatewayError::CircuitOpen.may_have_moved_money());
        assert!(!GatewayError::Unavailable("refused".to_owned()).may_have_moved_money());
    }
}
