//! The command-service's binary: `platform::startup::run` with its `Application`.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    platform::startup::run::<command_service::Application>().await
}
