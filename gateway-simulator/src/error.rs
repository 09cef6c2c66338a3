//! The simulator's one error type and its one mapping to problem+json.

use axum::{
    Json,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use platform::problem::{FieldError, PROBLEM_JSON, Problem};
use serde::Serialize;

use crate::ledger::Refusal;

/// Everything a simulator route can answer other than success.
#[derive(Debug)]
pub(crate) enum ApiError {
    /// 402: the simulated provider declined; the body carries `reason`.
    Declined { reason: String },
    /// 404, 409, 422: the request was refused (key reused, a request with the key still in
    /// progress, unknown capture, refund too large, the `reject` mode).
    Refused(Refusal),
    /// 404: nothing known under this key or id.
    NotFound(String),
    /// 500: the `error_5xx` mode.
    Simulated,
    /// 503: a `timeout` hang ended (or the simulator is shutting down): nothing was recorded
    /// by this request.
    Unavailable,
    /// 4xx already shaped (bad JSON, a missing header, a bad field).
    Problem(Problem),
}

impl From<Problem> for ApiError {
    fn from(problem: Problem) -> Self {
        Self::Problem(problem)
    }
}

impl From<Refusal> for ApiError {
    fn from(refusal: Refusal) -> Self {
        Self::Refused(refusal)
    }
}

/// A problem with the decline's reason as an extension member.
#[derive(Serialize)]
struct DeclinedProblem {
    #[serde(flatten)]
    problem: Problem,
    reason: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let problem = match self {
            Self::Declined { reason } => {
                let problem = Problem::new(
                    StatusCode::PAYMENT_REQUIRED,
                    "payment-declined",
                    "Payment declined",
                )
                .with_detail(format!("The payment was declined: {reason}"));
                let mut response = (
                    StatusCode::PAYMENT_REQUIRED,
                    Json(DeclinedProblem { problem, reason }),
                )
                    .into_response();
                response
                    .headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
                return response;
            }
            Self::Refused(Refusal::KeyReused) => Problem::validation(vec![FieldError::new(
                "Idempotency-Key",
                "idempotency_key.reused",
                "this key was used before for a different request",
            )]),
            Self::Refused(Refusal::UnknownCapture) => {
                Problem::new(StatusCode::NOT_FOUND, "not-found", "Not found")
                    .with_errors(vec![FieldError::new(
                        "capture_reference",
                        "exists",
                        "no capture has this reference",
                    )])
                    .with_detail("capture_reference: no capture has this reference")
            }
            Self::Refused(Refusal::CurrencyMismatch) => Problem::validation(vec![FieldError::new(
                "amount.currency",
                "refund.same_currency",
                "a refund is in the capture's currency",
            )]),
            Self::Refused(Refusal::ExceedsCapture { refundable_minor }) => {
                Problem::validation(vec![FieldError::new(
                    "amount.amount_minor",
                    "refund.within_capture",
                    format!("at most {refundable_minor} minor units are left to refund"),
                )])
            }
            Self::Refused(Refusal::InProgress) => Problem::new(
                StatusCode::CONFLICT,
                "idempotency-in-progress",
                "A request with this key is in progress",
            )
            .with_detail("An earlier request with this Idempotency-Key is still being processed: ask again later, or look the key up once it has finished."),
            Self::Refused(Refusal::Rejected) => Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "request-rejected",
                "The provider rejected the request",
            )
            .with_detail("The simulator is in reject mode: nothing was recorded, and this request will never succeed."),
            Self::NotFound(what) => {
                Problem::new(StatusCode::NOT_FOUND, "not-found", "Not found").with_detail(what)
            }
            Self::Simulated => Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "simulated-failure",
                "Simulated failure",
            )
            .with_detail("The simulator is in error_5xx mode. Nothing was recorded."),
            Self::Unavailable => Problem::unavailable(),
            Self::Problem(problem) => problem,
        };
        problem.into_response()
    }
}
