//! One module per route group.

pub(crate) mod bookings;
pub(crate) mod facilities;
pub(crate) mod ops;

use axum::{
    Json,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;

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
