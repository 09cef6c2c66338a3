//! The one start-up every binary shares, so that each `main.rs` is a line: load the settings,
//! start the logs, build the application with a shutdown token tripped by SIGTERM/Ctrl-C, serve
//! until it is stopped, and flush the spans still waiting for the collector.
//!
//! ```no_run
//! # struct Application;
//! # #[derive(serde::Deserialize)] struct Settings { log: platform::settings::LogSettings }
//! # impl platform::startup::Service for Application {
//! #     type Settings = Settings;
//! #     const NAME: &'static str = "example";
//! #     fn log_settings(settings: &Settings) -> &platform::settings::LogSettings { &settings.log }
//! #     async fn build(_: Settings, _: platform::shutdown::CancellationToken) -> anyhow::Result<Self> { Ok(Self) }
//! #     fn port(&self) -> u16 { 0 }
//! #     async fn run_until_stopped(self) -> anyhow::Result<()> { Ok(()) }
//! # }
//! #[tokio::main]
//! async fn main() -> anyhow::Result<()> {
//!     platform::startup::run::<Application>().await
//! }
//! ```

use std::future::Future;

use anyhow::Context;
use serde::de::DeserializeOwned;

use crate::{settings::LogSettings, shutdown::CancellationToken};

/// A service's `Application`: built from its settings and a shutdown token, then served. Its
/// implementation is the service's start-up (`startup.rs`); tests call it as `main` does
/// (`Application::build(settings, shutdown)`, with this trait in scope).
pub trait Service: Sized {
    /// The service's typed settings (`crate::settings::load`).
    type Settings: DeserializeOwned;
    /// The service's name in logs and errors (`"command-service"`).
    const NAME: &'static str;
    /// What to say when the settings do not load, beside the error itself.
    const SETTINGS_HINT: &'static str = "";

    /// The log section of the settings.
    fn log_settings(settings: &Self::Settings) -> &LogSettings;

    /// Connects, binds its listener and starts its background work; serves nothing yet.
    fn build(
        settings: Self::Settings,
        shutdown: CancellationToken,
    ) -> impl Future<Output = anyhow::Result<Self>> + Send;

    /// The port it listens on.
    fn port(&self) -> u16;

    /// Serves until the shutdown token is cancelled, then drains.
    fn run_until_stopped(self) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// Loads `S`'s settings and starts the logs with them.
pub fn settings<S: Service>() -> anyhow::Result<S::Settings> {
    let settings: S::Settings = crate::settings::load()
        .with_context(|| format!("Failed to load settings{}", S::SETTINGS_HINT))?;
    crate::telemetry::init(S::log_settings(&settings));
    Ok(settings)
}

/// Runs service `S` until SIGTERM or Ctrl-C: everything a `main` does.
pub async fn run<S: Service>() -> anyhow::Result<()> {
    let settings = settings::<S>()?;
    let shutdown = crate::shutdown::on_signal();
    let app = S::build(settings, shutdown)
        .await
        .with_context(|| format!("Failed to start the {}", S::NAME))?;
    tracing::info!(port = app.port(), "{} listening", S::NAME);
    let stopped = app
        .run_until_stopped()
        .await
        .with_context(|| format!("{} stopped with an error", S::NAME));
    // Spans still batched for the OTLP collector go out before the process ends.
    crate::telemetry::shutdown();
    stopped
}
