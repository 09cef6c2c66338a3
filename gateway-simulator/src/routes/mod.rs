//! The routes and the state they share: one module per route group, and [`router`]. DTOs become
//! the ledger's types here.

pub(crate) mod control;
pub(crate) mod ops;
pub(crate) mod payments;

use std::{
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use axum::{
    Router,
    http::HeaderMap,
    routing::{get, post, put},
};
use domain::values::{Currency, Money};
use platform::{
    problem::{FieldError, Problem},
    shutdown::CancellationToken,
};

use crate::{
    error::ApiError,
    ledger::{Amount, Simulator},
    settings::SimulatorSettings,
};

/// The simulator's memory (keys seen, captures, refunds, behaviours), shared by every
/// `Application` built with it. Cloning shares; `default()` is an empty ledger approving all.
#[derive(Debug, Clone, Default)]
pub struct SimulatorState(Arc<Mutex<Simulator>>);

/// What every handler can reach.
#[derive(Debug, Clone)]
pub(crate) struct AppState {
    simulator: SimulatorState,
    pub(crate) settings: Arc<SimulatorSettings>,
    shutdown: CancellationToken,
}

impl AppState {
    pub(crate) fn new(
        simulator: SimulatorState,
        settings: SimulatorSettings,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            simulator,
            settings: Arc::new(settings),
            shutdown,
        }
    }

    /// The simulator's memory. Never held across an await.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Simulator> {
        // Every change to the simulator is complete before any code that could panic runs, so
        // a poisoned lock still guards a consistent state.
        self.simulator
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits `duration`, or answers 503 at once if the simulator is shutting down, so that a
    /// hanging request never holds up shutdown.
    pub(crate) async fn pause(&self, duration: Duration) -> Result<(), ApiError> {
        tokio::select! {
            () = tokio::time::sleep(duration) => Ok(()),
            () = self.shutdown.cancelled() => Err(ApiError::Unavailable),
        }
    }
}

/// Every route.
pub(crate) fn router(state: AppState) -> Router {
    Router::new()
        .route("/captures", post(payments::capture).get(payments::captures))
        .route("/refunds", post(payments::refund))
        .route("/payments/{idempotency_key}", get(payments::lookup))
        .route("/ledger", get(payments::ledger))
        .route(
            "/control",
            get(control::show)
                .put(control::set_global)
                .delete(control::reset),
        )
        .route(
            "/control/bookings/{booking_id}",
            put(control::set_booking).delete(control::clear_booking),
        )
        .route("/ready", get(ops::ready))
        .route("/openapi.json", get(ops::openapi))
        .with_state(state)
}

/// A positive amount of money, or the violations found at `field`.
fn money(field: &str, amount: &Amount) -> Result<Money, Problem> {
    let currency = Currency::parse(&amount.currency).map_err(|error| {
        Problem::validation(vec![FieldError::new(
            format!("{field}.currency"),
            error.rule,
            error.message,
        )])
    })?;
    if amount.amount_minor <= 0 {
        return Err(Problem::validation(vec![FieldError::new(
            format!("{field}.amount_minor"),
            "money.positive",
            "the amount must be more than zero minor units",
        )]));
    }
    Money::new(amount.amount_minor, currency).map_err(|error| {
        Problem::validation(vec![FieldError::new(
            format!("{field}.amount_minor"),
            error.rule,
            error.message,
        )])
    })
}

/// The `Idempotency-Key` header: required, 1 to 255 visible ASCII characters.
fn idempotency_key(headers: &HeaderMap) -> Result<String, Problem> {
    let invalid = |rule: &str, message: &str| {
        Problem::validation(vec![FieldError::new("Idempotency-Key", rule, message)])
    };
    let value = headers
        .get("idempotency-key")
        .ok_or_else(|| invalid("required", "send an Idempotency-Key header"))?;
    let key = value
        .to_str()
        .map_err(|_| invalid("idempotency_key.format", "visible ASCII only"))?;
    if key.is_empty() || key.len() > 255 {
        return Err(invalid(
            "idempotency_key.format",
            "between 1 and 255 characters",
        ));
    }
    Ok(key.to_owned())
}
