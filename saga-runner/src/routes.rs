//! The runner's HTTP surface beside `/health` and `/metrics`: `/ready`, the ops view of sagas
//! and of the consumer's parked records (`ops` and `system` tokens; not directors, whose homes
//! the runner does not know: docs/identity.md, "Tenancy"), operators' actions on a saga (`ops`
//! tokens), and the payment reconciliation.
//!
//! An action (park, retry, skip, resolve) is checked here against what only the runner knows
//! (the saga exists, is not done, is on the step named), then forwarded to the
//! command-service with the operator's **own** token, which appends it to the saga's stream:
//! the event's actor is the operator, and the runner obeys it when its consumer reads it back
//! (docs/saga.md, "Operator actions").

use std::{sync::Arc, time::Duration};

use axum::{
    Json, Router,
    extract::{FromRef, Path, Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use payment_gateway::{BreakingGateway, HttpGateway};
use platform::{
    auth::{AuthRejection, Caller, Verifier},
    http::{ReadyCheck, ReadyReport, probe},
    json::ValidJson,
    problem::{FieldError, Problem},
};
use schemas::Role;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::{
    reconcile::{Reconciler, Report},
    store::{self, Filter, SagaView},
};

/// What the handlers reach.
#[derive(Debug, Clone)]
pub(crate) struct AppState {
    pub(crate) pool: PgPool,
    pub(crate) producer: event_log::EventProducer,
    pub(crate) verifier: Arc<Verifier>,
    pub(crate) gateway: Arc<BreakingGateway<HttpGateway>>,
    pub(crate) reconciler: Reconciler,
    pub(crate) commands: Forwarder,
}

/// Forwards an operator's action to the command-service with the operator's own token.
#[derive(Debug, Clone)]
pub(crate) struct Forwarder {
    http: reqwest::Client,
    base_url: String,
}

impl Forwarder {
    pub(crate) fn new(base_url: &str, timeout: Duration) -> anyhow::Result<Self> {
        Ok(Self {
            http: reqwest::Client::builder().timeout(timeout).build()?,
            base_url: base_url.trim_end_matches('/').to_owned(),
        })
    }
}

impl FromRef<AppState> for Arc<Verifier> {
    fn from_ref(state: &AppState) -> Self {
        state.verifier.clone()
    }
}

/// Every route.
pub(crate) fn router(state: AppState) -> Router {
    Router::new()
        .route("/ready", get(ready))
        .route("/sagas", get(list))
        .route("/sagas/{booking_id}", get(one))
        .route("/parked-records", get(parked_records))
        .route("/sagas/{booking_id}/park", post(park))
        .route("/sagas/{booking_id}/retry", post(retry))
        .route("/sagas/{booking_id}/skip", post(skip))
        .route("/sagas/{booking_id}/resolve", post(resolve))
        .route(
            "/reconciliation",
            get(last_reconciliation).post(reconcile_now),
        )
        .with_state(state)
}

/// The runner's one error type.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    /// 404: no saga for that booking.
    #[error("not found")]
    NotFound,
    /// 422: a query parameter or a body field breaks a rule.
    #[error("invalid parameters")]
    Invalid(Vec<FieldError>),
    /// 409: the action does not fit the saga as it stands (done, or on another step).
    #[error("{0}")]
    Conflict(String),
    /// 503: the command-service or the gateway could not be reached; the detail is logged.
    #[error("upstream: {0}")]
    Upstream(String),
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
            Self::Conflict(detail) => Problem::new(
                StatusCode::CONFLICT,
                "conflict",
                "Not allowed in the saga's current state",
            )
            .with_detail(detail)
            .into_response(),
            Self::Upstream(error) => {
                tracing::error!(%error, "an operator's action could not be passed on");
                Problem::unavailable().into_response()
            }
            Self::Auth(rejection) => rejection.into_response(),
            Self::Database(error) => {
                tracing::error!(%error, "ops view query failed");
                Problem::unavailable().into_response()
            }
        }
    }
}

/// Who may read the saga console: operators and services. Not directors: the saga runner's
/// tables know no homes, so a director would see every home's sagas (docs/identity.md,
/// "Tenancy"); a director follows a booking's saga in the query-api's booking view
/// (`saga_progress`), which is scoped to their homes.
const OPS_ROLES: &[Role] = &[Role::Ops, Role::System];

/// Who may act on a saga or run a reconciliation: operators.
const OPERATORS: &[Role] = &[Role::Ops];

