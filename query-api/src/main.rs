//! The query-api's binary: `platform::startup::run` with its `Application`.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    platform::startup::run::<query_api::Application>().await
}
