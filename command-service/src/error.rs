//! The command-service's one error type and its one mapping to HTTP.

use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
};
use domain::error::RejectionKind;
use platform::{
    auth::AuthRejection,
    problem::{FieldError, Problem},
    rate_limit::Throttled,
};

use crate::commands::{CommandError, CommandOutcome};

/// Everything a command route can answer other than success.
#[derive(Debug)]
pub(crate) enum ApiError {
    /// 422: the request's content breaks field rules (all of them are listed).
    Invalid(Vec<FieldError>),
    /// 404: an id in the path or body names nothing.
    NotFound { field: &'static str, id: uuid::Uuid },
    /// 401/403.
    Auth(AuthRejection),
    /// 429 with `Retry-After`: over the caller's rate limit.
    Throttled(Throttled),
    /// 4xx already shaped by an extractor (malformed JSON, media type, body size).
    Problem(Problem),
    /// 422/404/409 (domain), 409 (lost race), 412 (If-Match), 503 (not ready, broker down,
    /// outcome unknown), 500 (a decided event that breaks its schema).
    Command(CommandError),
    /// 503: the data keys could not be read or written (PostgreSQL down, a master key missing).
    Keys(privacy::PrivacyError),
}

impl From<privacy::PrivacyError> for ApiError {
    fn from(error: privacy::PrivacyError) -> Self {
        Self::Keys(error)
    }
}

impl From<CommandError> for ApiError {
    fn from(error: CommandError) -> Self {
        Self::Command(error)
    }
}

impl From<Throttled> for ApiError {
    fn from(throttled: Throttled) -> Self {
        Self::Throttled(throttled)
    }
}

impl From<AuthRejection> for ApiError {
    fn from(error: AuthRejection) -> Self {
        Self::Auth(error)
    }
}

impl From<Problem> for ApiError {
    fn from(problem: Problem) -> Self {
        Self::Problem(problem)
    }
}

impl ApiError {
    /// What this answer counts as in `commands_total`.
    fn outcome(&self) -> CommandOutcome {
        match self {
            Self::Invalid(_) | Self::Command(CommandError::IdempotencyKeyReused) => {
                CommandOutcome::Invalid
            }
            Self::NotFound { .. } | Self::Command(CommandError::Rejected(_)) => {
                CommandOutcome::Rejected
            }
            Self::Auth(_) => CommandOutcome::Denied,
            Self::Throttled(_) => CommandOutcome::Throttled,
            Self::Problem(problem) if problem.status >= 500 => CommandOutcome::Unavailable,
            Self::Problem(_) => CommandOutcome::Invalid,
            Self::Command(CommandError::Conflict { .. } | CommandError::VersionMismatch { .. }) => {
                CommandOutcome::Conflict
            }
            Self::Command(
                CommandError::NotReady
                | CommandError::OutcomeUnknown
                | CommandError::Parked { .. }
                | CommandError::Log(_),
            )
            | Self::Keys(_) => CommandOutcome::Unavailable,
            Self::Command(CommandError::Contract(_)) => CommandOutcome::Error,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let outcome = self.outcome();
        crate::metrics::mark(outcome, self.into_problem_response())
    }
}

impl ApiError {
    fn into_problem_response(self) -> Response {
        let problem = match self {
            Self::Invalid(errors) => Problem::validation(errors),
            Self::NotFound { field, id } => {
                Problem::new(StatusCode::NOT_FOUND, "not-found", "Not found")
                    .with_detail(format!("{field} {id} does not exist"))
                    .with_errors(vec![FieldError::new(field, "exists", "no such id")])
            }
            Self::Auth(rejection) => return rejection.into_response(),
            Self::Throttled(throttled) => return throttled.into_response(),
            Self::Problem(problem) => problem,
            Self::Command(CommandError::Rejected(rejection)) => {
                let (status, slug, title) = match rejection.kind() {
                    RejectionKind::Invalid => (
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "validation",
                        "The request is not valid",
                    ),
                    RejectionKind::NotFound => (StatusCode::NOT_FOUND, "not-found", "Not found"),
                    RejectionKind::Conflict => (
                        StatusCode::CONFLICT,
                        "conflict",
                        "Not allowed in the current state",
                    ),
                };
                let field = rejection.field().unwrap_or_default();
                Problem::new(status, slug, title)
                    .with_detail(rejection.to_string())
                    .with_errors(vec![FieldError::new(
                        field,
                        rejection.rule(),
                        rejection.to_string(),
                    )])
            }
            Self::Command(error @ CommandError::Conflict { .. }) => Problem::new(
                StatusCode::CONFLICT,
                "concurrent-modification",
                "Concurrent modification",
            )
            .with_detail(format!("{error}. Re-read the resource and retry.")),
            Self::Command(error @ CommandError::VersionMismatch { .. }) => Problem::new(
                StatusCode::PRECONDITION_FAILED,
                "version-mismatch",
                "Version mismatch",
            )
            .with_detail(error.to_string())
            .with_errors(vec![FieldError::new(
                "If-Match",
                "version.current",
                error.to_string(),
            )]),
            Self::Command(CommandError::IdempotencyKeyReused) => {
                Problem::validation(vec![FieldError::new(
                    "Idempotency-Key",
                    "idempotency_key.reused",
                    "this key was already used for a different request; use a new key",
                )])
            }
            Self::Command(CommandError::NotReady) => Problem::unavailable()
                .with_detail("The service is still reading the event log. Retry shortly."),
            Self::Command(error @ CommandError::Parked { .. }) => {
                tracing::warn!(%error, "a command on a parked aggregate");
                Problem::unavailable().with_detail(format!(
                    "{error}: it holds events this release cannot read yet (a newer release \
                     wrote them, or one is missing). A replica of the newer release can serve \
                     it; retry with the same Idempotency-Key."
                ))
            }
            Self::Command(CommandError::Contract(violation)) => {
                let violation = violation.without_values();
                tracing::error!(%violation, "refused to append an event that breaks its schema");
                Problem::internal()
            }
            Self::Command(error @ (CommandError::OutcomeUnknown | CommandError::Log(_))) => {
                tracing::error!(%error, "command failed in the infrastructure");
                Problem::unavailable()
            }
            Self::Keys(error) => {
                tracing::error!(%error, "the data keys failed");
                Problem::unavailable()
            }
        };
        problem.into_response()
    }
}
