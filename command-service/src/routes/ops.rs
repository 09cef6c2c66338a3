//! `/ready` and `/openapi.json` (`/health` and `/metrics` come from `platform::http`).

use std::time::Duration;

use axum::{Json, extract::State};
use platform::http::{BearerAuth, ReadyCheck, ReadyReport, probe};
use utoipa::OpenApi;

use crate::startup::AppState;

/// `GET /ready`: the broker answers and the aggregate store has read the log.
pub(crate) async fn ready(State(state): State<AppState>) -> ReadyReport {
    let broker = probe(Duration::from_secs(2), state.producer.ping()).await;
    let caught_up = if state.commands.store().is_caught_up() {
        Ok(())
    } else {
        Err("still reading the event log")
    };
    ReadyReport::new(vec![
        ReadyCheck::from_result("kafka", broker),
        ReadyCheck::from_result("event_log_caught_up", caught_up),
    ])
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Funeral Manager command-service", description = "Writes: every accepted command appends events to the log."),
    paths(
        super::facilities::register,
        super::facilities::change_opening_hours,
        super::facilities::reserve_slot,
        super::facilities::release_slot,
        super::bookings::request,
        super::bookings::cancel,
        super::bookings::mark_slot_held,
        super::bookings::confirm,
        super::bookings::reject,
        super::bookings::fail,
        super::payments::captured,
        super::payments::declined,
        super::payments::refunded,
    ),
    tags(
        (name = "facilities", description = "Facilities and their opening hours"),
        (name = "bookings", description = "Requesting and cancelling bookings"),
        (name = "internal", description = "Commands the booking saga sends with a service token"),
    ),
    modifiers(&BearerAuth)
)]
pub(crate) struct ApiDoc;

/// `GET /openapi.json`, generated from the handlers and DTOs.
pub(crate) async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
