//! `/ready` and `/openapi.json`.

use std::time::Duration;

use axum::{Json, extract::State};
use platform::{
    auth::family::FamilySessionAuth,
    http::{BearerAuth, ReadyCheck, ReadyReport, probe},
    openapi::{RouteRoles, Shared, SharedHeader},
};
use utoipa::OpenApi;

use super::AppState;
use crate::{error::is_missing_relation, read_model};

/// `GET /ready`: Postgres answers and this release's read-model version has a live build (its
/// views exist; a projection-service of this release builds it from the log and switches it
/// live once caught up).
pub(crate) async fn ready(State(state): State<AppState>) -> ReadyReport {
    let postgres = probe(Duration::from_secs(2), async {
        sqlx::query("SELECT 1")
            .execute(&state.pool)
            .await
            .map(|_| ())
    })
    .await;
    let live = probe(Duration::from_secs(2), async {
        match sqlx::query("SELECT 1 FROM projection_offsets LIMIT 1")
            .execute(&state.pool)
            .await
        {
            Ok(_) => Ok(()),
            Err(sqlx::Error::Database(error)) if is_missing_relation(error.code().as_deref()) => {
                Err(format!(
                    "read-model version {} has no live build yet: a projection-service of this \
                     release builds it from the log (`fmctl projections status`)",
                    read_model::VERSION
                ))
            }
            Err(error) => Err(error.to_string()),
        }
    })
    .await;
    ReadyReport::new(vec![
        ReadyCheck::from_result("postgres", postgres),
        ReadyCheck::from_result("read_models", live),
    ])
}

/// What every read answers because of the shared extractors (`Caller`, `ValidPath`, `Params`,
/// the consistency wait), `with_etag` and the platform's layers; each route's own annotation adds
/// what only it can answer (404, its parameters' rules).
const READ_ROUTES: Shared = Shared {
    problems: &[
        (401, "No valid bearer token"),
        (
            422,
            "A path or query parameter, or the Consistency-Token, breaks a rule (each is named \
             with the rule)",
        ),
        (
            429,
            "Too many queries with a Consistency-Token from this token subject or client \
             address: retry after `Retry-After` seconds",
        ),
        (
            503,
            "The read model has not reached the Consistency-Token in time, the store is \
             unavailable, or the request timed out",
        ),
    ],
    request_headers: &[SharedHeader::new(
        "If-None-Match",
        "An ETag this API gave: 304 while the answer is unchanged",
    )],
    success_headers: &[SharedHeader::new("ETag", "Send it back in If-None-Match")],
    problem_headers: &[
        (401, SharedHeader::new("WWW-Authenticate", "Bearer")),
        (
            429,
            SharedHeader::new("Retry-After", "Seconds until a wait is let through again"),
        ),
        (
            503,
            SharedHeader::new(
                "Retry-After",
                "Seconds to wait, when the read model is behind",
            ),
        ),
    ],
};

/// Each operation's roles.
const ROLES: RouteRoles = RouteRoles {
    routes: super::ROUTE_ROLES,
};

#[derive(OpenApi)]
#[openapi(
    info(title = "Funeral Manager query-api", description = "Reads over the read models, with read-your-writes on request."),
    paths(
        super::bookings::get_booking,
        super::bookings::list_bookings,
        super::facilities::get_facility,
        super::facilities::list_facilities,
        super::facilities::get_calendar,
    ),
    modifiers(&BearerAuth, &FamilySessionAuth, &READ_ROUTES, &ROLES)
)]
pub(crate) struct ApiDoc;

/// `GET /openapi.json`, generated from the handlers and views.
pub(crate) async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
