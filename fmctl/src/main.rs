//! `fmctl`: the operators' command line for Funeral Manager.
//!
//! Configuration comes from the same `FM_SECTION__KEY` variables as the services
//! (`FM_KAFKA__BROKERS`, `FM_KAFKA__TOPIC_PREFIX`, `FM_AUTH__SECRET`). Every failure exits
//! non-zero with one sentence on stderr.

mod dead_letters;
mod inspect;
mod lag;
mod rebuild;
mod sagas;

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use event_log::KafkaSettings;
use platform::auth::TokenKeys;
use schemas::Role;
use secrecy::SecretString;
use serde::Deserialize;

#[derive(Debug, Parser)]
#[command(
    name = "fmctl",
    version,
    about = "Operate Funeral Manager: topics, events, lag, read models, dead letters, tokens."
)]
#[command(
    after_help = "Examples:\n  fmctl topics ensure\n  fmctl topics list\n  fmctl events tail --topic booking --follow\n  fmctl events history --booking <BOOKING_ID>\n  fmctl lag --fail-over 1000\n  fmctl sagas --filter stuck\n  fmctl dead-letters list\n  fmctl dead-letters show --offset 17\n  fmctl token mint --role director --subject director-1\n  fmctl token mint --role family --subject family-42 --ttl-days 7"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Kafka topics.
    #[command(subcommand)]
    Topics(TopicsCommand),
    /// Bearer tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Read-model versions: rebuild without downtime, status.
    #[command(subcommand)]
    Projections(rebuild::ProjectionsCommand),
    /// The dead-letter topic: list, show, retry.
    #[command(subcommand)]
    DeadLetters(dead_letters::DeadLettersCommand),
    /// Read the log: tail and decode events, a booking's history.
    #[command(subcommand)]
    Events(inspect::EventsCommand),
    /// How far each read-model version is behind the log, per partition.
    Lag(lag::LagArgs),
    /// The booking sagas: in flight, stuck, compensated, done; one booking's saga in full.
    Sagas(sagas::SagasArgs),
}

#[derive(Debug, Subcommand)]
enum TopicsCommand {
    /// Create every topic of the deployment that does not exist yet (safe to repeat).
    Ensure,
    /// Every topic of the deployment with its partitions, low/high offsets and record counts.
    #[command(after_help = "Examples:\n  fmctl topics list\n  fmctl topics list --output json")]
    List(inspect::ListArgs),
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Print a bearer token signed with the deployment's auth secret.
    Mint {
        #[arg(long, value_enum)]
        role: RoleArg,
        /// The token's subject: an opaque id, not a name or an e-mail address.
        #[arg(long)]
        subject: String,
        #[arg(long, default_value_t = 30)]
        ttl_days: i64,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum RoleArg {
    Director,
    Family,
    Ops,
    /// For services that send the booking saga's internal commands.
    System,
}

impl From<RoleArg> for Role {
    fn from(role: RoleArg) -> Self {
        match role {
            RoleArg::Director => Role::Director,
            RoleArg::Family => Role::Family,
            RoleArg::Ops => Role::Ops,
            RoleArg::System => Role::System,
        }
    }
}

/// The settings fmctl reads; every section is optional until a command needs it.
#[derive(Debug, Deserialize)]
struct Settings {
    #[serde(default)]
    kafka: KafkaSettings,
    auth: Option<AuthSection>,
}

#[derive(Debug, Deserialize)]
struct AuthSection {
    secret: SecretString,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("fmctl: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let settings: Settings =
        platform::settings::load().context("Failed to read the FM_* configuration")?;
    match cli.command {
        Command::Projections(command) => rebuild::projections(command).await?,
        Command::DeadLetters(command) => dead_letters::dead_letters(command).await?,
        Command::Events(command) => inspect::events(command).await?,
        Command::Lag(args) => lag::lag(args).await?,
        Command::Sagas(args) => sagas::sagas(args).await?,
        Command::Topics(TopicsCommand::List(args)) => inspect::topics_list(args).await?,
        Command::Topics(TopicsCommand::Ensure) => {
            let created = event_log::topics::ensure_topics(&settings.kafka)
                .await
                .with_context(|| {
                    format!("Failed to create topics on {}", settings.kafka.brokers)
                })?;
            let all = event_log::Topics::new(&settings.kafka.topic_prefix).all();
            for topic in all {
                let state = if created.contains(&topic) {
                    "created"
                } else {
                    "exists"
                };
                println!("{topic}\t{state}");
            }
        }
        Command::Token(TokenCommand::Mint {
            role,
            subject,
            ttl_days,
        }) => {
            let auth = settings.auth.context("FM_AUTH__SECRET is not set")?;
            let keys = TokenKeys::from_secret(&auth.secret)?;
            let token = keys.mint(&subject, role.into(), chrono::Duration::days(ttl_days))?;
            println!("{token}");
        }
    }
    Ok(())
}