/// `GET /sagas` parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListParams {
    /// `in_flight` (default), `stuck`, `parked`, `compensated`, `done` or `all`.
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

/// The aggregates whose records the consumer keeps parked.
#[derive(Debug, Serialize)]
pub(crate) struct ParkedList {
    parked: Vec<batch_consumer::parking::ParkedAggregate>,
}

/// The aggregates whose records the saga's consumer keeps parked (an event type or version
/// this release does not know, or a gap), longest parked first (docs/evolution.md). Not the
/// sagas an operator or a failed step parked: those are `GET /sagas?filter=parked`.
#[utoipa::path(get, path = "/parked-records", security(("bearer" = [])),
    responses((status = 200, description = "`{\"parked\": [{aggregate_type, aggregate_id, sequence, event_type, event_version, reason, records, since}]}`"),
              (status = 401, body = Problem, content_type = "application/problem+json"),
              (status = 403, body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn parked_records(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<ParkedList>, ApiError> {
    caller.require(OPS_ROLES)?;
    Ok(Json(ParkedList {
        parked: crate::parking::parked(&state.pool).await?,
    }))
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
    // Always ok: the consumer takes every other aggregate's records (docs/evolution.md).
    let parked = match tokio::time::timeout(deadline, crate::parking::summary(&state.pool)).await {
        Ok(Ok(detail)) => detail,
        Ok(Err(error)) => Some(format!("not counted: {error}")),
        Err(_) => Some(format!("not counted within {} ms", deadline.as_millis())),
    };
    ReadyReport::new(vec![
        ReadyCheck::from_result("postgres", postgres),
        ReadyCheck::from_result("kafka", kafka),
        ReadyCheck {
            name: "parked",
            ok: true,
            detail: parked,
        },
    ])
}

/// An operator's action: why (always), and for park and skip which step (park: the step the
/// saga is on when omitted).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Action {
    #[schema(min_length = 1, max_length = 500)]
    reason: String,
    step: Option<String>,
}

/// Which action, for the checks and the command-service's path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Park,
    Retry,
    Skip,
    Resolve,
}

impl Kind {
    fn path(self) -> &'static str {
        match self {
            Self::Park => "park",
            Self::Retry => "retry",
            Self::Skip => "skip",
            Self::Resolve => "resolve",
        }
    }
}

/// Park a saga: it acts no more until it is retried or resolved.
#[utoipa::path(post, path = "/sagas/{booking_id}/park", request_body = Action, security(("bearer" = [])),
    params(("booking_id" = Uuid, Path, description = "The booking id")),
    responses((status = 200, description = "Recorded in the saga's stream"), (status = 404, body = Problem), (status = 409, body = Problem)))]
pub(crate) async fn park(
    state: State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(booking_id): Path<Uuid>,
    ValidJson(action): ValidJson<Action>,
) -> Result<Response, ApiError> {
    act(&state, &caller, &headers, booking_id, Kind::Park, action).await
}

/// Retry a saga now: unparked, failed attempts forgotten, the step's clock started again.
#[utoipa::path(post, path = "/sagas/{booking_id}/retry", request_body = Action, security(("bearer" = [])),
    params(("booking_id" = Uuid, Path, description = "The booking id")),
    responses((status = 200, description = "Recorded in the saga's stream"), (status = 404, body = Problem), (status = 409, body = Problem)))]
pub(crate) async fn retry(
    state: State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(booking_id): Path<Uuid>,
    ValidJson(action): ValidJson<Action>,
) -> Result<Response, ApiError> {
    act(&state, &caller, &headers, booking_id, Kind::Retry, action).await
}

/// Skip the step the saga is on (a letter, or a capture lookup), with a reason.
#[utoipa::path(post, path = "/sagas/{booking_id}/skip", request_body = Action, security(("bearer" = [])),
    params(("booking_id" = Uuid, Path, description = "The booking id")),
    responses((status = 200, description = "Recorded in the saga's stream"), (status = 404, body = Problem), (status = 409, body = Problem), (status = 422, body = Problem)))]
pub(crate) async fn skip(
    state: State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(booking_id): Path<Uuid>,
    ValidJson(action): ValidJson<Action>,
) -> Result<Response, ApiError> {
    act(&state, &caller, &headers, booking_id, Kind::Skip, action).await
}

