//! Behaviour control for tests: the global mode and per-booking overrides.

use axum::{
    Json,
    extract::{Path, State},
    http::StatusCode,
};
use platform::{
    json::ValidJson,
    problem::{FieldError, Problem},
};
use uuid::Uuid;

use super::AppState;
use crate::{
    error::ApiError,
    ledger::{Behaviour, ControlView},
};

fn checked(behaviour: Behaviour) -> Result<Behaviour, ApiError> {
    if behaviour.times == Some(0) {
        return Err(Problem::validation(vec![FieldError::new(
            "times",
            "times.positive",
            "times is at least 1 (leave it out for \"until changed\")",
        )])
        .into());
    }
    Ok(behaviour)
}

fn booking_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| {
        Problem::validation(vec![FieldError::new(
            "booking_id",
            "id.uuid",
            format!("{raw:?} is not a UUID"),
        )])
        .into()
    })
}

/// `GET /control`: the behaviours in force.
#[utoipa::path(
    get, path = "/control", tag = "control",
    responses((status = 200, description = "The behaviours in force", body = ControlView))
)]
pub(crate) async fn show(State(state): State<AppState>) -> Json<ControlView> {
    Json(state.lock().control())
}

/// `PUT /control`: how every booking without an override of its own is answered.
#[utoipa::path(
    put, path = "/control", tag = "control", request_body = Behaviour,
    responses(
        (status = 200, description = "The behaviours now in force", body = ControlView),
        (status = 422, description = "Unknown mode or field", body = Problem),
    )
)]
pub(crate) async fn set_global(
    State(state): State<AppState>,
    ValidJson(behaviour): ValidJson<Behaviour>,
) -> Result<Json<ControlView>, ApiError> {
    let behaviour = checked(behaviour)?;
    tracing::info!(?behaviour, "global behaviour set");
    let mut sim = state.lock();
    sim.set_global(behaviour);
    Ok(Json(sim.control()))
}

/// `DELETE /control`: approve everything again, drop every override (the ledger stays).
#[utoipa::path(
    delete, path = "/control", tag = "control",
    responses((status = 200, description = "The behaviours now in force", body = ControlView))
)]
pub(crate) async fn reset(State(state): State<AppState>) -> Json<ControlView> {
    let mut sim = state.lock();
    sim.reset_control();
    Json(sim.control())
}

/// `PUT /control/bookings/{booking_id}`: how one booking's captures and refunds are answered.
#[utoipa::path(
    put, path = "/control/bookings/{booking_id}", tag = "control", request_body = Behaviour,
    params(("booking_id" = Uuid, Path)),
    responses(
        (status = 200, description = "The behaviours now in force", body = ControlView),
        (status = 422, description = "Unknown mode or field, or a bad id", body = Problem),
    )
)]
pub(crate) async fn set_booking(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    ValidJson(behaviour): ValidJson<Behaviour>,
) -> Result<Json<ControlView>, ApiError> {
    let booking = booking_id(&raw)?;
    let behaviour = checked(behaviour)?;
    tracing::info!(%booking, ?behaviour, "booking behaviour set");
    let mut sim = state.lock();
    sim.set_booking(booking, behaviour);
    Ok(Json(sim.control()))
}

/// `DELETE /control/bookings/{booking_id}`: the booking follows the global behaviour again.
#[utoipa::path(
    delete, path = "/control/bookings/{booking_id}", tag = "control",
    params(("booking_id" = Uuid, Path)),
    responses(
        (status = 204, description = "Override removed"),
        (status = 404, description = "The booking had no override", body = Problem),
    )
)]
pub(crate) async fn clear_booking(
    State(state): State<AppState>,
    Path(raw): Path<String>,
) -> Result<StatusCode, ApiError> {
    let booking = booking_id(&raw)?;
    if state.lock().clear_booking(booking) {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound(format!(
            "Booking {booking} has no override"
        )))
    }
}
