//! A JSON body extractor whose every rejection is a problem naming the field and the rule.
//!
//! axum's own `Json` answers in plain text and does not say which field was wrong. Here:
//! a wrong media type is 415, a body over the limit 413, bytes that are not JSON 400, and JSON
//! that does not fit the request type (wrong type, unknown field, missing field) 422 with the
//! field's path.

use axum::{
    body::Bytes,
    extract::{FromRequest, Request},
    http::{HeaderMap, StatusCode, header},
};
use serde::de::DeserializeOwned;

use crate::problem::{FieldError, Problem};

/// A request body parsed as JSON into `T`.
#[derive(Debug, Clone)]
pub struct ValidJson<T>(pub T);

impl<S, T> FromRequest<S> for ValidJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        require_json(request.headers())?;
        let bytes = read_body(request, state).await?;
        parse(&bytes).map(ValidJson)
    }
}

/// Refuses a request whose `Content-Type` is not `application/json` (415).
pub fn require_json(headers: &HeaderMap) -> Result<(), Problem> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| {
            let essence = value.split(';').next().unwrap_or_default().trim();
            essence.eq_ignore_ascii_case("application/json")
        });
    if is_json {
        Ok(())
    } else {
        Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported media type",
        )
        .with_detail("Send the body as Content-Type: application/json."))
    }
}

/// Reads the whole body within the router's body limit (413 beyond it).
pub async fn read_body<S: Send + Sync>(request: Request, state: &S) -> Result<Bytes, Problem> {
    Bytes::from_request(request, state)
        .await
        .map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                Problem::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body-too-large",
                    "Body too large",
                )
                .with_detail(rejection.body_text())
            } else {
                Problem::new(rejection.status(), "unreadable-body", "Unreadable body")
                    .with_detail(rejection.body_text())
            }
        })
}

/// Parses bytes into `T`, with the problem a client should get if that fails.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    from_value(parse_value(bytes)?)
}

/// Parses bytes as JSON (400 if they are not).
pub fn parse_value(bytes: &[u8]) -> Result<serde_json::Value, Problem> {
    serde_json::from_slice(bytes).map_err(|error| {
        Problem::new(StatusCode::BAD_REQUEST, "malformed-json", "Malformed JSON")
            .with_detail(format!("The body is not valid JSON: {error}"))
    })
}

/// Deserialises a JSON value into `T` (422 naming the field if it does not fit). A request body
/// is a JSON object: serde would also read a struct from an array of its fields in order (`[]`
/// for one whose fields all have defaults, found by compose/fuzz on `POST /bookings/{id}/cancel`),
/// which no client means, so anything else is refused before serde sees it.
pub fn from_value<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, Problem> {
    if !value.is_object() {
        return Err(Problem::validation(vec![FieldError::new(
            "",
            "type",
            "the body must be a JSON object",
        )]));
    }
    serde_path_to_error::deserialize(value).map_err(|error| {
        let parent = error.path().to_string();
        let message = error.inner().to_string();
        Problem::validation(vec![field_error(&parent, &message)])
    })
}

/// Turns serde's message into a field path and a rule code. serde reports unknown and missing
/// fields at the parent's path with the field's name in backticks, so the name is appended.
fn field_error(parent: &str, message: &str) -> FieldError {
    let named = message.split('`').nth(1).unwrap_or_default();
    // serde_path_to_error reports an unknown field at its own path, a missing one at its
    // parent's: append the name only when the path does not already end with it.
    let join = |name: &str| match parent {
        "." | "" => name.to_owned(),
        parent if parent == name || parent.ends_with(&format!(".{name}")) => parent.to_owned(),
        parent => format!("{parent}.{name}"),
    };
    let field_path = if parent == "." {
        String::new()
    } else {
        parent.to_owned()
    };
    if message.starts_with("unknown field") {
        FieldError::new(
            join(named),
            "unknown_field",
            format!("`{named}` is not a field of this request"),
        )
    } else if message.starts_with("missing field") {
        FieldError::new(join(named), "required", format!("`{named}` is required"))
    } else if message.starts_with("invalid type") {
        FieldError::new(field_path, "type", message)
    } else {
        FieldError::new(field_path, "format", message)
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        slot: Inner,
        amount_minor: i64,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        start: String,
    }

    fn rejection(body: &str) -> Problem {
        parse::<Outer>(body.as_bytes()).expect_err("must be rejected")
    }

    #[test]
    fn malformed_json_is_a_bad_request() {
        assert_eq!(rejection("{\"slot\":").status, 400);
    }

    #[test]
    fn a_wrong_type_names_the_field() {
        let problem = rejection(r#"{"slot":{"start":"x"},"amount_minor":12.5}"#);
        assert_eq!(problem.status, 422);
        assert_eq!(problem.errors[0].field, "amount_minor");
        assert_eq!(problem.errors[0].rule, "type");
    }

    #[test]
    fn an_unknown_nested_field_names_its_path() {
        let problem = rejection(r#"{"slot":{"start":"x","colour":1},"amount_minor":1}"#);
        assert_eq!(problem.errors[0].field, "slot.colour");
        assert_eq!(problem.errors[0].rule, "unknown_field");
    }

    #[test]
    fn a_body_that_is_not_an_object_is_refused_even_when_serde_would_read_it() {
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct AllOptional {
            #[serde(default)]
            reason: Option<String>,
        }
        for body in ["[]", r#"["x"]"#, "null", "3"] {
            let problem = parse::<AllOptional>(body.as_bytes()).expect_err(body);
            assert_eq!(problem.status, 422, "{body}");
            assert_eq!(problem.errors[0].field, "", "{body}");
            assert_eq!(problem.errors[0].rule, "type", "{body}");
        }
        assert!(parse::<AllOptional>(b"{}").is_ok());
    }

    #[test]
    fn a_missing_field_is_required() {
        let problem = rejection(r#"{"slot":{"start":"x"}}"#);
        assert_eq!(problem.errors[0].field, "amount_minor");
        assert_eq!(problem.errors[0].rule, "required");
    }
}
