//! A path-parameter extractor whose rejection is a problem naming the parameter.
//!
//! axum's own `Path` answers a malformed parameter (`/bookings/not-a-uuid`) with a plain-text
//! 400 that no OpenAPI document of ours describes. Here it is a 422 problem with the parameter's
//! name, like every other invalid input.

use axum::{
    extract::{
        FromRequestParts, Path,
        path::{ErrorKind, FailedToDeserializePathParams},
        rejection::PathRejection,
    },
    http::request::Parts,
};
use serde::de::DeserializeOwned;

use crate::problem::{FieldError, Problem};

/// Path parameters deserialised into `T` (a single value, a tuple, or a struct).
#[derive(Debug, Clone, Copy)]
pub struct ValidPath<T>(pub T);

impl<S, T> FromRequestParts<S> for ValidPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(Self(value)),
            Err(PathRejection::FailedToDeserializePathParams(error)) => Err(invalid(&error)),
            Err(rejection) => {
                // No parameters where the handler expects some: the route table is wrong.
                tracing::error!(%rejection, "path parameters missing for a handler that takes them");
                Err(Problem::internal())
            }
        }
    }
}

/// 422 naming the parameter that does not parse.
fn invalid(error: &FailedToDeserializePathParams) -> Problem {
    let (field, message) = match error.kind() {
        ErrorKind::ParseErrorAtKey {
            key,
            value,
            expected_type,
        } => (
            key.clone(),
            format!("{value:?} is not a valid {expected_type}"),
        ),
        ErrorKind::DeserializeError {
            key,
            value,
            message,
        } => (key.clone(), format!("{value:?} is not valid: {message}")),
        ErrorKind::InvalidUtf8InPathParam { key } => {
            (key.clone(), "is not valid UTF-8 once decoded".to_owned())
        }
        _ => ("path".to_owned(), error.body_text()),
    };
    Problem::validation(vec![FieldError::new(field, "format", message)])
}

#[cfg(test)]
mod tests {
    use axum::{Router, body::Body, http::Request, routing::get};
    use tower::ServiceExt;
    use uuid::Uuid;

    use super::*;

    async fn answer(uri: &str) -> (u16, String, serde_json::Value) {
        let router = Router::new()
            .route(
                "/things/{id}",
                get(|ValidPath(id): ValidPath<Uuid>| async move { id.to_string() }),
            )
            .route(
                "/things/{id}/parts/{part_id}",
                get(
                    |ValidPath((id, part)): ValidPath<(Uuid, Uuid)>| async move {
                        format!("{id}/{part}")
                    },
                ),
            );
        let response = router
            .oneshot(Request::get(uri).body(Body::empty()).expect("a request"))
            .await
            .expect("the router answers");
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .expect("a body");
        let body = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        (status, content_type, body)
    }

    #[tokio::test]
    async fn a_parameter_that_is_not_a_uuid_is_a_problem_naming_it() {
        let (status, content_type, body) = answer("/things/not-a-uuid").await;
        assert_eq!(
            (status, content_type.as_str()),
            (422, "application/problem+json")
        );
        assert_eq!(body["errors"][0]["field"], "id");
        assert_eq!(body["errors"][0]["rule"], "format");
    }

    #[tokio::test]
    async fn the_second_of_two_parameters_is_named_too() {
        let id = Uuid::new_v4();
        let (status, _, body) = answer(&format!("/things/{id}/parts/%C3%82%C2%BC")).await;
        assert_eq!(status, 422);
        assert_eq!(body["errors"][0]["field"], "part_id");
    }

    #[tokio::test]
    async fn valid_parameters_reach_the_handler() {
        let id = Uuid::new_v4();
        let (status, _, _) = answer(&format!("/things/{id}")).await;
        assert_eq!(status, 200);
    }
}
