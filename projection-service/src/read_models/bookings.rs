//! The `bookings` read model, with the saga's progress (today: the lifecycle history) and, since
//! read-model version 2, the role of whoever moved the booking to its status
//! (`status_changed_by`: a cancellation by the `family` or by a `director`, the saga's `system`),
//! and, since version 4, the itemised `statement` the booking was priced with (docs/pricing.md).
//!
//! The personal columns (`deceased`, `family_contacts`) are written in the clear from the sealed
//! box of `BookingRequested`, opened with the booking's data key; once the key is destroyed
//! (`PersonalDataErased`, or a rebuild that finds no key) both hold the JSON string `"erased"`
//! (docs/privacy.md).
//!
//! A new column is a field of [`BookingRow`] (named as the column) and its value where the
//! fold sets it: `requested` for what `BookingRequested` says, [`fold`] for what a later event
//! changes. The statements are made from the fields (`super::rows`).

use chrono::{DateTime, Utc};
use domain::booking::{BookingEvent, BookingStatus, SealedPersonal};
use privacy::{KeyStore, Opened};
use schemas::EventEnvelope;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use super::{ApplyError, at, rows::Table, version_of, wire_json, wire_text};

/// What the personal columns hold once the data is erased.
pub(crate) const ERASED: &str = "erased";

/// One row of `bookings`; the field names are the columns.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct BookingRow {
    booking_id: Uuid,
    facility_id: Uuid,
    service_type: String,
    status: String,
    slot_start: DateTime<Utc>,
    slot_end: DateTime<Utc>,
    slot: Value,
    deceased: Value,
    family_contacts: Value,
    price_amount_minor: i64,
    price_currency: String,
    statement: Value,
    requested_by: String,
    requested_by_role: String,
    status_reason: Option<String>,
    status_changed_by: String,
    saga: Value,
    version: i64,
    requested_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl Table for BookingRow {
    const NAME: &'static str = "bookings";
    const KEY: &'static str = "booking_id";
    fn key(&self) -> Uuid {
        self.booking_id
    }
    fn version(&self) -> i64 {
        self.version
    }
}

/// The personal columns of a booking: `deceased` and `family_contacts`, in the clear, or
/// [`ERASED`] in both.
#[derive(Debug, Clone)]
pub(crate) struct Personal {
    deceased: Value,
    family_contacts: Value,
}

/// Whether the event is a booking's request (the one that carries personal data).
pub(crate) fn is_request(event: &BookingEvent) -> bool {
    matches!(event, BookingEvent::BookingRequested { .. })
}

/// Opens the personal data of a `BookingRequested` (`None` for any other event). Opening
/// happens before anything of the event is folded, so a box that does not open leaves nothing
/// of it behind.
pub(crate) async fn personal(
    keys: &KeyStore,
    event: &BookingEvent,
    envelope: &EventEnvelope,
) -> Result<Option<Personal>, ApplyError> {
    let BookingEvent::BookingRequested {
        date_of_death,
        personal,
        ..
    } = event
    else {
        return Ok(None);
    };
    Ok(Some(
        personal_columns(keys, envelope, *date_of_death, personal).await?,
    ))
}

async fn personal_columns(
    keys: &KeyStore,
    envelope: &EventEnvelope,
    date_of_death: chrono::NaiveDate,
    personal: &SealedPersonal,
) -> Result<Personal, ApplyError> {
    match keys.open(envelope.aggregate_id, personal).await? {
        Opened::Personal(personal) => Ok(Personal {
            deceased: serde_json::json!({
                "full_name": personal.deceased_full_name,
                "date_of_death": date_of_death,
            }),
            family_contacts: wire_json(&personal.family_contacts),
        }),
        Opened::Erased => Ok(Personal {
            deceased: serde_json::json!(ERASED),
            family_contacts: serde_json::json!(ERASED),
        }),
    }
}

/// Folds the next event of the booking's stream (admitted by the caller) into its row. `personal`
/// is what [`personal`] opened for a `BookingRequested`. An event other than the request with no
/// row yet changes nothing (a stream that does not start with its request).
pub(crate) fn fold(
    row: &mut Option<BookingRow>,
    event: &BookingEvent,
    envelope: &EventEnvelope,
    personal: Option<Personal>,
) {
    let version = version_of(envelope);
    let (status, reason) = match event {
        BookingEvent::BookingRequested { .. } => {
            let Some(personal) = personal else {
                unreachable!("a request's personal data is opened before it is folded")
            };
            *row = requested(event, envelope, personal);
            return;
        }
        BookingEvent::BookingSlotHeld { .. } => (BookingStatus::SlotHeld, None),
        BookingEvent::BookingConfirmed { .. } => (BookingStatus::Confirmed, None),
        BookingEvent::BookingRejected { reason } => (BookingStatus::Rejected, Some(reason.clone())),
        BookingEvent::BookingFailed { reason } => (BookingStatus::Failed, Some(reason.clone())),
        BookingEvent::BookingCancelled { reason, .. } => (BookingStatus::Cancelled, reason.clone()),
        BookingEvent::PersonalDataErased { .. } => {
            if let Some(row) = row {
                row.deceased = serde_json::json!(ERASED);
                row.family_contacts = serde_json::json!(ERASED);
                row.version = version;
                row.updated_at = at(envelope.occurred_at);
            }
            return;
        }
    };
    let Some(row) = row else { return };
    row.status = wire_text(&status);
    if reason.is_some() {
        row.status_reason = reason;
    }
    row.version = version;
    row.updated_at = at(envelope.occurred_at);
    envelope
        .actor
        .role
        .as_str()
        .clone_into(&mut row.status_changed_by);
    let step = step(status, envelope);
    match row.saga.get_mut("history").and_then(Value::as_array_mut) {
        Some(history) => history.push(step),
        None => {
            if let Some(saga) = row.saga.as_object_mut() {
                saga.insert("history".into(), Value::Array(vec![step]));
            }
        }
    }
}

/// The row a `BookingRequested` creates.
fn requested(
    event: &BookingEvent,
    envelope: &EventEnvelope,
    personal: Personal,
) -> Option<BookingRow> {
    let BookingEvent::BookingRequested {
        facility_id,
        service_type,
        slot,
        price,
        statement,
        ..
    } = event
    else {
        return None;
    };
    let price = wire_json(price);
    Some(BookingRow {
        booking_id: envelope.aggregate_id,
        facility_id: *facility_id.as_uuid(),
        service_type: wire_text(service_type),
        status: wire_text(&BookingStatus::Requested),
        slot_start: at(slot.start_utc()),
        slot_end: at(slot.end_utc()),
        slot: wire_json(slot),
        deceased: personal.deceased,
        family_contacts: personal.family_contacts,
        price_amount_minor: price["amount_minor"].as_i64().unwrap_or_default(),
        price_currency: price["currency"].as_str().unwrap_or_default().to_owned(),
        statement: wire_json(statement),
        requested_by: envelope.actor.subject.clone(),
        requested_by_role: envelope.actor.role.as_str().to_owned(),
        status_reason: None,
        status_changed_by: envelope.actor.role.as_str().to_owned(),
        saga: serde_json::json!({ "history": [step(BookingStatus::Requested, envelope)] }),
        version: version_of(envelope),
        requested_at: at(envelope.occurred_at),
        updated_at: at(envelope.occurred_at),
    })
}

/// One entry of the lifecycle history.
fn step(status: BookingStatus, envelope: &EventEnvelope) -> Value {
    serde_json::json!({
        "status": wire_text(&status),
        "event_type": envelope.event_type,
        "sequence": envelope.sequence,
        "at": envelope.occurred_at,
    })
}
