//! The `facilities` read model and the facility calendar (`reservations`).
//!
//! The calendar stores only what the log says: the slots held now. Free windows are computed by
//! the query-api at query time from the opening hours, the turnaround buffer and these rows,
//! because they depend on the range asked for and would otherwise have to be materialised for
//! an unbounded future and recomputed whenever the opening hours change.

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
            funeral_home_id,
            ..
        } => {
            // No home (registered before homes were named) stays NULL: the query-api reads it as
            // its FM_TENANCY__DEFAULT_HOME, so changing that setting needs no rebuild.
            sqlx::query(
                "INSERT INTO facilities (facility_id, name, kind, capacity, time_zone, opening_hours, \
                 turnaround_minutes, version, registered_at, updated_at, home) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9, $10)",
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
            .bind(funeral_home_id.map(|home| *home.as_uuid()))
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
        FacilityEvent::SlotReserved { booking_id, slot } => {
            sqlx::query(
                "INSERT INTO reservations (facility_id, booking_id, slot_start, slot_end, reserved_at) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (facility_id, booking_id) DO UPDATE \
                 SET slot_start = EXCLUDED.slot_start, slot_end = EXCLUDED.slot_end, reserved_at = EXCLUDED.reserved_at",
            )
            .bind(envelope.aggregate_id)
            .bind(booking_id.as_uuid())
            .bind(slot.start_utc())
            .bind(slot.end_utc())
            .bind(envelope.occurred_at)
            .execute(&mut *conn)
            .await?;
            touch(conn, envelope, version).await?;
        }
        FacilityEvent::SlotReleased { booking_id } => {
            sqlx::query("DELETE FROM reservations WHERE facility_id = $1 AND booking_id = $2")
                .bind(envelope.aggregate_id)
                .bind(booking_id.as_uuid())
                .execute(&mut *conn)
                .await?;
            touch(conn, envelope, version).await?;
        }
        // A refusal changes no reservation, but it is in the facility's stream: its version moves.
        FacilityEvent::SlotRejected { .. } => touch(conn, envelope, version).await?,
    }
    Ok(Applied::Changed)
}

/// Moves the facility row's version (and so its ETag) to this event.
async fn touch(
    conn: &mut PgConnection,
    envelope: &EventEnvelope,
    version: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE facilities SET version = $2, updated_at = $3 WHERE facility_id = $1")
        .bind(envelope.aggregate_id)
        .bind(version)
        .bind(envelope.occurred_at)
        .execute(&mut *conn)
        .await?;
    Ok(())
}
