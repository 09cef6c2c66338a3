//! The runner's HTTP surface beside `/health` and `/metrics`: `/ready` and the ops view of
//! sagas (`ops`, `director` and `system` tokens).

use std::{sync::Arc, time::Duration};

use axum::{
    Json, Router,
    extract::{FromRef, Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use payment_gateway::{BreakingGateway, HttpGateway};
use platform::{
    auth::{AuthRejection, Caller, TokenKeys},
    http::{ReadyCheck, ReadyReport, probe},
    problem::{FieldError, Problem},
};
use schemas::Role;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::store::{self, Filter, SagaView};

/// What the handlers reach.
#[derive(Debug, Clone)]
pub(crate) struct AppState {
    pub(crate) pool: PgPool,
    pub(crate) producer: event_log::EventProducer,
    pub(crate) keys: Arc<TokenKeys>,
    pub(crate) gateway: Arc<BreakingGateway<HttpGateway>>,
}

impl FromRef<AppState> for Arc<TokenKeys> {
    fn from_ref(state: &AppState) -> Self {
        state.keys.clone()
    }
}

/// Every route.
pub(crate) fn router(state: AppState) -> Router {
    Router::new()
        .route("/ready", get(ready))
        .route("/sagas", get(list))
        .route("/sagas/{booking_id}", get(one))
        .with_state(state)
}

/// The runner's one error type.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    /// 404: no saga for that booking.
    #[error("not found")]
    NotFound,
    /// 422: a query parameter breaks a rule.
    #[error("invalid parameters")]
    Invalid(Vec<FieldError>),
    /// 401/403.
    #[error(transparent)]
    Auth(#[from] AuthRejection),
    /// 503: PostgreSQL failed; the detail is logged.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            Self::NotFound => Problem::new(StatusCode::NOT_FOUND, "not-found", "Not found")
                .with_detail("No saga for that booking.")
                .into_response(),
            Self::Invalid(errors) => Problem::validation(errors).into_response(),
            Self::Auth(rejection) => rejection.into_response(),
            Self::Database(error) => {
                tracing::error!(%error, "ops view query failed");
                Problem::unavailable().into_response()
            }
        }
    }
}

const OPS_ROLES: &[Role] = &[Role::Ops, Role::Director, Role::System];

/// `GET /sagas` parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListParams {
    /// `in_flight` (default), `stuck`, `compensated`, `done` or `all`.
    filter: Option<Filter>,
    /// At most this many (1-1000, default 100).
    limit: Option<i64>,
}

/// A page of sagas.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SagaList {
    sagas: Vec<SagaView>,
    /// The payment gateway's circuit: `closed`, `open` or `half_open`.
    gateway_circuit: String,
}

/// Sagas in flight, stuck (past their step's deadline), compensated or done.
#[utoipa::path(get, path = "/sagas", params(ListParams), security(("bearer" = [])),
    responses((status = 200, body = SagaList),
              (status = 401, body = Problem, content_type = "application/problem+json"),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(params): Query<ListParams>,
) -> Result<Json<SagaList>, ApiError> {
    caller.require(OPS_ROLES)?;
    let limit = params.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::Invalid(vec![FieldError::new(
            "limit",
            "limit.range",
            "between 1 and 1000",
        )]));
    }
    let sagas = store::list(
        &state.pool,
        params.filter.unwrap_or(Filter::InFlight),
        limit,
    )
    .await?;
    Ok(Json(SagaList {
        sagas,
        gateway_circuit: state.gateway.state().as_str().to_owned(),
    }))
}

/// One booking's saga, with its facts and the steps it performed.
#[utoipa::path(get, path = "/sagas/{booking_id}", security(("bearer" = [])),
    params(("booking_id" = Uuid, Path, description = "The booking id")),
    responses((status = 200, body = SagaView),
              (status = 401, body = Problem, content_type = "application/problem+json"),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn one(
    State(state): State<AppState>,
    caller: Caller,
    Path(booking_id): Path<Uuid>,
) -> Result<Json<SagaView>, ApiError> {
    caller.require(OPS_ROLES)?;
    store::one(&state.pool, booking_id)
        .await?
        .map(Json)
        .ok_or(ApiError::NotFound)
}

/// `GET /ready`: PostgreSQL and the broker answer. (The gateway and SMTP are not checked: the
/// saga is built to ride out their outages, and an unready runner would not help.)
pub(crate) async fn ready(State(state): State<AppState>) -> ReadyReport {
    let deadline = Duration::from_secs(2);
    let postgres = probe(deadline, async {
        sqlx::query("SELECT 1")
            .execute(&state.pool)
            .await
            .map(|_| ())
    })
    .await;
    let kafka = probe(deadline, state.producer.ping()).await;
    ReadyReport::new(vec![
        ReadyCheck::from_result("postgres", postgres),
        ReadyCheck::from_result("kafka", kafka),
    ])
}
