//! The command-service's own metrics (the HTTP ones come from `platform::http`):
//!
//! - `commands_total{command, outcome}`: every answer of a command route, by command name
//!   (`request_booking`, `cancel_booking`, ...; fixed at the route, so bounded) and [`Outcome`].
//! - `command_append_seconds{aggregate, admission}`: appending one event and reading it back
//!   until the log's admission rule has decided (`admitted`, `refused` when another writer won,
//!   `unknown` when it was not read back in time).
//! - `event_append_seconds{aggregate, result}` (from `event_log`): the broker's acknowledgement
//!   alone.
//!
//! The outcome travels from the handler to [`track`] as a response extension: success answers
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

use crate::startup::AppState;

/// What became of a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Its events were appended and admitted.
    Accepted,
    /// Valid, but there was nothing to change (it was already so).
    NoOp,
    /// A retry with a known `Idempotency-Key`: the first answer again.
    Replayed,
    /// The domain refused it (a rule, an unknown id, a state that does not allow it).
    Rejected,
    /// Another writer won the race, or `If-Match` named another version.
    Conflict,
    /// The request could not become a command: malformed body, field rules, headers.
    Invalid,
    /// No valid token, or a role that may not send it.
    Denied,
    /// The service could not decide or append (broker down, still reading the log).
    Unavailable,
    /// A bug: the service refused its own answer (500).
    Error,
}

impl Outcome {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::NoOp => "no_op",
            Self::Replayed => "replayed",
            Self::Rejected => "rejected",
            Self::Conflict => "conflict",
            Self::Invalid => "invalid",
            Self::Denied => "denied",
            Self::Unavailable => "unavailable",
            Self::Error => "error",
        }
    }

    /// For answers that did not say: by status.
    fn of_status(status: StatusCode) -> Self {
        match status.as_u16() {
            200..=299 => Self::Accepted,
            401 | 403 => Self::Denied,
            404 => Self::Rejected,
            409 | 412 => Self::Conflict,
            400..=499 => Self::Invalid,
            503 => Self::Unavailable,
            _ => Self::Error,
        }
    }

    /// Marks `response` with this outcome.
    pub(crate) fn mark(self, mut response: Response) -> Response {
        response.extensions_mut().insert(self);
        response
    }
}

/// `route` with every answer counted as `commands_total{command = name, outcome}`.
pub(crate) fn command(name: &'static str, route: MethodRouter<AppState>) -> MethodRouter<AppState> {
    route.layer(middleware::from_fn_with_state(name, track))
}

async fn track(State(command): State<&'static str>, request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let outcome = response
        .extensions()
        .get::<Outcome>()
        .copied()
        .unwrap_or_else(|| Outcome::of_status(response.status()));
    metrics::counter!("commands_total", "command" => command, "outcome" => outcome.label())
        .increment(1);
    response
}

/// Registers the descriptions `/metrics` shows.
pub(crate) fn describe() {
    metrics::describe_counter!(
        "commands_total",
        "Command answers by command name and outcome (accepted, no_op, replayed, rejected, conflict, invalid, denied, unavailable, error)"
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
}
