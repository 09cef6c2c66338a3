//! `GET /bookings/{id}` and `GET /bookings`.

use std::collections::HashMap;

use axum::{
    extract::{Query, State, rejection::QueryRejection},
    http::HeaderMap,
    response::Response,
};
use chrono::{DateTime, Utc};
use platform::{
    auth::{Caller, family::Principal},
    path::ValidPath,
};
use schemas::Role;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sqlx::{Postgres, QueryBuilder};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::{AppState, with_etag};
use crate::{
    consistency::wait_for_token,
    error::ApiError,
    params::{Cursor, Params},
    tenancy::booking_scope,
};

/// The statuses a booking can have.
const STATUSES: [&str; 6] = [
    "requested",
    "slot_held",
    "confirmed",
    "rejected",
    "failed",
    "cancelled",
];

/// The columns of a [`BookingView`], from `bookings b`.
const COLUMNS: &str = "b.booking_id, b.facility_id, b.service_type, b.status, b.status_reason, b.status_changed_by, b.slot, b.deceased, \
     b.family_contacts, b.price_amount_minor, b.price_currency, b.statement, b.saga, b.version, b.requested_at, b.updated_at, \
     b.slot_start, \
     (SELECT jsonb_build_object('payment_id', p.payment_id, 'status', p.status, \
        'amount', jsonb_build_object('amount_minor', p.amount_minor, 'currency', p.currency), \
        'capture_reference', p.capture_reference, 'decline_reason', p.decline_reason, \
        'refund_reference', p.refund_reference, 'refunded_amount_minor', p.refunded_amount_minor, \
        'version', p.version) \
      FROM payments p WHERE p.booking_id = b.booking_id) AS payment";

/// [`COLUMNS`], with the personal columns masked for a caller who may not see them (ops): the
/// string `"masked"`, or `"erased"` where the data is erased (that much is operational).
fn columns(caller: &Caller) -> String {
    if !crate::tenancy::masks_personal_data(caller) {
        return COLUMNS.to_owned();
    }
    COLUMNS
        .replace(
            "b.deceased, ",
            "CASE WHEN b.deceased = '\"erased\"'::jsonb THEN b.deceased ELSE '\"masked\"'::jsonb END AS deceased, ",
        )
        .replace(
            "b.family_contacts, ",
            "CASE WHEN b.family_contacts = '\"erased\"'::jsonb THEN b.family_contacts ELSE '\"masked\"'::jsonb END AS family_contacts, ",
        )
}

/// A booking as the read model holds it. The JSON columns stay the text PostgreSQL sent
/// (`RawValue`), written into the answer as they are: parsing them into trees only to write
/// them out again was a third of the query-api's work (docs/benchmarks.md, "Profiles").
#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub(crate) struct BookingView {
    booking_id: Uuid,
    facility_id: Uuid,
    service_type: String,
    /// `requested`, `slot_held`, `confirmed`, `rejected`, `failed` or `cancelled`.
    status: String,
    /// Why it was rejected, failed or cancelled.
    status_reason: Option<String>,
    /// The role of whoever moved the booking to its status: `family` or `director` for a
    /// cancellation, `system` for the saga's steps.
    status_changed_by: String,
    /// `{"start", "end"}` as requested, RFC 3339 with offsets.
    #[schema(value_type = Object)]
    #[sqlx(json)]
    slot: Box<RawValue>,
    /// `{"full_name", "date_of_death"}`, or the string `"erased"` once the booking's personal data
    /// is erased (docs/privacy.md); `"masked"` for ops.
    #[schema(value_type = serde_json::Value)]
    #[sqlx(json)]
    deceased: Box<RawValue>,
    /// `[{"name", "relationship", "email", "phone"}]`, or the string `"erased"`; `"masked"` for
    /// ops.
    #[schema(value_type = serde_json::Value)]
    #[sqlx(json)]
    family_contacts: Box<RawValue>,
    /// What the family pays (the statement's total).
    #[sqlx(flatten)]
    price: Price,
    /// The itemised statement the server priced the booking with from its home's price list:
    /// `{price_list: {home_id, version} | null, currency, lines: [{code, description,
    /// unit_amount_minor, minutes?, amount_minor}], adjustments: [{amount_minor, reason}],
    /// total_minor}` (docs/pricing.md). A booking from before price lists has one line,
    /// `agreed_price`.
    #[schema(value_type = Object)]
    #[sqlx(json)]
    statement: Box<RawValue>,
    /// The saga's progress: today the lifecycle history, `{"history": [{status, event_type,
    /// sequence, at}]}`.
    #[schema(value_type = Object)]
    #[sqlx(json)]
    saga: Box<RawValue>,
    /// The booking's payment, once the gateway has answered: status, amount, references.
    #[schema(value_type = Option<Object>)]
    #[sqlx(json(nullable))]
    payment: Option<Box<RawValue>>,
    /// Where the booking saga stands, from the saga runner's `saga.progress` view:
    /// `{stage, step, done, attempts, deadline, compensated, updated_at}` (plus `last_error`
    /// and the performed `history` for staff). Absent until the saga has seen the booking, or
    /// when no saga runner is deployed. Read by id only ([`SagaProgress::column`]).
    #[sqlx(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    saga_progress: Option<serde_json::Value>,
    version: i64,
    requested_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    #[serde(skip)]
    slot_start: DateTime<Utc>,
}

