//! The `facilities` read model.

use domain::facility::FacilityEvent;
use event_log::resolution::Admission;
use schemas::EventEnvelope;
use sqlx::PgConnection;

use super::{Applied, ApplyError, admission, version_of, wire_json, wire_text};

const LOCK: &str = "SELECT version FROM facilities WHERE facility_id = $1 FOR UPDATE";

pub(crate) async fn apply(
    conn: &mut PgConnection,
    event: &FacilityEvent,
    envelope: &EventEnvelope,
) -> Result<Applied, ApplyError> {
    match admission(conn, LOCK, envelope).await? {
        Admission::Next => {}
        Admission::Stale => return Ok(Applied::Stale),
        Admission::Gap { expected } => return Ok(Applied::Gap { expected }),
    }
    let version = version_of(envelope);
    match event {
        FacilityEvent::FacilityRegistered {
            name,
            kind,
            capacity,
            time_zone,
            opening_hours,
            turnaround_minutes,
            ..
        } => {
            sqlx::query(
                "INSERT INTO facilities (facility_id, name, kind, capacity, time_zone, opening_hours, \
                 turnaround_minutes, version, registered_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)",
            )
            .bind(envelope.aggregate_id)
            .bind(name.as_str())
            .bind(wire_text(kind))
            .bind(wire_json(capacity).as_i64().unwrap_or_default())
            .bind(wire_text(time_zone))
            .bind(wire_json(opening_hours))
            .bind(wire_json(turnaround_minutes).as_i64().unwrap_or_default())
            .bind(version)
            .bind(envelope.occurred_at)
            .execute(&mut *conn)
            .await?;
        }
        FacilityEvent::OpeningHoursChanged { opening_hours } => {
            sqlx::query("UPDATE facilities SET opening_hours = $2, version = $3, updated_at = $4 WHERE facility_id = $1")
                .bind(envelope.aggregate_id)
                .bind(wire_json(opening_hours))
                .bind(version)
                .bind(envelope.occurred_at)
                .execute(&mut *conn)
                .await?;
        }
        // Reservations change the facility's stream, so its version moves; the calendar read
        // model that lists them is its own module.
        FacilityEvent::SlotReserved { .. }
        | FacilityEvent::SlotRejected { .. }
        | FacilityEvent::SlotReleased { .. } => {
            sqlx::query(
                "UPDATE facilities SET version = $2, updated_at = $3 WHERE facility_id = $1",
            )
            .bind(envelope.aggregate_id)
            .bind(version)
            .bind(envelope.occurred_at)
            .execute(&mut *conn)
            .await?;
        }
    }
    Ok(Applied::Changed)
}
