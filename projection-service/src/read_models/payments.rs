//! The `payments` read model: one row per payment (one payment per booking).
//!
//! A new column is a field of [`PaymentRow`] (named as the column) and its value in the fold.

use chrono::{DateTime, Utc};
use domain::payment::{PaymentEvent, PaymentStatus};
use schemas::EventEnvelope;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{at, rows::Table, version_of};

/// One row of `payments`; the field names are the columns.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PaymentRow {
    payment_id: Uuid,
    booking_id: Uuid,
    status: String,
    amount_minor: i64,
    currency: String,
    capture_reference: Option<String>,
    decline_reason: Option<String>,
    refund_reference: Option<String>,
    refunded_amount_minor: Option<i64>,
    version: i64,
    updated_at: DateTime<Utc>,
}

impl Table for PaymentRow {
    const NAME: &'static str = "payments";
    const KEY: &'static str = "payment_id";
    fn key(&self) -> Uuid {
        self.payment_id
    }
    fn version(&self) -> i64 {
        self.version
    }
}

/// Folds the next event of the payment's stream (admitted by the caller) into its row. A refund
/// with no row yet changes nothing.
pub(crate) fn fold(row: &mut Option<PaymentRow>, event: &PaymentEvent, envelope: &EventEnvelope) {
    let version = version_of(envelope);
    let updated_at = at(envelope.occurred_at);
    let new = |booking_id: &domain::values::BookingId,
               status: PaymentStatus,
               amount: &domain::values::Money| PaymentRow {
        payment_id: envelope.aggregate_id,
        booking_id: *booking_id.as_uuid(),
        status: status.as_str().to_owned(),
        amount_minor: amount.amount_minor(),
        currency: amount.currency().code().to_owned(),
        capture_reference: None,
        decline_reason: None,
        refund_reference: None,
        refunded_amount_minor: None,
        version,
        updated_at,
    };
    match event {
        PaymentEvent::PaymentCaptured {
            booking_id,
            amount,
            gateway_reference,
            ..
        } => {
            *row = Some(PaymentRow {
                capture_reference: Some(gateway_reference.clone()),
                ..new(booking_id, PaymentStatus::Captured, amount)
            });
        }
        PaymentEvent::PaymentDeclined {
            booking_id,
            amount,
            reason,
            ..
        } => {
            *row = Some(PaymentRow {
                decline_reason: Some(reason.clone()),
                ..new(booking_id, PaymentStatus::Declined, amount)
            });
        }
        PaymentEvent::PaymentRefunded {
            amount,
            gateway_reference,
        } => {
            if let Some(row) = row {
                PaymentStatus::Refunded.as_str().clone_into(&mut row.status);
                row.refund_reference = Some(gateway_reference.clone());
                row.refunded_amount_minor = Some(amount.amount_minor());
                row.version = version;
                row.updated_at = updated_at;
            }
        }
    }
}
