//! `fmctl`: the operators' command line for Funeral Manager.
//!
//! Configuration comes from the same `FM_SECTION__KEY` variables as the services
//! (`FM_KAFKA__BROKERS`, `FM_KAFKA__TOPIC_PREFIX`, `FM_AUTH__SECRET`). Every failure exits
//! non-zero with one sentence on stderr.

mod dead_letters;
mod inspect;
mod lag;
mod migrate;
mod payments;
mod privacy;
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
    after_help = "Examples:\n  fmctl topics ensure\n  fmctl topics list\n  fmctl events tail --topic booking --follow\n  fmctl events history --booking <BOOKING_ID>\n  fmctl lag --fail-over 1000\n  fmctl sagas --filter stuck\n  fmctl payments reconcile --now --fail-if-any\n  fmctl dead-letters list\n  fmctl dead-letters show --offset 17\n  fmctl token mint --role director --subject director-1\n  fmctl token mint --role family --subject family-42 --ttl-days 7"
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
    /// Payments: the reconciliation of the gateway's captures with the log.
    #[command(subcommand)]
    Payments(payments::PaymentsCommand),
    /// Personal data: the data keys and the master keys that wrap them (status, rewrap).
    #[command(subcommand)]
    Privacy(privacy::PrivacyCommand),
    /// The log as a whole: migrate it into a new generation of topics.
    #[command(subcommand)]
    Log(migrate::LogCommand),
}

#[derive(Debug, Subcommand)]
enum TopicsCommand {
    /// Create every topic of the deployment that does not exist yet, and check every existing
    /// one against the policy for this cluster (partitions, replication factor, min ISR,
    /// retention, cleanup policy, unclean leader election). Exits 1 when a topic differs.
    #[command(
        after_help = "Examples:\n  fmctl topics ensure\n  fmctl topics ensure --repair\n\nPartitions and replicas are never changed: a new partition count moves aggregates to \nother partitions (docs/operations.md, \"Topic settings\")."
    )]
    Ensure {
        /// Alter topic configs that differ from the policy (retention, cleanup policy, min ISR,
        /// unclean leader election). Partition and replica counts are only reported.
        #[arg(long)]
        repair: bool,
    },
    /// Every topic of the deployment with its partitions, low/high offsets, record counts,
    /// leader, replicas and in-sync replicas.
    #[command(
        after_help = "Examples:\n  fmctl topics list\n  fmctl topics list --output json\n  fmctl topics list --all --under-replicated    # exit 1 while any partition is short of replicas\n\nA rolling restart of the brokers waits for `--all --under-replicated` to exit 0 before\nthe next broker (docs/operations.md, \"Rolling restart\")."
    )]
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
    /// Only `fmctl token mint` needs it (the test-only shared secret, docs/identity.md); a
    /// deployment with a provider sets `FM_AUTH__ISSUER` and no secret.
    #[serde(default)]
    secret: Option<SecretString>,
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

/// `fmctl topics ensure`: one line per topic (created, ok, repaired, drift and how), then the
/// policy; fails when any topic still differs from it.
async fn topics_ensure(kafka: &KafkaSettings, repair: bool) -> anyhow::Result<()> {
    use event_log::topics::TopicState;
    let report = event_log::topics::ensure_topics(kafka, repair)
        .await
        .with_context(|| format!("Failed to create or check the topics on {}", kafka.brokers))?;
    let list = |drifts: &[event_log::topics::Drift]| {
        drifts
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    };
    for (topic, state) in &report.topics {
        match state {
            TopicState::Created => println!("{topic}\tcreated"),
            TopicState::Conforms => println!("{topic}\tok"),
            TopicState::Repaired(drifts) => println!("{topic}\trepaired\t{}", list(drifts)),
            TopicState::Drifted(drifts) => println!("{topic}\tdrift\t{}", list(drifts)),
        }
    }
    let policy = &report.policy;
    eprintln!(
        "policy for {} broker(s): {} partitions, replication factor {}, min.insync.replicas {}, \
         retention forever, cleanup.policy=delete, unclean.leader.election.enable=false",
        report.brokers, policy.partitions, policy.replication_factor, policy.min_insync_replicas
    );
    if report.drifted() {
        anyhow::bail!(
            "some topics differ from the policy (above); `fmctl topics ensure --repair` fixes \
             their configs, a partition or replica count needs an operator (docs/operations.md, \
             \"Topic settings\")"
        );
    }
    Ok(())
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
        Command::Payments(command) => payments::payments(command).await?,
        Command::Privacy(command) => privacy::privacy(command).await?,
        Command::Log(command) => migrate::log(command).await?,
        Command::Topics(TopicsCommand::List(args)) => inspect::topics_list(args).await?,
        Command::Topics(TopicsCommand::Ensure { repair }) => {
            topics_ensure(&settings.kafka, repair).await?;
        }
        Command::Token(TokenCommand::Mint {
            role,
            subject,
            ttl_days,
        }) => {
            let secret = settings
                .auth
                .and_then(|auth| auth.secret)
                .context("FM_AUTH__SECRET is not set")?;
            let keys = TokenKeys::from_secret(&secret)?;
            let token = keys.mint(&subject, role.into(), chrono::Duration::days(ttl_days))?;
            println!("{token}");
        }
    }
    Ok(())
}
