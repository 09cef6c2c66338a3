//! The saga runner's binary: `platform::startup::run` with its `Application`.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    platform::startup::run::<saga_runner::Application>().await
}
