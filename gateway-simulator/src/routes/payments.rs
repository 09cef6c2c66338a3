//! The provider's API: captures, refunds, what happened to a key, and the ledger.

use std::time::Duration;

use axum::{
    Json,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode},
};
use chrono::{DateTime, Utc};
use platform::{json::ValidJson, problem::Problem};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::{AppState, idempotency_key, money};
use crate::{
    error::ApiError,
    ledger::{Amount, Answer, CaptureRow, LedgerView, Mode, Operation, PaymentView, Refusal},
};

/// `POST /captures`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CaptureBody {
    booking_id: Uuid,
    amount: Amount,
}

/// `POST /refunds`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RefundBody {
    capture_reference: String,
    amount: Amount,
}

/// The money moved.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Moved {
    /// `cap_…` for a capture, `ref_…` for a refund.
    reference: String,
    /// `captured` or `refunded`.
    status: &'static str,
}

/// `POST /captures`: take money for a booking, once per `Idempotency-Key`.
#[utoipa::path(
    post, path = "/captures", tag = "payments", request_body = CaptureBody,
    params(("Idempotency-Key" = String, Header, description = "The same for every attempt at this capture")),
    responses(
        (status = 201, description = "Captured (or the first answer to this key)", body = Moved),
        (status = 402, description = "Declined; the problem has a `reason`", body = Problem),
        (status = 409, description = "An earlier request with this key is still in progress (detached_capture mode)", body = Problem),
        (status = 422, description = "Invalid, the key was used for another request, or reject mode", body = Problem),
        (status = 500, description = "error_5xx mode; nothing recorded", body = Problem),
    )
)]
pub(crate) async fn capture(
    State(state): State<AppState>,
    headers: HeaderMap,
    ValidJson(body): ValidJson<CaptureBody>,
) -> Result<(StatusCode, Json<Moved>), ApiError> {
    let key = idempotency_key(&headers)?;
    let operation = Operation::Capture {
        booking_id: body.booking_id,
        amount: money("amount", &body.amount)?,
    };
    answer(&state, "capture", &key, operation).await
}

/// `POST /refunds`: give back (part of) a capture, once per `Idempotency-Key`.
#[utoipa::path(
    post, path = "/refunds", tag = "payments", request_body = RefundBody,
    params(("Idempotency-Key" = String, Header, description = "The same for every attempt at this refund")),
    responses(
        (status = 201, description = "Refunded (or the first answer to this key)", body = Moved),
        (status = 402, description = "Declined; the problem has a `reason`", body = Problem),
        (status = 404, description = "No capture has this reference", body = Problem),
        (status = 409, description = "An earlier request with this key is still in progress (detached_capture mode)", body = Problem),
        (status = 422, description = "Invalid, more than is left to refund, the key was used for another request, or reject mode", body = Problem),
        (status = 500, description = "error_5xx mode; nothing recorded", body = Problem),
    )
)]
pub(crate) async fn refund(
    State(state): State<AppState>,
    headers: HeaderMap,
    ValidJson(body): ValidJson<RefundBody>,
) -> Result<(StatusCode, Json<Moved>), ApiError> {
    let key = idempotency_key(&headers)?;
    let operation = Operation::Refund {
        capture_reference: body.capture_reference,
        amount: money("amount", &body.amount)?,
    };
    answer(&state, "refund", &key, operation).await
}

/// Answers a capture or refund as the behaviour in force says, and counts the outcome.
async fn answer(
    state: &AppState,
    operation_name: &'static str,
    key: &str,
    operation: Operation,
) -> Result<(StatusCode, Json<Moved>), ApiError> {
    let result = decide(state, key, operation).await;
    let outcome = match &result {
        Ok(Answer::Captured { .. }) => "captured",
        Ok(Answer::Refunded { .. }) => "refunded",
        Ok(Answer::Declined { .. }) => "declined",
        Err(ApiError::Simulated) => "error_5xx",
        Err(ApiError::Unavailable) => "hung",
        Err(_) => "refused",
    };
    metrics::counter!(
        "gateway_simulator_answers_total",
        "operation" => operation_name,
        "outcome" => outcome
    )
    .increment(1);
    match result? {
        Answer::Captured { reference } => Ok((
            StatusCode::CREATED,
            Json(Moved {
                reference,
                status: "captured",
            }),
        )),
        Answer::Refunded { reference } => Ok((
            StatusCode::CREATED,
            Json(Moved {
                reference,
                status: "refunded",
            }),
        )),
        Answer::Declined { reason } => Err(ApiError::Declined { reason }),
    }
}

