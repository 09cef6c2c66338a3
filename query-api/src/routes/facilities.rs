//! `GET /facilities`, `GET /facilities/{id}` and `GET /facilities/{id}/calendar`.

use std::collections::HashMap;

use axum::{
    extract::{Query, State, rejection::QueryRejection},
    http::HeaderMap,
    response::Response,
};
use chrono::{DateTime, Duration, Utc};
use domain::values::OpeningHours;
use platform::{auth::Caller, path::ValidPath};
use serde::{Deserialize, Serialize};
use sqlx::{Postgres, QueryBuilder};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::{AppState, with_etag};
use crate::{
    calendar::{self, Window},
    consistency::wait_for_token,
    error::ApiError,
    params::{Cursor, Params},
    tenancy::{facility_scope, sees_booking_ids},
};

/// The columns of a [`FacilityView`], from `facilities f`.
#[cfg(not(feature = "next-read-model"))]
const COLUMNS: &str = "f.facility_id, f.name, f.kind, f.capacity, f.time_zone, f.opening_hours, f.turnaround_minutes, f.version, \
     f.registered_at, f.updated_at, f.home";

/// Read-model version 4 (test-only) has a column more.
#[cfg(feature = "next-read-model")]
const COLUMNS: &str = "f.facility_id, f.name, f.kind, f.capacity, f.time_zone, f.opening_hours, f.turnaround_minutes, f.version, \
     f.registered_at, f.updated_at, f.home, f.name_key";

/// The longest range a calendar query may span.
pub(crate) const MAX_CALENDAR_RANGE: Duration = Duration::days(31);

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
    /// The funeral home it belongs to (the deployment's default home for a facility registered
    /// before homes were named).
    home: Option<Uuid>,
    /// The name in lower case, for searching (read-model version 4, test-only).
    #[cfg(feature = "next-read-model")]
    name_key: String,
}

impl FacilityView {
    /// Names the default home where the read model holds none.
    fn with_home(mut self, default_home: Uuid) -> Self {
        self.home = Some(self.home.unwrap_or(default_home));
        self
    }
}

/// Read one facility. A director sees only the facilities of their homes (another home's answers
/// 404); families, ops and services see every facility.
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
        (status = 404, description = "No such facility, or one of a home you do not work for", body = platform::problem::Problem, content_type = "application/problem+json"),
        (status = 503, description = "Read model behind the token, or store down", body = platform::problem::Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn get_facility(
    State(state): State<AppState>,
    caller: Caller,
    ValidPath(id): ValidPath<Uuid>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    wait_for_token(&headers, &state.pool, &state.consistency, &state.log_ends).await?;
    let facility = find(&state, &caller, id).await?;
    let etag = format!("facility-{}-v{}", facility.facility_id, facility.version);
    Ok(with_etag(&headers, &etag, facility))
}

async fn find(state: &AppState, caller: &Caller, id: Uuid) -> Result<FacilityView, ApiError> {
    let mut query: QueryBuilder<'_, Postgres> = QueryBuilder::new(format!(
        "SELECT {COLUMNS} FROM facilities f WHERE f.facility_id = "
    ));
    query.push_bind(id);
    facility_scope(&mut query, caller, state.tenancy.default_home);
    let facility: FacilityView = query
        .build_query_as()
        .fetch_optional(&state.pool)
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(facility.with_home(state.tenancy.default_home))
}

/// The page of `GET /facilities` (documentation; parsed by [`Params`]).
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // Read by utoipa only.
pub(crate) struct FacilityPageParams {
    /// Page size (default 50).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<i64>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// One page of facilities, in registration order.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct FacilityPage {
    items: Vec<FacilityView>,
    /// Present when there are more: pass it as `cursor` for the next page.
    next_cursor: Option<String>,
}