impl BookingView {
    /// Changes whenever the booking, its payment or its saga's progress does.
    fn etag(&self) -> String {
        let payment_version = self
            .payment
            .as_ref()
            .and_then(|payment| serde_json::from_str::<Versioned>(payment.get()).ok())
            .map_or(0, |payment| payment.version);
        let progress = self
            .saga_progress
            .as_ref()
            .map(|progress| platform::digest::sha256_hex(&[progress.to_string().as_bytes()]))
            .map_or_else(String::new, |digest| format!("-s{}", &digest[..12]));
        format!(
            "booking-{}-v{}-p{payment_version}{progress}",
            self.booking_id, self.version
        )
    }
}

/// Whether the saga runner's `saga.progress` view is in this database, as last seen: the
/// booking read by id takes the saga's progress in the same statement (one round trip), which
/// PostgreSQL refuses as a whole while the view does not exist (no saga runner deployed, or not
/// yet migrated). After such a refusal the booking is read without it, and the view is looked
/// for again at most every [`SagaProgress::RECHECK`].
#[derive(Debug, Default)]
pub(crate) struct SagaProgress {
    /// When a read last found the view missing; `None` while it is there.
    missing_since: std::sync::Mutex<Option<std::time::Instant>>,
}

impl SagaProgress {
    /// How long a missing view is believed missing: a saga runner deployed later shows its
    /// progress after at most this long.
    const RECHECK: std::time::Duration = std::time::Duration::from_secs(1);

    /// Whether the next read should take the saga's progress.
    fn worth_reading(&self) -> bool {
        self.missing_since
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_none_or(|since| since.elapsed() >= Self::RECHECK)
    }

    fn seen(&self, present: bool) {
        let mut missing_since = self
            .missing_since
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *missing_since = if present {
            None
        } else {
            Some(std::time::Instant::now())
        };
    }

    /// The `saga_progress` column of booking row `b`: what the caller may see of its saga
    /// (staff also see the last error and the history).
    fn column(staff: bool) -> &'static str {
        if staff {
            ", (SELECT to_jsonb(p) FROM (SELECT stage, step, done, attempts, deadline, compensated, \
             updated_at, last_error, history FROM saga.progress s WHERE s.booking_id = b.booking_id) p) \
             AS saga_progress"
        } else {
            ", (SELECT to_jsonb(p) FROM (SELECT stage, step, done, attempts, deadline, compensated, \
             updated_at FROM saga.progress s WHERE s.booking_id = b.booking_id) p) AS saga_progress"
        }
    }
}

/// 42P01 `undefined_table`, 3F000 `invalid_schema_name`: the saga's view is not in this database.
fn no_saga_view(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(error)
        if matches!(error.code().as_deref(), Some("42P01" | "3F000")))
}

/// The one field of a payment the ETag needs.
#[derive(Deserialize)]
struct Versioned {
    version: i64,
}

/// Integer minor units and an ISO 4217 code.
#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub(crate) struct Price {
    #[sqlx(rename = "price_amount_minor")]
    amount_minor: i64,
    #[sqlx(rename = "price_currency")]
    currency: String,
}

/// Read one booking. A family sees only the bookings it requested, or, with a family session
/// (`POST /family-sessions` at the command-service), the booking the session names; a director
/// only those at a facility of their homes (another home's answers 404); ops sees every home's
/// with the personal data masked.
#[utoipa::path(
    get,
    path = "/bookings/{id}",
    tag = "bookings",
    params(
        ("id" = Uuid, Path, description = "The booking id"),
        ("Consistency-Token" = Option<String>, Header, description = "Wait until this write is visible"),
    ),
    security(("bearer" = []), ("family_session" = [])),
    responses(
        (status = 200, description = "The booking", body = BookingView),
        (status = 304, description = "Not modified since the ETag sent"),
        (status = 401, description = "No valid bearer token", body = platform::problem::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such booking, or not yours (another family's, another home's)", body = platform::problem::Problem, content_type = "application/problem+json"),
        (status = 503, description = "Read model behind the token, or store down", body = platform::problem::Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn get_booking(
    State(state): State<AppState>,
    principal: Principal,
    ValidPath(id): ValidPath<Uuid>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    // A family session opens the bookings it names, nothing else; its booking needs no other
    // scope. Everyone else is scoped in the query.
    if principal
        .session()
        .is_some_and(|session| !session.may_see(id))
    {
        return Err(ApiError::NotFound);
    }
    let caller = principal.caller();
    wait_for_token(&headers, &state.pool, &state.consistency, &state.log_ends).await?;
    let read = |with_progress: bool| {
        let mut query: QueryBuilder<'_, Postgres> = QueryBuilder::new(format!(
            "SELECT {}{} FROM bookings b WHERE b.booking_id = ",
            columns(&caller),
            if with_progress {
                SagaProgress::column(caller.role != Role::Family)
            } else {
                ""
            },
        ));
        query.push_bind(id);
        if principal.session().is_none() {
            booking_scope(&mut query, &caller, state.tenancy.default_home);
        }
        let pool = state.pool.clone();
        async move {
            query
                .build_query_as::<BookingView>()
                .fetch_optional(&pool)
                .await
        }
    };
    let with_progress = state.saga_progress.worth_reading();
    let booking = match read(with_progress).await {
        Err(error) if with_progress && no_saga_view(&error) => {
            state.saga_progress.seen(false);
            read(false).await
        }
        read => {
            if with_progress && read.is_ok() {
                state.saga_progress.seen(true);
            }
            read
        }
    };
    let booking = booking?.ok_or(ApiError::NotFound)?;
    let mut etag = booking.etag();
    // Ops sees another representation: the personal data masked.
    if crate::tenancy::masks_personal_data(&caller) {
        etag.push_str("-masked");
    }
    Ok(with_etag(&headers, &etag, booking))
}

/// The statuses as the document's enum: [`STATUSES`], which the parameter is checked against.
fn statuses() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(STATUSES))
        .build()
}

