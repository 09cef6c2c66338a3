use anyhow::Context;
use projection_service::{Application, Settings};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings: Settings = platform::settings::load().context("Failed to load settings")?;
    platform::telemetry::init(&settings.log);
    match std::env::args().nth(1).as_deref() {
        None | Some("serve") => {}
        Some("migrate") => {
            projection_service::startup::migrate(&settings).await?;
            println!("read-model migrations are up to date");
            return Ok(());
        }
        Some(other) => {
            anyhow::bail!("unknown command `{other}`: use `serve` (the default) or `migrate`")
        }
    }
    let shutdown = platform::shutdown::on_signal();
    let app = Application::build(settings, shutdown)
        .await
        .context("Failed to start the projection-service")?;
    tracing::info!(port = app.port(), "projection-service running");
    let stopped = app
        .run_until_stopped()
        .await
        .context("projection-service stopped with an error");
    // Spans still batched for the OTLP collector go out before the process ends.
    platform::telemetry::shutdown();
    stopped
}
