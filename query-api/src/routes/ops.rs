//! `/ready` and `/openapi.json`.

use std::time::Duration;

use axum::{Json, extract::State};
use platform::http::{BearerAuth, ReadyCheck, ReadyReport, probe};
use utoipa::OpenApi;

use crate::startup::AppState;

/// `GET /ready`: Postgres answers and a live read-model version exists (the projection-service
/// creates it when it first starts).
pub(crate) async fn ready(State(state): State<AppState>) -> ReadyReport {
    let postgres = probe(Duration::from_secs(2), async {
        sqlx::query("SELECT 1")
            .execute(&state.pool)
            .await
            .map(|_| ())
    })
    .await;
    let live = probe(Duration::from_secs(2), async {
        sqlx::query("SELECT 1 FROM live.projection_offsets LIMIT 1")
            .execute(&state.pool)
            .await
            .map(|_| ())
    })
    .await;
    ReadyReport::new(vec![
        ReadyCheck::from_result("postgres", postgres),
        ReadyCheck::from_result("read_models", live),
    ])
}

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
    modifiers(&BearerAuth)
)]
pub(crate) struct ApiDoc;

/// `GET /openapi.json`, generated from the handlers and views.
pub(crate) async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
