//! The projection-service's binary: `serve` (the default) or `migrate`.

use projection_service::Application;

/// jemalloc, for the C code linked in (librdkafka) as well as Rust's: it gives memory back to the
/// system once freed (docs/memory.md, "The allocator").
#[global_allocator]
static ALLOCATOR: platform::Allocator = platform::Allocator;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match std::env::args().nth(1).as_deref() {
        None | Some("serve") => platform::startup::run::<Application>().await,
        Some("migrate") => {
            let settings = platform::startup::settings::<Application>()?;
            projection_service::startup::migrate(&settings).await?;
            println!("read-model migrations are up to date");
            Ok(())
        }
        Some(other) => {
            anyhow::bail!("unknown command `{other}`: use `serve` (the default) or `migrate`")
        }
    }
}
