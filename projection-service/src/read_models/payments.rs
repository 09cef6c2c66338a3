//! The `payments` read model: one row per payment (one payment per booking).

use domain::payment::{PaymentEvent, PaymentStatus};
use event_log::resolution::Admission;
use schemas::EventEnvelope;
use sqlx::PgConnection;

use super::{Applied, ApplyError, admission, version_of};

const LOCK: &str = "SELECT version FROM payments WHERE payment_id = $1 FOR UPDATE";

pub(crate) async fn apply(
    conn: &mut PgConnection,
    event: &PaymentEvent,
    envelope: &EventEnvelope,
) -> Result<Applied, ApplyError> {
    match admission(conn, LOCK, envelope).await? {
        Admission::Next => {}
        Admission::Stale => return Ok(Applied::Stale),
        Admission::Gap { expected } => return Ok(Applied::Gap { expected }),
    }
    let version = version_of(envelope);
    match event {
        PaymentEvent::PaymentCaptured {
            booking_id,
            amount,
            gateway_reference,
            ..
        } => {
            insert(
                conn,
                envelope,
                *booking_id.as_uuid(),
                PaymentStatus::Captured,
                *amount,
            )
            .await?;
            sqlx::query("UPDATE payments SET capture_reference = $2 WHERE payment_id = $1")
                .bind(envelope.aggregate_id)
                .bind(gateway_reference)
                .execute(&mut *conn)
                .await?;
        }
        PaymentEvent::PaymentDeclined {
            booking_id,
            amount,
            reason,
            ..
        } => {
            insert(
                conn,
                envelope,
                *booking_id.as_uuid(),
                PaymentStatus::Declined,
                *amount,
            )
            .await?;
            sqlx::query("UPDATE payments SET decline_reason = $2 WHERE payment_id = $1")
                .bind(envelope.aggregate_id)
                .bind(reason)
                .execute(&mut *conn)
                .await?;
        }
        PaymentEvent::PaymentRefunded {
            amount,
            gateway_reference,
        } => {
            sqlx::query(
                "UPDATE payments SET status = $2, refund_reference = $3, refunded_amount_minor = $4, \
                 version = $5, updated_at = $6 WHERE payment_id = $1",
            )
            .bind(envelope.aggregate_id)
            .bind(PaymentStatus::Refunded.as_str())
            .bind(gateway_reference)
            .bind(amount.amount_minor())
            .bind(version)
            .bind(envelope.occurred_at)
            .execute(&mut *conn)
            .await?;
        }
    }
    Ok(Applied::Changed)
}

async fn insert(
    conn: &mut PgConnection,
    envelope: &EventEnvelope,
    booking_id: uuid::Uuid,
    status: PaymentStatus,
    amount: domain::values::Money,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO payments (payment_id, booking_id, status, amount_minor, currency, version, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(envelope.aggregate_id)
    .bind(booking_id)
    .bind(status.as_str())
    .bind(amount.amount_minor())
    .bind(amount.currency().code())
    .bind(version_of(envelope))
    .bind(envelope.occurred_at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}
