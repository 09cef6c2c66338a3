//! `/ready` and `/openapi.json` (`/health` and `/metrics` come from `platform::http`).

use axum::Json;
use platform::http::ReadyReport;
use utoipa::OpenApi;

/// `GET /ready`: the simulator has no dependencies; serving means ready.
pub(crate) async fn ready() -> ReadyReport {
    ReadyReport::new(Vec::new())
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Funeral Manager payment gateway simulator", description = "A fake payment provider for tests: captures and refunds with idempotency keys, a ledger, and behaviour control."),
    paths(
        super::payments::capture,
        super::payments::refund,
        super::payments::lookup,
        super::payments::captures,
        super::payments::ledger,
        super::control::show,
        super::control::set_global,
        super::control::reset,
        super::control::set_booking,
        super::control::clear_booking,
    ),
    tags(
        (name = "payments", description = "What a payment provider does"),
        (name = "control", description = "How tests make the simulator misbehave"),
    )
)]
pub(crate) struct ApiDoc;

/// `GET /openapi.json`, generated from the handlers and DTOs.
pub(crate) async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