/// Resolve a saga by hand (the booking was settled outside the system): it does nothing more.
#[utoipa::path(post, path = "/sagas/{booking_id}/resolve", request_body = Action, security(("bearer" = [])),
    params(("booking_id" = Uuid, Path, description = "The booking id")),
    responses((status = 200, description = "Recorded in the saga's stream"), (status = 404, body = Problem), (status = 409, body = Problem)))]
pub(crate) async fn resolve(
    state: State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(booking_id): Path<Uuid>,
    ValidJson(action): ValidJson<Action>,
) -> Result<Response, ApiError> {
    act(&state, &caller, &headers, booking_id, Kind::Resolve, action).await
}

/// Checks an action against the saga as the runner knows it, then forwards it.
async fn act(
    state: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    booking_id: Uuid,
    kind: Kind,
    action: Action,
) -> Result<Response, ApiError> {
    caller.require(OPERATORS)?;
    let saga = store::one(&state.pool, booking_id)
        .await?
        .ok_or(ApiError::NotFound)?;
    let current = saga.step.clone();
    let step = match kind {
        // Resolving explains a finished saga too (a reconciliation's discrepancy).
        Kind::Resolve => None,
        _ if saga.done => {
            return Err(ApiError::Conflict(format!(
                "the saga of {booking_id} is done: nothing to {}",
                kind.path()
            )));
        }
        Kind::Retry => None,
        Kind::Park => Some(action.step.clone().or(current).ok_or_else(|| {
            ApiError::Conflict(
                "the saga is on no step (it waits for an event): name one".to_owned(),
            )
        })?),
        Kind::Skip => {
            let step = action.step.clone().ok_or_else(|| {
                ApiError::Invalid(vec![FieldError::new(
                    "step",
                    "required",
                    "name the step to skip (the one the saga is on)",
                )])
            })?;
            if current.as_deref() != Some(step.as_str()) {
                return Err(ApiError::Conflict(format!(
                    "the saga is on step {}, not {step}: only the step it is on can be skipped",
                    current.as_deref().unwrap_or("(none)")
                )));
            }
            Some(step)
        }
    };
    let mut body = serde_json::json!({ "reason": action.reason });
    if let Some(step) = step {
        body["step"] = serde_json::Value::String(step);
    }
    let mut request = state
        .commands
        .http
        .post(format!(
            "{}/sagas/{booking_id}/{}",
            state.commands.base_url,
            kind.path()
        ))
        .json(&body);
    for name in [
        header::AUTHORIZATION.as_str(),
        "idempotency-key",
        "if-match",
    ] {
        if let Some(value) = headers.get(name) {
            request = request.header(name, value.clone());
        }
    }
    if let Some(correlation) = saga
        .facts
        .as_ref()
        .and_then(|facts| facts.0.get("correlation_id"))
        .and_then(serde_json::Value::as_str)
    {
        request = request.header(platform::trace::CORRELATION_ID, correlation);
    }
    let answer = request
        .send()
        .await
        .map_err(|error| ApiError::Upstream(error.to_string()))?;
    let status =
        StatusCode::from_u16(answer.status().as_u16()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let content_type = answer.headers().get(header::CONTENT_TYPE).cloned();
    let bytes = answer
        .bytes()
        .await
        .map_err(|error| ApiError::Upstream(error.to_string()))?;
    tracing::info!(%booking_id, action = kind.path(), operator = %caller.subject, %status, "an operator acted on a saga");
    let mut response = (status, bytes).into_response();
    if let Some(content_type) = content_type {
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, content_type);
    }
    Ok(response)
}

/// The last reconciliation of the gateway's captures with the log (scheduled, or run on demand).
#[utoipa::path(get, path = "/reconciliation", security(("bearer" = [])),
    responses((status = 200, body = Report), (status = 404, body = Problem)))]
pub(crate) async fn last_reconciliation(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Report>, ApiError> {
    caller.require(OPS_ROLES)?;
    crate::reconcile::last_report(&state.pool)
        .await
        .map_err(|error| ApiError::Upstream(error.to_string()))?
        .map(Json)
        .ok_or(ApiError::NotFound)
}

/// Reconcile the gateway's captures with the log now.
#[utoipa::path(post, path = "/reconciliation", security(("bearer" = [])),
    responses((status = 200, body = Report), (status = 503, body = Problem)))]
pub(crate) async fn reconcile_now(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Report>, ApiError> {
    caller.require(OPERATORS)?;
    state
        .reconciler
        .run_now()
        .await
        .map(Json)
        .map_err(|error| ApiError::Upstream(error.to_string()))
}
