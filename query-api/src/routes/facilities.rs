//! `GET /facilities/{id}`.

use axum::{
    extract::{Path, State},
    http::HeaderMap,
    response::Response,
};
use chrono::{DateTime, Utc};
use platform::auth::Caller;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::with_etag;
use crate::{consistency::wait_for_token, error::ApiError, startup::AppState};

/// A facility as the read model holds it.
#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub(crate) struct FacilityView {
    facility_id: Uuid,
    name: String,
    /// `chapel`, `crematorium`, `graveside` or `reception_hall`.
    kind: String,
    capacity: i32,
    /// IANA time zone of the opening hours.
    time_zone: String,
    /// `[{"weekday", "opens", "closes"}]`, local time.
    #[schema(value_type = Vec<Object>)]
    opening_hours: serde_json::Value,
    turnaround_minutes: i32,
    version: i64,
    registered_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

/// Read one facility.
#[utoipa::path(
    get,
    path = "/facilities/{id}",
    tag = "facilities",
    params(
        ("id" = Uuid, Path, description = "The facility id"),
        ("Consistency-Token" = Option<String>, Header, description = "Wait until this write is visible"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The facility", body = FacilityView),
        (status = 304, description = "Not modified since the ETag sent"),
        (status = 401, description = "No valid bearer token", body = platform::problem::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such facility", body = platform::problem::Problem, content_type = "application/problem+json"),
        (status = 503, description = "Read model behind the token, or store down", body = platform::problem::Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn get_facility(
    State(state): State<AppState>,
    _caller: Caller,
    Path(id): Path<Uuid>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    wait_for_token(&headers, &state.pool, &state.consistency).await?;
    let facility: FacilityView = sqlx::query_as(
        "SELECT facility_id, name, kind, capacity, time_zone, opening_hours, turnaround_minutes, version, \
         registered_at, updated_at FROM facilities WHERE facility_id = $1",
    )
    .bind(id)
    .fetch_optional(&state.pool)
    .await?
    .ok_or(ApiError::NotFound)?;
    let etag = format!("facility-{}-v{}", facility.facility_id, facility.version);
    Ok(with_etag(&headers, &etag, facility))
}