async fn decide(state: &AppState, key: &str, operation: Operation) -> Result<Answer, ApiError> {
    let behaviour = {
        let mut sim = state.lock();
        // A replay gets the first answer at once, whatever the mode is now.
        if let Some(replayed) = sim.replay(key, &operation) {
            return Ok(replayed?);
        }
        let booking = sim.booking_of(&operation);
        sim.take_behaviour(booking)
    };
    let settings = &state.settings;
    let delay = behaviour
        .delay_ms
        .map_or(settings.default_delay, Duration::from_millis);
    match behaviour.mode {
        Mode::Approve => Ok(state.lock().decide(key, operation, None, Utc::now())?),
        Mode::Decline => {
            let reason = behaviour
                .decline_reason
                .unwrap_or_else(|| "card_declined".to_owned());
            Ok(state
                .lock()
                .decide(key, operation, Some(reason), Utc::now())?)
        }
        Mode::Slow => {
            state.pause(delay).await?;
            Ok(state.lock().decide(key, operation, None, Utc::now())?)
        }
        Mode::DetachedCapture => detached(state, key, operation, delay).await,
        Mode::Reject => Err(Refusal::Rejected.into()),
        Mode::Error5xx => Err(ApiError::Simulated),
        Mode::Timeout => {
            state.pause(settings.hang).await?;
            Err(ApiError::Unavailable)
        }
        Mode::CaptureThenTimeout => {
            let answer = state.lock().decide(key, operation, None, Utc::now())?;
            tracing::info!(key, "recorded; now hanging (capture_then_timeout)");
            state.pause(settings.hang).await?;
            Ok(answer)
        }
    }
}

/// The `detached_capture` mode: the work runs in a task of its own, which records the capture
/// `delay` later whether or not the client still waits (dropping this request's future, as a
/// client that gave up does, cancels nothing). Until then the key is in progress.
async fn detached(
    state: &AppState,
    key: &str,
    operation: Operation,
    delay: Duration,
) -> Result<Answer, ApiError> {
    state.lock().begin_detached(key);
    let (answer, answered) = tokio::sync::oneshot::channel();
    let (worker, key) = (state.clone(), key.to_owned());
    tokio::spawn(async move {
        let outcome = match worker.pause(delay).await {
            Ok(()) => {
                let outcome = worker.lock().finish_detached(&key, operation, Utc::now());
                tracing::info!(key, "detached request completed");
                outcome.map_err(ApiError::from)
            }
            Err(stopping) => {
                worker.lock().abandon_detached(&key);
                Err(stopping)
            }
        };
        // The client may be gone; the money moved all the same.
        let _ = answer.send(outcome);
    });
    answered.await.map_err(|_| ApiError::Unavailable)?
}

/// `GET /captures?since=`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct CapturesSince {
    /// Only captures made at or after this instant (RFC 3339); every capture when absent.
    since: Option<DateTime<Utc>>,
}

/// `GET /captures`: the captures made since an instant, oldest first, with what has been
/// refunded of each: the provider's ledger, which a reconciliation compares with its own books.
#[utoipa::path(
    get, path = "/captures", tag = "payments", params(CapturesSince),
    responses((status = 200, description = "The captures", body = [CaptureRow]))
)]
pub(crate) async fn captures(
    State(state): State<AppState>,
    Query(query): Query<CapturesSince>,
) -> Json<Vec<CaptureRow>> {
    let since = query.since.unwrap_or(DateTime::<Utc>::MIN_UTC);
    Json(state.lock().captures_since(since))
}

/// `GET /payments/{idempotency_key}`: what happened to a key. Always answers, whatever the mode:
/// it is how a client that timed out finds out whether money moved.
#[utoipa::path(
    get, path = "/payments/{idempotency_key}", tag = "payments",
    params(("idempotency_key" = String, Path)),
    responses(
        (status = 200, description = "What the key did", body = PaymentView),
        (status = 404, description = "Never answered under this key", body = Problem),
    )
)]
pub(crate) async fn lookup(
    State(state): State<AppState>,
    Path(key): Path<String>,
) -> Result<Json<PaymentView>, ApiError> {
    state
        .lock()
        .record(&key)
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("Nothing was ever answered under key {key:?}")))
}

/// `GET /ledger`: every capture and refund, and totals per currency, so tests can count money.
#[utoipa::path(
    get, path = "/ledger", tag = "payments",
    responses((status = 200, description = "The ledger", body = LedgerView))
)]
pub(crate) async fn ledger(State(state): State<AppState>) -> Json<LedgerView> {
    Json(state.lock().ledger())
}
