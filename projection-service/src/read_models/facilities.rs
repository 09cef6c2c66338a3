//! The `facilities` read model and the facility calendar (`reservations`).
//!
//! The calendar stores only what the log says: the slots held now. Free windows are computed by
//! the query-api at query time from the opening hours, the turnaround buffer and these rows,
//! because they depend on the range asked for and would otherwise have to be materialised for
//! an unbounded future and recomputed whenever the opening hours change.
//!
//! A new column is a field of [`FacilityRow`] (named as the column) and its value in the fold.

use chrono::{DateTime, Utc};
use domain::facility::FacilityEvent;
use schemas::EventEnvelope;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use super::{
    at,
    rows::{Children, Table},
    version_of, wire_json, wire_text,
};

/// One row of `facilities`; the field names are the columns.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct FacilityRow {
    facility_id: Uuid,
    name: String,
    kind: String,
    capacity: i64,
    time_zone: String,
    opening_hours: Value,
    turnaround_minutes: i64,
    version: i64,
    registered_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    /// No home (registered before homes were named) stays NULL: the query-api reads it as its
    /// `FM_TENANCY__DEFAULT_HOME`, so changing that setting needs no rebuild.
    home: Option<Uuid>,
}

impl Table for FacilityRow {
    const NAME: &'static str = "facilities";
    const KEY: &'static str = "facility_id";
    fn key(&self) -> Uuid {
        self.facility_id
    }
    fn version(&self) -> i64 {
        self.version
    }
}

/// One row of `reservations` (the slots held now), guarded by its facility's version.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ReservationRow {
    facility_id: Uuid,
    booking_id: Uuid,
    slot_start: DateTime<Utc>,
    slot_end: DateTime<Utc>,
    reserved_at: DateTime<Utc>,
}

/// The table and key columns of the reservations, for [`Children::flush`].
pub(crate) const RESERVATIONS: (&str, (&str, &str)) =
    ("reservations", ("facility_id", "booking_id"));

/// Folds the next event of the facility's stream (admitted by the caller) into its row and the
/// calendar. An event other than the registration with no row yet changes the calendar only.
pub(crate) fn fold(
    row: &mut Option<FacilityRow>,
    reservations: &mut Children<ReservationRow>,
    event: &FacilityEvent,
    envelope: &EventEnvelope,
) {
    let facility = envelope.aggregate_id;
    match event {
        FacilityEvent::FacilityRegistered {
            name,
            kind,
            capacity,
            time_zone,
            opening_hours,
            turnaround_minutes,
            funeral_home_id,
            ..
        } => {
            *row = Some(FacilityRow {
                facility_id: facility,
                name: name.as_str().to_owned(),
                kind: wire_text(kind),
                capacity: wire_json(capacity).as_i64().unwrap_or_default(),
                time_zone: wire_text(time_zone),
                opening_hours: wire_json(opening_hours),
                turnaround_minutes: wire_json(turnaround_minutes).as_i64().unwrap_or_default(),
                version: version_of(envelope),
                registered_at: at(envelope.occurred_at),
                updated_at: at(envelope.occurred_at),
                home: funeral_home_id.map(|home| *home.as_uuid()),
            });
            return;
        }
        FacilityEvent::OpeningHoursChanged { opening_hours } => {
            if let Some(row) = row {
                row.opening_hours = wire_json(opening_hours);
            }
        }
        FacilityEvent::SlotReserved { booking_id, slot } => reservations.put(
            (facility, *booking_id.as_uuid()),
            ReservationRow {
                facility_id: facility,
                booking_id: *booking_id.as_uuid(),
                slot_start: at(slot.start_utc()),
                slot_end: at(slot.end_utc()),
                reserved_at: at(envelope.occurred_at),
            },
        ),
        FacilityEvent::SlotReleased { booking_id } => {
            reservations.delete((facility, *booking_id.as_uuid()));
        }
        // A refusal changes no reservation, but it is in the facility's stream: its version moves
        // (and so its ETag).
        FacilityEvent::SlotRejected { .. } => {}
    }
    if let Some(row) = row {
        row.version = version_of(envelope);
        row.updated_at = at(envelope.occurred_at);
    }
}
