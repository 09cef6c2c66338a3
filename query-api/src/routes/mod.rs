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
use platform::auth::Verifier;
use serde::Serialize;
use sqlx::PgPool;

use crate::settings::ConsistencySettings;

/// What every handler can reach.
#[derive(Debug, Clone)]
pub(crate) struct AppState {
    pub(crate) pool: PgPool,
    pub(crate) verifier: Arc<Verifier>,
    pub(crate) consistency: ConsistencySettings,
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
        .route("/ready", get(ops::ready))
        .route("/openapi.json", get(ops::openapi))
        .with_state(state)
}

/// Answers a computed representation (a page of a list) with an ETag that is a digest of the
/// body itself, or `304` if the client's `If-None-Match` has it: a list has no single version,
/// so what identifies it is its content.
pub(crate) fn with_content_etag<T: Serialize>(request: &HeaderMap, body: &T) -> Response {
    let Ok(bytes) = serde_json::to_vec(body) else {
        return Json(body).into_response();
    };
    let digest = platform::digest::sha256_hex(&[&bytes]);
    with_etag(request, &format!("page-{}", &digest[..32]), body)
}

/// Answers a representation with its ETag, or `304` if the client's `If-None-Match` has it.
pub(crate) fn with_etag<T: Serialize>(request: &HeaderMap, etag: &str, body: T) -> Response {
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
        Json(body).into_response()
    };
    if let Some(value) = etag_header {
        response.headers_mut().insert(header::ETAG, value);
    }
    response
}
