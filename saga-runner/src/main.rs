//! The saga runner's binary: settings, telemetry, `Application::build`, run until SIGTERM.

use anyhow::Context;
use saga_runner::{Application, Settings};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings: Settings = platform::settings::load()
        .context("Failed to load settings (FM_AUTH__SECRET must be set)")?;
    platform::telemetry::init(&settings.log);
    let shutdown = platform::shutdown::on_signal();
    let app = Application::build(settings, shutdown.clone())
        .await
        .context("Failed to start the saga runner")?;
    tracing::info!(port = app.port(), "saga runner listening");
    let stopped = app
        .run_until_stopped()
        .await
        .context("saga runner stopped with an error");
    // Spans still batched for the OTLP collector go out before the process ends.
    platform::telemetry::shutdown();
    stopped
}
