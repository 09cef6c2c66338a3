use anyhow::Context;
use command_service::{Application, Settings};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings: Settings = platform::settings::load()
        .context("Failed to load settings (FM_AUTH__SECRET must be set)")?;
    platform::telemetry::init(&settings.log);
    let shutdown = platform::shutdown::on_signal();
    let app = Application::build(settings, shutdown.clone())
        .await
        .context("Failed to start the command-service")?;
    tracing::info!(port = app.port(), "command-service listening");
    let stopped = app
        .run_until_stopped()
        .await
        .context("command-service stopped with an error");
    // Spans still batched for the OTLP collector go out before the process ends.
    platform::telemetry::shutdown();
    stopped
}
