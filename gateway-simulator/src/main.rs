//! The gateway simulator's binary: `platform::startup::run` with its `Application`.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    platform::startup::run::<gateway_simulator::Application>().await
}