/// List facilities, in registration order: a director's homes' only; every facility for
/// families, ops and services.
#[utoipa::path(
    get,
    path = "/facilities",
    tag = "facilities",
    params(
        FacilityPageParams,
        ("Consistency-Token" = Option<String>, Header, description = "Wait until this write is visible"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of facilities", body = FacilityPage),
        (status = 304, description = "Not modified since the ETag sent"),
        (status = 401, description = "No valid bearer token", body = platform::problem::Problem, content_type = "application/problem+json"),
        (status = 422, description = "A parameter breaks a rule; each is named with the rule", body = platform::problem::Problem, content_type = "application/problem+json"),
        (status = 503, description = "Read model behind the token, or store down", body = platform::problem::Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn list_facilities(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let mut params = Params::new(query, &["limit", "cursor"])?;
    let limit = params.limit(50, 200);
    let cursor = params.cursor();
    params.finish()?;
    wait_for_token(&headers, &state.pool, &state.consistency, &state.log_ends).await?;
    let mut query: QueryBuilder<'_, Postgres> =
        QueryBuilder::new(format!("SELECT {COLUMNS} FROM facilities f WHERE true"));
    facility_scope(&mut query, &caller, state.tenancy.default_home);
    if let Some(cursor) = cursor {
        query
            .push(" AND (f.registered_at, f.facility_id) > (")
            .push_bind(cursor.at)
            .push(", ")
            .push_bind(cursor.id)
            .push(")");
    }
    query
        .push(" ORDER BY f.registered_at, f.facility_id LIMIT ")
        .push_bind(limit + 1);
    let mut items: Vec<FacilityView> = query.build_query_as().fetch_all(&state.pool).await?;
    items = items
        .into_iter()
        .map(|item| item.with_home(state.tenancy.default_home))
        .collect();
    let page = usize::try_from(limit).unwrap_or(usize::MAX);
    let more = items.len() > page;
    items.truncate(page);
    let next_cursor = more.then(|| items.last()).flatten().map(|last| {
        Cursor {
            at: last.registered_at,
            id: last.facility_id,
        }
        .encode()
    });
    Ok(super::with_content_etag(
        &headers,
        &FacilityPage { items, next_cursor },
    ))
}

/// The range of `GET /facilities/{id}/calendar` (documentation; parsed by [`Params`]).
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // Read by utoipa only.
pub(crate) struct CalendarRange {
    /// Start of the range, RFC 3339 (required).
    from: DateTime<Utc>,
    /// End of the range, RFC 3339, after `from` and at most 31 days later (required).
    to: DateTime<Utc>,
}

/// A facility row with the reservations near a range, as JSON.
#[derive(Debug, sqlx::FromRow)]
struct CalendarRow {
    #[sqlx(flatten)]
    facility: FacilityView,
    nearby: sqlx::types::Json<Vec<Reservation>>,
}

/// A slot held at the facility: a busy window, with the booking holding it for staff of the
/// facility's home, ops and services (a family never sees another family's booking ids).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct Reservation {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    booking_id: Option<Uuid>,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
}

/// A window in which a new slot fits: inside opening hours, clear of held slots and their
/// turnaround buffer, at least 30 minutes long.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct FreeWindow {
    start: DateTime<Utc>,
    end: DateTime<Utc>,
}

/// A facility's calendar over a range.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct CalendarView {
    facility_id: Uuid,
    time_zone: String,
    turnaround_minutes: i32,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    /// Held slots that overlap the range, by start.
    reservations: Vec<Reservation>,
    /// Where a new slot could go, by start.
    free_windows: Vec<FreeWindow>,
    /// The facility's version (moves with every reservation).
    version: i64,
}