/// The filters and page of `GET /bookings` (documentation; parsed by [`Params`]).
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // Read by utoipa only.
pub(crate) struct BookingFilters {
    /// Only bookings at this facility.
    facility_id: Option<Uuid>,
    /// Only bookings with this status.
    #[param(schema_with = statuses)]
    status: Option<String>,
    /// Only services starting at or after this instant (RFC 3339).
    from: Option<DateTime<Utc>>,
    /// Only services starting before this instant (RFC 3339).
    to: Option<DateTime<Utc>>,
    /// Page size (default 50).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<i64>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// One page of bookings, by service start time.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct BookingPage {
    items: Vec<BookingView>,
    /// Present when there are more: pass it as `cursor` for the next page.
    next_cursor: Option<String>,
}

/// List bookings, by service start time. A family sees only the bookings it requested, a
/// director only those at the facilities of their homes; ops sees every home's with the personal
/// data masked.
#[utoipa::path(
    get,
    path = "/bookings",
    tag = "bookings",
    params(
        BookingFilters,
        ("Consistency-Token" = Option<String>, Header, description = "Wait until this write is visible"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of bookings", body = BookingPage),
        (status = 304, description = "Not modified since the ETag sent"),
        (status = 401, description = "No valid bearer token", body = platform::problem::Problem, content_type = "application/problem+json"),
        (status = 422, description = "A parameter breaks a rule; each is named with the rule", body = platform::problem::Problem, content_type = "application/problem+json"),
        (status = 503, description = "Read model behind the token, or store down", body = platform::problem::Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn list_bookings(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let mut params = Params::new(
        query,
        &["facility_id", "status", "from", "to", "limit", "cursor"],
    )?;
    let facility_id = params.uuid("facility_id");
    let status = params.one_of("status", &STATUSES);
    let from = params.instant("from");
    let to = params.instant("to");
    let limit = params.limit(50, 200);
    let cursor = params.cursor();
    params.refuse_if(
        matches!((from, to), (Some(from), Some(to)) if to <= from),
        "to",
        "range.to_after_from",
        "to must be after from",
    );
    params.finish()?;
    wait_for_token(&headers, &state.pool, &state.consistency, &state.log_ends).await?;

    let mut query: QueryBuilder<'_, Postgres> = QueryBuilder::new(format!(
        "SELECT {} FROM bookings b WHERE true",
        columns(&caller)
    ));
    booking_scope(&mut query, &caller, state.tenancy.default_home);
    if let Some(facility_id) = facility_id {
        query.push(" AND b.facility_id = ").push_bind(facility_id);
    }
    if let Some(status) = status {
        query.push(" AND b.status = ").push_bind(status);
    }
    if let Some(from) = from {
        query.push(" AND b.slot_start >= ").push_bind(from);
    }
    if let Some(to) = to {
        query.push(" AND b.slot_start < ").push_bind(to);
    }
    if let Some(cursor) = cursor {
        query
            .push(" AND (b.slot_start, b.booking_id) > (")
            .push_bind(cursor.at)
            .push(", ")
            .push_bind(cursor.id)
            .push(")");
    }
    query
        .push(" ORDER BY b.slot_start, b.booking_id LIMIT ")
        .push_bind(limit + 1);
    let mut items: Vec<BookingView> = query.build_query_as().fetch_all(&state.pool).await?;
    let more = items.len() > usize::try_from(limit).unwrap_or(usize::MAX);
    items.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    let next_cursor = more.then(|| items.last()).flatten().map(|last| {
        Cursor {
            at: last.slot_start,
            id: last.booking_id,
        }
        .encode()
    });
    Ok(super::with_content_etag(
        &headers,
        &BookingPage { items, next_cursor },
    ))
}
