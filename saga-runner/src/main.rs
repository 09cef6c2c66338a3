//! The saga runner's binary: `platform::startup::run` with its `Application`.

/// jemalloc, for the C code linked in (librdkafka) as well as Rust's: it gives memory back to the
/// system once freed (docs/memory.md, "The allocator").
#[global_allocator]
static ALLOCATOR: platform::Allocator = platform::Allocator;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    platform::startup::run::<saga_runner::Application>().await
}
