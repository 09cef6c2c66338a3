//! `GET /bookings/{id}`.

use axum::{
    extract::{Path, State},
    http::HeaderMap,
    response::Response,
};
use chrono::{DateTime, Utc};
use platform::auth::Caller;
use schemas::Role;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::with_etag;
use crate::{consistency::wait_for_token, error::ApiError, startup::AppState};

/// A booking as the read model holds it.
#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub(crate) struct BookingView {
    booking_id: Uuid,
    facility_id: Uuid,
    service_type: String,
    /// `requested`, `slot_held`, `confirmed`, `rejected`, `failed` or `cancelled`.
    status: String,
    /// Why it was rejected, failed or cancelled.
    status_reason: Option<String>,
    /// `{"start", "end"}` as requested, RFC 3339 with offsets.
    #[schema(value_type = Object)]
    slot: serde_json::Value,
    #[schema(value_type = Object)]
    deceased: serde_json::Value,
    #[schema(value_type = Vec<Object>)]
    family_contacts: serde_json::Value,
    #[sqlx(flatten)]
    price: Price,
    version: i64,
    requested_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    #[serde(skip)]
    requested_by: String,
}

/// Integer minor units and an ISO 4217 code.
#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub(crate) struct Price {
    #[sqlx(rename = "price_amount_minor")]
    amount_minor: i64,
    #[sqlx(rename = "price_currency")]
    currency: String,
}

/// Read one booking. A family sees only the bookings it requested.
#[utoipa::path(
    get,
    path = "/bookings/{id}",
    tag = "bookings",
    params(
        ("id" = Uuid, Path, description = "The booking id"),
        ("Consistency-Token" = Option<String>, Header, description = "Wait until this write is visible"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The booking", body = BookingView),
        (status = 304, description = "Not modified since the ETag sent"),
        (status = 401, description = "No valid bearer token", body = platform::problem::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such booking, or not yours", body = platform::problem::Problem, content_type = "application/problem+json"),
        (status = 503, description = "Read model behind the token, or store down", body = platform::problem::Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn get_booking(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    wait_for_token(&headers, &state.pool, &state.consistency).await?;
    let booking: BookingView = sqlx::query_as(
        "SELECT booking_id, facility_id, service_type, status, status_reason, slot, deceased, family_contacts, \
         price_amount_minor, price_currency, version, requested_at, updated_at, requested_by \
         FROM bookings WHERE booking_id = $1",
    )
    .bind(id)
    .fetch_optional(&state.pool)
    .await?
    .ok_or(ApiError::NotFound)?;
    let visible = match caller.role {
        Role::Director | Role::Ops | Role::System => true,
        Role::Family => booking.requested_by == caller.subject,
    };
    if !visible {
        return Err(ApiError::NotFound);
    }
    let etag = format!("booking-{}-v{}", booking.booking_id, booking.version);
    Ok(with_etag(&headers, &etag, booking))
}
