//! The `bookings` read model, with the saga's progress (today: the lifecycle history) and, since
//! read-model version 2, the role of whoever moved the booking to its status
//! (`status_changed_by`: a cancellation by the `family` or by a `director`, the saga's `system`),
//! and, since version 4, the itemised `statement` the booking was priced with (docs/pricing.md).
//!
//! The personal columns (`deceased`, `family_contacts`) are written in the clear from the sealed
//! box of `BookingRequested`, opened with the booking's data key; once the key is destroyed
//! (`PersonalDataErased`, or a rebuild that finds no key) both hold the JSON string `"erased"`
//! (docs/privacy.md).

use domain::booking::{BookingEvent, BookingStatus, SealedPersonal};
use event_log::resolution::Admission;
use privacy::{KeyStore, Opened};
use schemas::EventEnvelope;
use sqlx::PgConnection;

use super::{Applied, ApplyError, admission, version_of, wire_json, wire_text};

/// What the personal columns hold once the data is erased.
pub(crate) const ERASED: &str = "erased";

/// The personal columns of a booking: `deceased` and `family_contacts`, in the clear, or
/// [`ERASED`] in both.
async fn personal_columns(
    keys: &KeyStore,
    envelope: &EventEnvelope,
    date_of_death: chrono::NaiveDate,
    personal: &SealedPersonal,
) -> Result<(serde_json::Value, serde_json::Value), ApplyError> {
    match keys.open(envelope.aggregate_id, personal).await? {
        Opened::Personal(personal) => Ok((
            serde_json::json!({
                "full_name": personal.deceased_full_name,
                "date_of_death": date_of_death,
            }),
            wire_json(&personal.family_contacts),
        )),
        Opened::Erased => Ok((serde_json::json!(ERASED), serde_json::json!(ERASED))),
    }
}

const LOCK: &str = "SELECT version FROM bookings WHERE booking_id = $1 FOR UPDATE";

pub(crate) async fn apply(
    conn: &mut PgConnection,
    keys: &KeyStore,
    event: &BookingEvent,
    envelope: &EventEnvelope,
) -> Result<Applied, ApplyError> {
    match admission(conn, LOCK, envelope).await? {
        Admission::Next => {}
        Admission::Stale => return Ok(Applied::Stale),
        Admission::Gap { expected } => return Ok(Applied::Gap { expected }),
    }
    let version = version_of(envelope);
    let (status, reason) = match event {
        BookingEvent::BookingRequested {
            facility_id,
            service_type,
            slot,
            date_of_death,
            personal,
            price,
            statement,
            ..
        } => {
            let (deceased, family_contacts) =
                personal_columns(keys, envelope, *date_of_death, personal).await?;
            let price = wire_json(price);
            sqlx::query(
                "INSERT INTO bookings (booking_id, facility_id, service_type, status, slot_start, slot_end, slot, \
                 deceased, family_contacts, price_amount_minor, price_currency, requested_by, requested_by_role, \
                 saga, version, requested_at, updated_at, status_changed_by, statement) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $16, $14, $15, $15, $13, $17)",
            )
            .bind(envelope.aggregate_id)
            .bind(facility_id.as_uuid())
            .bind(wire_text(service_type))
            .bind(wire_text(&BookingStatus::Requested))
            .bind(slot.start_utc())
            .bind(slot.end_utc())
            .bind(wire_json(slot))
            .bind(deceased)
            .bind(family_contacts)
            .bind(price["amount_minor"].as_i64().unwrap_or_default())
            .bind(price["currency"].as_str().unwrap_or_default())
            .bind(&envelope.actor.subject)
            .bind(envelope.actor.role.as_str())
            .bind(version)
            .bind(envelope.occurred_at)
            .bind(serde_json::json!({
                "history": [step(BookingStatus::Requested, envelope)]
            }))
            .bind(wire_json(statement))
            .execute(&mut *conn)
            .await?;
            return Ok(Applied::Changed);
        }
        BookingEvent::BookingSlotHeld { .. } => (BookingStatus::SlotHeld, None),
        BookingEvent::BookingConfirmed { .. } => (BookingStatus::Confirmed, None),
        BookingEvent::BookingRejected { reason } => (BookingStatus::Rejected, Some(reason.clone())),
        BookingEvent::BookingFailed { reason } => (BookingStatus::Failed, Some(reason.clone())),
        BookingEvent::BookingCancelled { reason, .. } => (BookingStatus::Cancelled, reason.clone()),
        BookingEvent::PersonalDataErased { .. } => {
            sqlx::query(
                "UPDATE bookings SET deceased = $2, family_contacts = $2, version = $3, updated_at = $4 \
                 WHERE booking_id = $1",
            )
            .bind(envelope.aggregate_id)
            .bind(serde_json::json!(ERASED))
            .bind(version)
            .bind(envelope.occurred_at)
            .execute(&mut *conn)
            .await?;
            return Ok(Applied::Changed);
        }
    };
    sqlx::query(
        "UPDATE bookings SET status = $2, status_reason = COALESCE($3, status_reason), version = $4, \
         updated_at = $5, status_changed_by = $7, saga = jsonb_set(saga, '{history}', (saga -> 'history') || $6) \
         WHERE booking_id = $1",
    )
    .bind(envelope.aggregate_id)
    .bind(wire_text(&status))
    .bind(reason)
    .bind(version)
    .bind(envelope.occurred_at)
    .bind(serde_json::json!([step(status, envelope)]))
    .bind(envelope.actor.role.as_str())
    .execute(&mut *conn)
    .await?;
    Ok(Applied::Changed)
}

/// One entry of the lifecycle history.
fn step(status: BookingStatus, envelope: &EventEnvelope) -> serde_json::Value {
    serde_json::json!({
        "status": wire_text(&status),
        "event_type": envelope.event_type,
        "sequence": envelope.sequence,
        "at": envelope.occurred_at,
    })
}
