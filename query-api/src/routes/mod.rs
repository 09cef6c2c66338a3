//! The routes and the state they share: one module per route group, and [`router`].

pub(crate) mod bookings;
pub(crate) mod facilities;
pub(crate) mod ops;

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::FromRef,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use axum::{
    extract::{FromRequestParts, Request, State},
    middleware::{self, Next},
};
use platform::{
    auth::{
        Verifier,
        family::{FamilySessions, Principal},
    },
    rate_limit::{self, RateLimiter},
    settings::TenancySettings,
};
use schemas::Role;
use serde::Serialize;
use sqlx::PgPool;

use crate::consistency;

/// What every handler can reach.
#[derive(Debug, Clone)]
pub(crate) struct AppState {
    pub(crate) pool: PgPool,
    pub(crate) verifier: Arc<Verifier>,
    /// Family sessions, checked by the command-service's JWKS (docs/identity.md).
    pub(crate) family_sessions: Arc<FamilySessions>,
    pub(crate) consistency: consistency::Consistency,
    /// Consistency-token waits, per token subject and per client address.
    pub(crate) wait_limits: Arc<RateLimiter>,
    /// The log's end, for tokens beyond it.
    pub(crate) log_ends: consistency::LogEnds,
    /// The home of facilities registered before homes were named (`FM_TENANCY__DEFAULT_HOME`).
    pub(crate) tenancy: TenancySettings,
    /// Whether the saga runner's progress view is there to read with a booking.
    pub(crate) saga_progress: Arc<bookings::SagaProgress>,
}

impl FromRef<AppState> for Arc<FamilySessions> {
    fn from_ref(state: &AppState) -> Self {
        state.family_sessions.clone()
    }
}

impl FromRef<AppState> for Arc<Verifier> {
    fn from_ref(state: &AppState) -> Self {
        state.verifier.clone()
    }
}

/// Every route.
pub(crate) fn router(state: AppState) -> Router {
    Router::new()
        .route("/bookings", get(bookings::list_bookings))
        .route("/bookings/{id}", get(bookings::get_booking))
        .route("/facilities", get(facilities::list_facilities))
        .route("/facilities/{id}", get(facilities::get_facility))
        .route("/facilities/{id}/calendar", get(facilities::get_calendar))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            limit_consistency_waits,
        ))
        .route("/ready", get(ops::ready))
        .route("/openapi.json", get(ops::openapi))
        .with_state(state)
}

/// Every role reads: each handler takes the `Caller` extractor, which admits any verified token
/// with a Funeral Manager role; what a family sees is narrowed by the data (its own bookings),
/// not by the route.
pub(crate) const READERS: &[Role] = &[Role::Director, Role::Family, Role::Ops, Role::System];

/// Which roles each operation admits, for the OpenAPI document (`platform::openapi::RouteRoles`).
/// `tests/route_roles.rs` calls every route with every role's token and compares.
pub(crate) const ROUTE_ROLES: &[(&str, &str, &[Role])] = &[
    ("get", "/bookings", READERS),
    ("get", "/bookings/{id}", READERS),
    ("get", "/facilities", READERS),
    ("get", "/facilities/{id}", READERS),
    ("get", "/facilities/{id}/calendar", READERS),
];

/// Counts a query that carries a `Consistency-Token` against its caller's rate limits
/// (`platform::rate_limit`): such a query may hold a connection and poll the read model for the
/// whole wait, so a flood of them would starve everyone's reads. The `system` role is not
/// limited. A query without a token, or whose token does not verify (the handler answers 401),
/// passes on.
async fn limit_consistency_waits(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    if !request.headers().contains_key(consistency::HEADER) {
        return next.run(request).await;
    }
    let (mut parts, body) = request.into_parts();
    // A family session counts too (it may read its booking with a token).
    if let Ok(caller) = Principal::from_request_parts(&mut parts, &state)
        .await
        .map(|principal| principal.caller())
        && caller.role != Role::System
        && let Err(throttled) = state.wait_limits.check(
            &caller.subject,
            rate_limit::client_address(&parts.extensions),
        )
    {
        return throttled.into_response();
    }
    next.run(Request::from_parts(parts, body)).await
}

/// Answers a computed representation (a page of a list) with an ETag that is a digest of the
/// body itself, or `304` if the client's `If-None-Match` has it: a list has no single version,
/// so what identifies it is its content.
pub(crate) fn with_content_etag<T: Serialize>(request: &HeaderMap, body: &T) -> Response {
    let Ok(bytes) = serde_json::to_vec(body) else {
        return Json(body).into_response();
    };
    let digest = platform::digest::sha256_hex(&[&bytes]);
    // The bytes digested are the body sent: serialised once.
    answer(request, &format!("page-{}", &digest[..32]), || {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            bytes,
        )
            .into_response()
    })
}

/// Answers a representation with its ETag, or `304` if the client's `If-None-Match` has it.
pub(crate) fn with_etag<T: Serialize>(request: &HeaderMap, etag: &str, body: T) -> Response {
    answer(request, etag, || Json(body).into_response())
}

/// `304` with `etag` if the client's `If-None-Match` has it, else `body()`, with the ETag.
fn answer(request: &HeaderMap, etag: &str, body: impl FnOnce() -> Response) -> Response {
    let tag = format!("\"{etag}\"");
    let matches = request
        .get(header::IF_NONE_MATCH)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| {
            value.split(',').any(|candidate| {
                let candidate = candidate.trim();
                candidate == "*" || candidate.trim_start_matches("W/") == tag
            })
        });
    let etag_header = HeaderValue::from_str(&tag).ok();
    let mut response = if matches {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        body()
    };
    if let Some(value) = etag_header {
        response.headers_mut().insert(header::ETAG, value);
    }
    response
}
