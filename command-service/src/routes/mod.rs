//! One module per route group. Each turns HTTP DTOs into domain commands at the edge.

pub(crate) mod bookings;
pub(crate) mod facilities;
pub(crate) mod ops;

use axum::http::{HeaderMap, HeaderValue};
use domain::ValueError;
use platform::problem::FieldError;
use schemas::ConsistencyToken;

use crate::{commands::Appended, error::ApiError};

/// The header that carries a command's consistency token.
pub(crate) const CONSISTENCY_TOKEN: &str = "consistency-token";

/// Collects every field violation of a request before answering, so a client learns all of
/// them at once.
#[derive(Debug, Default)]
pub(crate) struct Violations(Vec<FieldError>);

impl Violations {
    /// Keeps the value, or records why `field` is invalid.
    pub(crate) fn check<T>(
        &mut self,
        field: impl Into<String>,
        parsed: Result<T, ValueError>,
    ) -> Option<T> {
        match parsed {
            Ok(value) => Some(value),
            Err(error) => {
                self.0
                    .push(FieldError::new(field, error.rule, error.message));
                None
            }
        }
    }

    /// Records a violation found without a value object.
    pub(crate) fn add(&mut self, field: impl Into<String>, rule: &str, message: impl Into<String>) {
        self.0.push(FieldError::new(field, rule, message));
    }

    /// `Ok` when nothing was recorded.
    pub(crate) fn finish(self) -> Result<(), ApiError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ApiError::Invalid(self.0))
        }
    }
}

/// Parses a string into one of a domain enum's `snake_case` variants.
pub(crate) fn parse_variant<T: serde::de::DeserializeOwned>(
    value: &str,
    rule: &'static str,
    allowed: &str,
) -> Result<T, ValueError> {
    serde_json::from_value(serde_json::Value::String(value.to_owned())).map_err(|_| ValueError {
        rule,
        message: format!("must be one of: {allowed}"),
    })
}

/// The consistency-token header and body field of a command's answer.
pub(crate) fn token_of(appended: &Appended) -> (HeaderMap, Option<String>) {
    let token = appended
        .position
        .clone()
        .map(|position| ConsistencyToken::from(position).to_string());
    let mut headers = HeaderMap::new();
    if let Some(value) = token
        .as_deref()
        .and_then(|token| HeaderValue::from_str(token).ok())
    {
        headers.insert(CONSISTENCY_TOKEN, value);
    }
    (headers, token)
}
