//! The command-service's own metrics (the HTTP ones come from `platform::http`):
//!
//! - `commands_total{command, outcome}`: every answer of a command route, by command name
//!   (`request_booking`, `cancel_booking`, ...; fixed at the route, so bounded) and
//!   [`CommandOutcome`].
//! - `command_append_seconds{aggregate, admission}`: appending one event and reading it back
//!   until the log's admission rule has decided (`admitted`, `refused` when another writer won,
//!   `unknown` when it was not read back in time).
//! - `event_append_seconds{aggregate, result}` (from `event_log`): the broker's acknowledgement
//!   alone.
//!
//! The outcome travels from the handler to [`track`] as a response extension ([`mark`]): success answers
//! carry the one [`crate::commands::Appended`] says, errors the one `ApiError` maps to; an
//! answer that carries none (an extractor's own rejection, such as a malformed path id) is
//! classified by its status.

use axum::{
    extract::{Request, State},
    http::StatusCode,
    middleware::{self, Next},
    response::Response,
    routing::MethodRouter,
};

use crate::commands::CommandOutcome;

/// For answers that did not say: the outcome by status.
fn outcome_of_status(status: StatusCode) -> CommandOutcome {
    match status.as_u16() {
        200..=299 => CommandOutcome::Accepted,
        401 | 403 => CommandOutcome::Denied,
        429 => CommandOutcome::Throttled,
        404 => CommandOutcome::Rejected,
        409 | 412 => CommandOutcome::Conflict,
        400..=499 => CommandOutcome::Invalid,
        503 => CommandOutcome::Unavailable,
        _ => CommandOutcome::Error,
    }
}

/// Marks `response` with `outcome`, for [`track`] to count.
pub(crate) fn mark(outcome: CommandOutcome, mut response: Response) -> Response {
    response.extensions_mut().insert(outcome);
    response
}

/// `route` with every answer counted as `commands_total{command = name, outcome}`.
pub(crate) fn command<S>(name: &'static str, route: MethodRouter<S>) -> MethodRouter<S>
where
    S: Clone + Send + Sync + 'static,
{
    route.layer(middleware::from_fn_with_state(name, track))
}

async fn track(State(command): State<&'static str>, request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let outcome = response
        .extensions()
        .get::<CommandOutcome>()
        .copied()
        .unwrap_or_else(|| outcome_of_status(response.status()));
    metrics::counter!("commands_total", "command" => command, "outcome" => outcome.label())
        .increment(1);
    response
}

/// Registers the descriptions `/metrics` shows.
pub(crate) fn describe() {
    metrics::describe_counter!(
        "commands_total",
        "Command answers by command name and outcome (accepted, no_op, replayed, rejected, conflict, invalid, denied, throttled, unavailable, error)"
    );
    metrics::describe_histogram!(
        "command_append_seconds",
        metrics::Unit::Seconds,
        "Appending one event and reading it back until admitted or refused"
    );
    metrics::describe_histogram!(
        "event_append_seconds",
        metrics::Unit::Seconds,
        "Producing one event until the broker acknowledged it (acks=all)"
    );
    metrics::describe_counter!(
        "price_list_reads_total",
        "Home price lists read, by source: cache (this replica's, while it hears of publishes) or database"
    );
}
