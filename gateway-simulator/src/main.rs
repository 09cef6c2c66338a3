use anyhow::Context;
use gateway_simulator::{Application, Settings};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings: Settings = platform::settings::load().context("Failed to load settings")?;
    platform::telemetry::init(&settings.log);
    let shutdown = platform::shutdown::on_signal();
    let app = Application::build(settings, shutdown)
        .await
        .context("Failed to start the gateway simulator")?;
    tracing::info!(port = app.port(), "gateway simulator listening");
    app.run_until_stopped()
        .await
        .context("gateway simulator stopped with an error")
}
