use anyhow::Context;
use query_api::{Application, Settings};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings: Settings = platform::settings::load()
        .context("Failed to load settings (FM_AUTH__SECRET must be set)")?;
    platform::telemetry::init(&settings.log);
    let shutdown = platform::shutdown::on_signal();
    let app = Application::build(settings, shutdown)
        .await
        .context("Failed to start the query-api")?;
    tracing::info!(port = app.port(), "query-api listening");
    let stopped = app
        .run_until_stopped()
        .await
        .context("query-api stopped with an error");
    // Spans still batched for the OTLP collector go out before the process ends.
    platform::telemetry::shutdown();
    stopped
}
