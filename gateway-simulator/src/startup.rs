//! Building and running the simulator: `Application::build(settings, shutdown)`,
//! `run_until_stopped()`. [`SimulatorState`] outlives an `Application`, so a test can stop the
//! simulator and start it again on the same port with the same ledger (a provider that went
//! down and came back).

use anyhow::Context;
use platform::{shutdown::CancellationToken, startup::Service};

use crate::{
    routes::{self, AppState, SimulatorState},
    settings::Settings,
};

/// A built simulator, listening, not yet serving.
#[derive(Debug)]
pub struct Application {
    server: platform::http::HttpServer,
    shutdown: CancellationToken,
    simulator: SimulatorState,
}

impl Application {
    /// Like [`build`](Self::build), with `simulator` as its memory: what an earlier
    /// `Application` on the same state recorded is still there.
    pub async fn build_with_state(
        settings: Settings,
        shutdown: CancellationToken,
        simulator: SimulatorState,
    ) -> anyhow::Result<Self> {
        let state = AppState::new(
            simulator.clone(),
            settings.simulator.clone(),
            shutdown.clone(),
        );
        let server =
            platform::http::HttpServer::bind(routes::router(state), &settings.http).await?;
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
}

impl Service for Application {
    type Settings = Settings;
    const NAME: &'static str = "gateway simulator";

    fn log_settings(settings: &Settings) -> &platform::settings::LogSettings {
        &settings.log
    }

    /// Binds the listener and builds the routes with an empty ledger, approving everything.
    async fn build(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<Self> {
        Self::build_with_state(settings, shutdown, SimulatorState::default()).await
    }

    /// The port the simulator listens on.
    fn port(&self) -> u16 {
        self.server.port()
    }

    /// Serves until the shutdown token is cancelled; hanging requests are cut short then.
    async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.server
            .serve(self.shutdown)
            .await
            .context("HTTP server failed")
    }
}
