//! `/ready` and `/openapi.json` (`/health` and `/metrics` come from `platform::http`).

use std::time::Duration;

use axum::{Json, extract::State};
use platform::{
    auth::family::FamilySessionAuth,
    http::{BearerAuth, ReadyCheck, ReadyReport, probe},
    openapi::{RouteRoles, Shared, SharedHeader},
};
use utoipa::OpenApi;

use super::AppState;

/// `GET /ready`: the broker answers, the aggregate store has read the log, and its tailer is
/// not more than `max_tailer_lag` records behind the log's end (`crate::lag`).
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
        // Always ok: every other aggregate takes commands (docs/evolution.md).
        ReadyCheck {
            name: "parked",
            ok: true,
            detail: state.commands.store().parked_summary(),
        },
        tailer_lag(state.commands.store().lag(), state.max_tailer_lag),
    ])
}

/// The tailer's lag as a check: failed while more than `max` records behind (never when `max`
/// is 0); the detail says by how much, whenever it has been measured.
fn tailer_lag(lag: Option<i64>, max: u64) -> ReadyCheck {
    let Some(lag) = lag else {
        return ReadyCheck {
            name: "tailer_lag",
            ok: true,
            detail: Some("not measured yet".to_owned()),
        };
    };
    let lagging = max > 0 && u64::try_from(lag).is_ok_and(|lag| lag > max);
    ReadyCheck {
        name: "tailer_lag",
        ok: !lagging,
        detail: Some(if lagging {
            format!("{lag} records behind the end of the log (more than the {max} allowed)")
        } else {
            format!("{lag} records behind the end of the log")
        }),
    }
}

/// What every write route answers because it goes through `WriteRequest`, `written` and the
/// platform's layers, whichever handler it reaches; each route's own annotation adds what only
/// it can answer (404, 409, 412).
const WRITE_ROUTES: Shared = Shared {
    problems: &[
        (400, "The body is not JSON"),
        (401, "No valid bearer token"),
        (403, "The token's role may not use this route"),
        (413, "The body is larger than the limit"),
        (415, "A body that is not application/json"),
        (
            429,
            "Too many writes from this token subject or client address: retry after \
             `Retry-After` seconds",
        ),
        (
            422,
            "A field, path parameter or header breaks a rule (each is named with the rule), or \
             the Idempotency-Key was used for another request",
        ),
        (
            503,
            "Still reading the log, the broker is unavailable, or the request timed out: retry \
             with the same Idempotency-Key",
        ),
    ],
    request_headers: &[
        SharedHeader::new(
            "Idempotency-Key",
            "Retry token (1 to 200 printable ASCII characters): a replay returns the first answer",
        )
        .matching("^[!-~]{1,200}$")
        .writes_only(),
        SharedHeader::uuid(
            "Correlation-Id",
            "The flow this command belongs to (the saga passes its booking's); recorded on its \
             events",
        ),
        SharedHeader::uuid(
            "Causation-Id",
            "What caused this command (the saga names the event it reacts to); recorded on its \
             events",
        ),
    ],
    success_headers: &[SharedHeader::new(
        "Consistency-Token",
        "Present it to the query-api to read this write",
    )],
    problem_headers: &[
        (401, SharedHeader::new("WWW-Authenticate", "Bearer")),
        (
            429,
            SharedHeader::new("Retry-After", "Seconds until a write is let through again"),
        ),
    ],
};

/// Each operation's roles, from the constants the handlers enforce.
const ROLES: RouteRoles = RouteRoles {
    routes: super::ROUTE_ROLES,
};

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
        super::bookings::erase,
        super::bookings::personal_data,
        super::bookings::mark_slot_held,
        super::bookings::confirm,
        super::bookings::reject,
        super::bookings::fail,
        super::payments::captured,
        super::payments::declined,
        super::payments::refunded,
        super::sagas::park,
        super::sagas::retry,
        super::sagas::skip,
        super::sagas::resolve,
        super::invitations::invite,
        super::invitations::revoke,
        super::invitations::exchange,
        super::invitations::refresh,
        super::invitations::jwks,
        super::price_lists::publish,
        super::price_lists::current,
    ),
    tags(
        (name = "facilities", description = "Facilities and their opening hours"),
        (name = "bookings", description = "Requesting and cancelling bookings"),
        (name = "invitations", description = "Families by invitation: a director invites a booking's contacts, a family exchanges its code for a session scoped to the booking (docs/identity.md)"),
        (name = "price lists", description = "A funeral home's price list, which prices every booking (docs/pricing.md)"),
        (name = "internal", description = "Commands the booking saga sends with a service token"),
        (name = "sagas", description = "Decisions about a booking's saga (park, retry, skip a step, resolve by hand): operators, and the saga runner itself"),
    ),
    modifiers(&BearerAuth, &FamilySessionAuth, &WRITE_ROUTES, &ROLES)
)]
pub(crate) struct ApiDoc;

/// `GET /openapi.json`, generated from the handlers and DTOs.
pub(crate) async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
