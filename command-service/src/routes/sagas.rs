//! Decisions about a booking's saga: park, retry now, skip a step, resolve by hand. Each is an
//! event of the booking's saga stream (`SagaId::for_booking`), so the log says who decided (the
//! token's subject and role) and why (`reason`). Operators reach these through the saga
//! runner's ops API (which checks what only the runner knows, then forwards the operator's own
//! token) or `fmctl sagas`; the runner itself parks a saga whose step failed for good.
//! docs/saga.md, "Operator actions", is the design.

use axum::{extract::State, http::StatusCode, response::Response};
use domain::{
    booking::Booking,
    saga::{Saga, SagaCommand, SagaStep},
    values::{BookingId, SagaId},
};
use platform::path::ValidPath;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::{AppState, Operators, Violations, WriteRequest, reason_text, written};
use crate::error::ApiError;

/// Why, for an action that names no step.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Why {
    #[schema(
        example = "the provider fixed its record",
        min_length = 1,
        max_length = 500
    )]
    reason: String,
}

/// Which step, and why.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct StepAndWhy {
    #[schema(schema_with = steps)]
    step: String,
    #[schema(
        example = "the director phoned the family",
        min_length = 1,
        max_length = 500
    )]
    reason: String,
}

fn steps() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::SchemaType::Type(
            utoipa::openapi::schema::Type::String,
        ))
        .enum_values(Some(SagaStep::ALL.map(SagaStep::as_str)))
        .examples(["notify_failure"])
        .build()
}

/// Answer to a decision about a saga.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SagaWritten {
    saga_id: Uuid,
    version: u64,
    consistency_token: Option<String>,
}

fn step(name: &str) -> Result<SagaStep, ApiError> {
    let mut violations = Violations::default();
    violations
        .check("step", SagaStep::parse(name))
        .ok_or_else(|| violations.into_error())
}

/// Decides `command` on the saga stream of booking `id`, which must exist.
async fn decide(
    state: &AppState,
    id: Uuid,
    request: &WriteRequest<impl Sized, Operators>,
    command: SagaCommand,
) -> Result<Response, ApiError> {
    if state.commands.store().read::<Booking>(id).version == 0 {
        return Err(ApiError::NotFound { field: "id", id });
    }
    let saga_id = *SagaId::for_booking(BookingId::from_uuid(id)).as_uuid();
    let executed = state
        .commands
        .execute::<Saga>(saga_id, request.if_match, command, &request.context)
        .await?;
    Ok(written(StatusCode::OK, "saga_id", &executed.appended))
}

/// Park a booking's saga: it acts no more until it is retried or resolved.
#[utoipa::path(
    post,
    path = "/sagas/{id}/park",
    tag = "sagas",
    request_body = StepAndWhy,
    params(
        ("id" = Uuid, Path, description = "The booking id"),
        ("If-Match" = Option<String>, Header, description = "The saga stream's version you read: 412 if it is not the current one"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Parked (or already parked at that step)", body = SagaWritten),
        (status = 404, description = "No such booking", body = platform::problem::Problem, content_type = "application/problem+json"),
        (status = 409, description = "Resolved by hand already, or changed concurrently", body = platform::problem::Problem, content_type = "application/problem+json"),
        (status = 412, description = "If-Match is not the current version", body = platform::problem::Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn park(
    State(state): State<AppState>,
    ValidPath(id): ValidPath<Uuid>,
    request: WriteRequest<StepAndWhy, Operators>,
) -> Result<Response, ApiError> {
    let command = SagaCommand::Park {
        booking_id: BookingId::from_uuid(id),
        step: step(&request.body.step)?,
        reason: reason_text(&request.body.reason)?,
    };
    decide(&state, id, &request, command).await
}

/// Ask a booking's saga to act now: unparked, its failed attempts forgotten, its step's clock
/// started again.
#[utoipa::path(
    post,
    path = "/sagas/{id}/retry",
    tag = "sagas",
    request_body = Why,
    params(
        ("id" = Uuid, Path, description = "The booking id"),
        ("If-Match" = Option<String>, Header, description = "The saga stream's version you read: 412 if it is not the current one"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Recorded", body = SagaWritten),
        (status = 404, description = "No such booking", body = platform::problem::Problem, content_type = "application/problem+json"),
        (status = 409, description = "Resolved by hand already, or changed concurrently", body = platform::problem::Problem, content_type = "application/problem+json"),
        (status = 412, description = "If-Match is not the current version", body = platform::problem::Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn retry(
    State(state): State<AppState>,
    ValidPath(id): ValidPath<Uuid>,
    request: WriteRequest<Why, Operators>,
) -> Result<Response, ApiError> {
    let command = SagaCommand::Retry {
        booking_id: BookingId::from_uuid(id),
        reason: reason_text(&request.body.reason)?,
    };
    decide(&state, id, &request, command).await
}

/// Count a step of a booking's saga as done without performing it (a letter, or a capture
/// lookup).
#[utoipa::path(
    post,
    path = "/sagas/{id}/skip",
    tag = "sagas",
    request_body = StepAndWhy,
    params(
        ("id" = Uuid, Path, description = "The booking id"),
        ("If-Match" = Option<String>, Header, description = "The saga stream's version you read: 412 if it is not the current one"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Recorded", body = SagaWritten),
        (status = 404, description = "No such booking", body = platform::problem::Problem, content_type = "application/problem+json"),
        (status = 409, description = "Resolved by hand already, or changed concurrently", body = platform::problem::Problem, content_type = "application/problem+json"),
        (status = 412, description = "If-Match is not the current version", body = platform::problem::Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn skip(
    State(state): State<AppState>,
    ValidPath(id): ValidPath<Uuid>,
    request: WriteRequest<StepAndWhy, Operators>,
) -> Result<Response, ApiError> {
    let command = SagaCommand::Skip {
        booking_id: BookingId::from_uuid(id),
        step: step(&request.body.step)?,
        reason: reason_text(&request.body.reason)?,
    };
    decide(&state, id, &request, command).await
}

/// Record that a booking was settled outside the system (for example refunded by hand): its
/// saga does nothing more, ever.
#[utoipa::path(
    post,
    path = "/sagas/{id}/resolve",
    tag = "sagas",
    request_body = Why,
    params(
        ("id" = Uuid, Path, description = "The booking id"),
        ("If-Match" = Option<String>, Header, description = "The saga stream's version you read: 412 if it is not the current one"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Resolved (or already so)", body = SagaWritten),
        (status = 404, description = "No such booking", body = platform::problem::Problem, content_type = "application/problem+json"),
        (status = 409, description = "Changed concurrently", body = platform::problem::Problem, content_type = "application/problem+json"),
        (status = 412, description = "If-Match is not the current version", body = platform::problem::Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn resolve(
    State(state): State<AppState>,
    ValidPath(id): ValidPath<Uuid>,
    request: WriteRequest<Why, Operators>,
) -> Result<Response, ApiError> {
    let command = SagaCommand::Resolve {
        booking_id: BookingId::from_uuid(id),
        reason: reason_text(&request.body.reason)?,
    };
    decide(&state, id, &request, command).await
}
