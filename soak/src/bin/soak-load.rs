//! `soak-load`: drives bookings with a mix of outcomes against a running stack and journals
//! every answer (see `soak::load`). The auth secret comes from `FM_AUTH__SECRET`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use secrecy::SecretString;
use soak::{journal::JournalWriter, load};

/// Drive bookings against a running stack and journal every answer.
#[derive(Debug, Parser)]
#[command(
    name = "soak-load",
    after_help = "Example:\n  FM_AUTH__SECRET=... soak-load --command-url http://127.0.0.1:18381 \\\n    --command-url http://127.0.0.1:18382 --query-url http://127.0.0.1:18383 \\\n    --gateway-url http://127.0.0.1:18386 --brokers 127.0.0.1:59142 --journal journal.jsonl --duration 3m"
)]
struct Args {
    /// A command-service replica (repeat for each).
    #[arg(long = "command-url", required = true)]
    command_urls: Vec<String>,
    #[arg(long)]
    query_url: String,
    #[arg(long)]
    gateway_url: String,
    #[arg(long)]
    brokers: String,
    #[arg(long, default_value = "fm")]
    topic_prefix: String,
    /// Where the journal goes (JSON lines).
    #[arg(long)]
    journal: PathBuf,
    /// How long new bookings are started: `90s`, `3m`, `30m`, or seconds.
    #[arg(long, default_value = "3m", value_parser = soak::parse_duration)]
    duration: std::time::Duration,
    /// How long scenarios in flight may still run after that.
    #[arg(long, default_value = "60s", value_parser = soak::parse_duration)]
    drain: std::time::Duration,
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// New scenarios per second at most.
    #[arg(long, default_value_t = 12.0)]
    rate: f64,
    #[arg(long, default_value_t = 6)]
    facilities: usize,
    #[arg(long)]
    seed: Option<u64>,
    /// A saga runner drives bookings on: wait for confirmations before cancelling them.
    #[arg(long)]
    saga: bool,
    /// Poison records to put on the event topics (four kinds in turn; see `soak::load`).
    #[arg(long, default_value_t = 4)]
    poison: usize,
    /// How long one write is retried without an answer before it counts as unknown.
    #[arg(long, default_value = "90s", value_parser = soak::parse_duration)]
    give_up_after: std::time::Duration,
    /// How long the gateway takes to answer a `late_capture` booking's capture: past the saga
    /// runner's capture deadline, inside its gateway request timeout (compose/soak sets all
    /// three together).
    #[arg(long, default_value = "9500ms", value_parser = soak::parse_duration)]
    late_capture_delay: std::time::Duration,
    /// How long the gateway works on a `detached_capture` booking's capture before it takes the
    /// money: past the saga runner's gateway request timeout, inside its settle window
    /// (compose/soak sets them together).
    #[arg(long, default_value = "15s", value_parser = soak::parse_duration)]
    detached_capture_delay: std::time::Duration,
    /// Start no new scenario once this file exists (the drain follows, as after --duration).
    #[arg(long)]
    stop_file: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let secret = std::env::var("FM_AUTH__SECRET").context("FM_AUTH__SECRET is not set")?;
    let seed = args.seed.unwrap_or_else(|| fastrand::u64(..));
    println!("soak-load: seed {seed} (pass --seed {seed} to repeat the same choices)");
    let journal = JournalWriter::create(&args.journal)?;
    load::run(
        load::LoadConfig {
            command_urls: args.command_urls,
            query_url: args.query_url,
            gateway_url: args.gateway_url,
            brokers: args.brokers,
            topic_prefix: args.topic_prefix,
            secret: SecretString::from(secret),
            duration: args.duration,
            drain: args.drain,
            clients: args.clients.max(1),
            rate: args.rate,
            facilities: args.facilities.max(1),
            seed,
            saga: args.saga,
            poison: args.poison,
            give_up_after: args.give_up_after,
            late_capture_delay: args.late_capture_delay,
            detached_capture_delay: args.detached_capture_delay,
            stop_file: args.stop_file,
        },
        journal,
    )
    .await
}
