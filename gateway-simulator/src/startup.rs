//! Building and running the simulator: `Application::build(settings, shutdown)`,
//! `run_until_stopped()`. [`SimulatorState`] outlives an `Application`, so a test can stop the
//! simulator and start it again on the same port with the same ledger (a provider that went
//! down and came back).

use std::{
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use anyhow::Context;
use axum::{
    Router,
    routing::{get, post, put},
};
use platform::shutdown::CancellationToken;

use crate::{
    error::ApiError,
    ledger::Simulator,
    routes::{control, ops, payments},
    settings::{Settings, SimulatorSettings},
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

/// A built simulator, listening, not yet serving.
#[derive(Debug)]
pub struct Application {
    server: platform::http::HttpServer,
    shutdown: CancellationToken,
    simulator: SimulatorState,
}

impl Application {
    /// Binds the listener and builds the routes with an empty ledger, approving everything.
    pub async fn build(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<Self> {
        Self::build_with_state(settings, shutdown, SimulatorState::default()).await
    }

    /// Like [`build`](Self::build), with `simulator` as its memory: what an earlier
    /// `Application` on the same state recorded is still there.
    pub async fn build_with_state(
        settings: Settings,
        shutdown: CancellationToken,
        simulator: SimulatorState,
    ) -> anyhow::Result<Self> {
        let state = AppState {
            simulator: simulator.clone(),
            settings: Arc::new(settings.simulator.clone()),
            shutdown: shutdown.clone(),
        };
        let router = Router::new()
            .route("/captures", post(payments::capture))
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
            .with_state(state);
        let server = platform::http::HttpServer::bind(router, &settings.http).await?;
        Ok(Self {
            server,
            shutdown,
            simulator,
        })
    }

    /// The memory this application serves (to build a successor on it).
    pub fn state(&self) -> SimulatorState {
        self.simulator.clone()
    }

    /// The port the simulator listens on.
    pub fn port(&self) -> u16 {
        self.server.port()
    }

    /// Serves until the shutdown token is cancelled; hanging requests are cut short then.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.server
            .serve(self.shutdown)
            .await
            .context("HTTP server failed")
    }
}
