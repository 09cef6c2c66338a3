//! The query-api's one error type and its one mapping to HTTP.

use std::time::Duration;

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use platform::{
    auth::AuthRejection,
    problem::{FieldError, Problem},
};

/// Everything a query can answer other than success.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    /// 404: nothing with that id, or nothing this caller may see (a family asking for another
    /// family's booking gets the same answer, so the id's existence does not leak).
    #[error("not found")]
    NotFound,
    /// 422: query or path parameters that break a rule, each named with the rule.
    #[error("invalid parameters")]
    Invalid(Vec<FieldError>),
    /// 422: the `Consistency-Token` header is not a token.
    #[error("malformed consistency token")]
    MalformedToken,
    /// 422: the `Consistency-Token` names a position the log has not reached (or a topic that
    /// is not one of this deployment's): no write returned it, so no wait would end.
    #[error("consistency token beyond the end of the log")]
    TokenBeyondLog,
    /// 503: the read model did not reach the token's position in time.
    #[error("the read model has not caught up within {waited:?}")]
    NotCaughtUp { waited: Duration },
    /// 401/403.
    #[error(transparent)]
    Auth(#[from] AuthRejection),
    /// 500: a read-model row does not hold what the projector writes; the detail is logged.
    #[error("corrupt read model: {0}")]
    Corrupt(String),
    /// 503: this release's read-model version has no live build (not built yet, or dropped):
    /// nothing is answered from a half-built version or another shape.
    #[error("read-model version {} is not available", crate::read_model::VERSION)]
    ReadModelUnavailable,
    /// 503: Postgres failed; the detail is logged, not returned.
    #[error("database: {0}")]
    Database(sqlx::Error),
}

impl From<sqlx::Error> for ApiError {
    /// A table or schema of the read model that does not exist means the version's views do not
    /// (yet): its first build has not gone live.
    fn from(error: sqlx::Error) -> Self {
        match &error {
            sqlx::Error::Database(db) if is_missing_relation(db.code().as_deref()) => {
                Self::ReadModelUnavailable
            }
            _ => Self::Database(error),
        }
    }
}

/// 42P01 `undefined_table`, 3F000 `invalid_schema_name`.
pub(crate) fn is_missing_relation(code: Option<&str>) -> bool {
    matches!(code, Some("42P01" | "3F000"))
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            Self::NotFound => Problem::new(StatusCode::NOT_FOUND, "not-found", "Not found")
                .with_detail("No such resource, or not one you may see.")
                .into_response(),
            Self::Invalid(errors) => Problem::validation(errors).into_response(),
            Self::MalformedToken => Problem::validation(vec![FieldError::new(
                "Consistency-Token",
                "consistency_token.format",
                "send the consistency_token a command returned, unchanged",
            )])
            .into_response(),
            Self::TokenBeyondLog => Problem::validation(vec![FieldError::new(
                "Consistency-Token",
                "consistency_token.beyond_log",
                "names a position the log has not reached; send the token a command returned",
            )])
            .into_response(),
            Self::NotCaughtUp { waited } => {
                let mut response = Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not-caught-up",
                    "Read model behind",
                )
                .with_detail(format!(
                    "The read model has not applied your write within {} ms; retry shortly.",
                    waited.as_millis()
                ))
                .into_response();
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                response
            }
            Self::Auth(rejection) => rejection.into_response(),
            Self::Corrupt(detail) => {
                tracing::error!(%detail, "a read-model row does not decode");
                Problem::internal().into_response()
            }
            Self::ReadModelUnavailable => {
                let mut response = Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "read-model-unavailable",
                    "Read model not available",
                )
                .with_detail(format!(
                    "Read-model version {} is not built yet; retry shortly.",
                    crate::read_model::VERSION
                ))
                .into_response();
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
                response
            }
            Self::Database(error) => {
                tracing::error!(%error, "query failed in the database");
                Problem::unavailable()
                    .with_detail("The read store is unavailable. Retry shortly.")
                    .into_response()
            }
        }
    }
}