/// A facility's reservations and free windows over a range of at most 31 days. A director sees
/// only the calendars of their homes' facilities (another home's answers 404); a family sees the
/// reservations as busy windows, without booking ids.
#[utoipa::path(
    get,
    path = "/facilities/{id}/calendar",
    tag = "facilities",
    params(
        ("id" = Uuid, Path, description = "The facility id"),
        CalendarRange,
        ("Consistency-Token" = Option<String>, Header, description = "Wait until this write is visible"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The calendar", body = CalendarView),
        (status = 304, description = "Not modified since the ETag sent"),
        (status = 401, description = "No valid bearer token", body = platform::problem::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such facility, or one of a home you do not work for", body = platform::problem::Problem, content_type = "application/problem+json"),
        (status = 422, description = "from/to missing, malformed, reversed or more than 31 days apart", body = platform::problem::Problem, content_type = "application/problem+json"),
        (status = 503, description = "Read model behind the token, or store down", body = platform::problem::Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn get_calendar(
    State(state): State<AppState>,
    caller: Caller,
    ValidPath(id): ValidPath<Uuid>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let mut params = Params::new(query, &["from", "to"])?;
    let from = params.required_instant("from");
    let to = params.required_instant("to");
    if let (Some(from), Some(to)) = (from, to) {
        params.refuse_if(
            to <= from,
            "to",
            "range.to_after_from",
            "to must be after from",
        );
        params.refuse_if(
            to - from > MAX_CALENDAR_RANGE,
            "to",
            "calendar.range_max",
            "a calendar spans at most 31 days",
        );
    }
    params.finish()?;
    let (Some(from), Some(to)) = (from, to) else {
        unreachable!("finish() refuses a missing from or to")
    };
    wait_for_token(&headers, &state.pool, &state.consistency, &state.log_ends).await?;
    // One statement, so one snapshot: the facility row and its reservations agree, even across
    // a switch of the read-model version. Held slots just outside the range are fetched too:
    // they still block its edges through the turnaround buffer.
    let mut query: QueryBuilder<'_, Postgres> = QueryBuilder::new(format!(
        "SELECT {COLUMNS}, COALESCE((SELECT jsonb_agg(jsonb_build_object('booking_id', r.booking_id, \
         'start', r.slot_start, 'end', r.slot_end) ORDER BY r.slot_start, r.booking_id) \
         FROM reservations r WHERE r.facility_id = f.facility_id \
         AND r.slot_start < "
    ));
    query
        .push_bind(to)
        .push(" + make_interval(mins => f.turnaround_minutes) AND r.slot_end > ")
        .push_bind(from)
        .push(
            " - make_interval(mins => f.turnaround_minutes)), '[]'::jsonb) AS nearby \
             FROM facilities f WHERE f.facility_id = ",
        )
        .push_bind(id);
    facility_scope(&mut query, &caller, state.tenancy.default_home);
    let row: CalendarRow = query
        .build_query_as()
        .fetch_optional(&state.pool)
        .await?
        .ok_or(ApiError::NotFound)?;
    let (facility, mut nearby) = (row.facility, row.nearby.0);
    if !sees_booking_ids(&caller) {
        for reservation in &mut nearby {
            reservation.booking_id = None;
        }
    }
    let buffer = Duration::minutes(i64::from(facility.turnaround_minutes));
    let hours: OpeningHours = serde_json::from_value(facility.opening_hours.clone())
        .map_err(|error| ApiError::Corrupt(format!("opening hours of {id}: {error}")))?;
    let tz: chrono_tz::Tz = facility
        .time_zone
        .parse()
        .map_err(|error| ApiError::Corrupt(format!("time zone of {id}: {error}")))?;
    let held: Vec<Window> = nearby
        .iter()
        .map(|r| Window {
            start: r.start,
            end: r.end,
        })
        .collect();
    let reservations: Vec<Reservation> = nearby
        .into_iter()
        .filter(|r| r.start < to && r.end > from)
        .collect();
    let free_windows = calendar::free_windows(&hours, tz, buffer, &held, from, to)
        .into_iter()
        .map(|w| FreeWindow {
            start: w.start,
            end: w.end,
        })
        .collect();
    // A family's calendar (busy windows without booking ids) is another representation.
    let etag = format!(
        "calendar-{id}-v{}-{}-{}{}",
        facility.version,
        from.timestamp(),
        to.timestamp(),
        if sees_booking_ids(&caller) {
            ""
        } else {
            "-busy"
        }
    );
    let view = CalendarView {
        facility_id: facility.facility_id,
        time_zone: facility.time_zone,
        turnaround_minutes: facility.turnaround_minutes,
        from,
        to,
        reservations,
        free_windows,
        version: facility.version,
    };
    Ok(with_etag(&headers, &etag, view))
}
