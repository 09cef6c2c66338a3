//! `fm-stack`: the stack's one description (the `stack` crate) for the scripts.
//!
//! ```text
//! fm-stack env <service> [--port P] [--instance N]   the service's FM_* settings, KEY=VALUE lines
//! fm-stack prepare [--bin-dir DIR]                   fmctl topics ensure, projection-service migrate
//! fm-stack services                                  the servers, in start order
//! ```
//!
//! The stack's facts come from flags or, for a script, from `FM_STACK_*` variables (`--help`
//! lists them; docs/local-stack.md, "One description of the stack").

use std::{io::Write, path::PathBuf};

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use stack::{Auth, Facts, Instance, Service};

#[derive(Debug, Parser)]
#[command(
    name = "fm-stack",
    about = "The local stack's services and their settings, described once"
)]
struct Cli {
    #[command(flatten)]
    facts: FactArgs,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Prints the FM_* settings of one service (or fmctl) as KEY=VALUE lines.
    Env {
        /// command-service, query-api, projection-service, saga-runner, gateway-simulator, fmctl.
        service: String,
        /// Its HTTP port (0: the system picks one).
        #[arg(long, default_value_t = 0)]
        port: u16,
        /// Which of several replicas (its snapshot goes to <state dir>/<service>-N/).
        #[arg(long)]
        instance: Option<u32>,
    },
    /// Creates the topics (fmctl topics ensure) and runs the read-model migrations
    /// (projection-service migrate); their output goes to stderr.
    Prepare {
        /// Where the fmctl and projection-service binaries are.
        #[arg(long, env = "FM_STACK_BIN_DIR")]
        bin_dir: PathBuf,
    },
    /// Prints the servers of the stack, one a line, in the order they start.
    Services,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum OnOff {
    On,
    Off,
}

/// The stack's facts (`stack::Facts`).
#[derive(Debug, Args)]
struct FactArgs {
    /// The database (read models, sagas, data keys).
    #[arg(
        long,
        global = true,
        env = "FM_STACK_DATABASE_URL",
        hide_env_values = true
    )]
    database_url: Option<String>,
    /// The brokers' bootstrap servers.
    #[arg(long, global = true, env = "FM_STACK_BROKERS")]
    brokers: Option<String>,
    /// The event topics' prefix.
    #[arg(long, global = true, env = "FM_STACK_TOPIC_PREFIX")]
    topic_prefix: Option<String>,
    /// The event topics' partition count.
    #[arg(long, global = true, env = "FM_STACK_PARTITIONS")]
    partitions: Option<u32>,
    /// The identity provider's issuer the services trust.
    #[arg(
        long,
        global = true,
        env = "FM_STACK_ISSUER",
        conflicts_with = "secret"
    )]
    issuer: Option<String>,
    /// The shared token secret (the offline, test-only path), instead of an issuer.
    #[arg(long, global = true, env = "FM_STACK_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// The privacy master keys.
    #[arg(
        long,
        global = true,
        env = "FM_STACK_MASTER_KEYS",
        hide_env_values = true
    )]
    master_keys: Option<String>,
    /// Where the data keys live, when not in the database.
    #[arg(
        long,
        global = true,
        env = "FM_STACK_KEY_DATABASE_URL",
        hide_env_values = true
    )]
    key_database_url: Option<String>,
    /// The SMTP server, HOST:PORT.
    #[arg(long, global = true, env = "FM_STACK_SMTP")]
    smtp: Option<String>,
    /// The payment gateway's base URL.
    #[arg(long, global = true, env = "FM_STACK_GATEWAY_URL")]
    gateway_url: Option<String>,
    /// The command-service the saga runner calls (and whose family-session keys the query-api
    /// trusts).
    #[arg(long, global = true, env = "FM_STACK_COMMAND_URL")]
    command_url: Option<String>,
    /// The stack's state directory: the command-service keeps its snapshot in
    /// <dir>/<instance name>/snapshot.json.
    #[arg(long, global = true, env = "FM_STACK_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// The limits on the flow (docs/security.md).
    #[arg(
        long,
        global = true,
        env = "FM_STACK_LIMITS",
        value_enum,
        default_value = "on"
    )]
    limits: OnOff,
    /// `FM_LOG__FORMAT` of the services.
    #[arg(
        long,
        global = true,
        env = "FM_STACK_LOG_FORMAT",
        default_value = "json"
    )]
    log_format: String,
    /// `FM_LOG__FILTER` of the services.
    #[arg(long, global = true, env = "FM_STACK_LOG_FILTER")]
    log_filter: Option<String>,
}

impl FactArgs {
    fn facts(&self, snapshot_of: Option<&Instance>) -> anyhow::Result<Facts> {
        let smtp = match &self.smtp {
            Some(address) => {
                let (host, port) = address
                    .rsplit_once(':')
                    .with_context(|| format!("--smtp {address:?} is not HOST:PORT"))?;
                let port = port
                    .parse()
                    .with_context(|| format!("--smtp {address:?}: {port:?} is not a port"))?;
                Some((host.to_owned(), port))
            }
            None => None,
        };
        let auth = match (&self.issuer, &self.secret) {
            (Some(issuer), _) => Some(Auth::Provider {
                issuer: issuer.clone(),
            }),
            (None, Some(secret)) => Some(Auth::Secret(secret.clone())),
            (None, None) => None,
        };
        let snapshot = match (&self.state_dir, snapshot_of) {
            (Some(dir), Some(instance)) => Some(dir.join(instance.name()).join("snapshot.json")),
            _ => None,
        };
        Ok(Facts {
            database_url: self.database_url.clone(),
            brokers: self.brokers.clone(),
            topic_prefix: self.topic_prefix.clone(),
            partitions: self.partitions,
            auth,
            master_keys: self.master_keys.clone(),
            key_database_url: self.key_database_url.clone(),
            smtp,
            gateway_url: self.gateway_url.clone(),
            command_url: self.command_url.clone(),
            snapshot,
            limits: matches!(self.limits, OnOff::On),
            log_format: Some(self.log_format.clone()),
            log_filter: self.log_filter.clone(),
        })
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut out = std::io::stdout().lock();
    match cli.command {
        Cmd::Env {
            service,
            port,
            instance,
        } => {
            let Some(service) = Service::from_name(&service) else {
                let names: Vec<&str> = Service::ALL.iter().map(|s| s.name()).collect();
                bail!("unknown service {service:?} (one of {})", names.join(", "));
            };
            let instance = Instance {
                service,
                index: instance,
                port,
            };
            let facts = cli.facts.facts(Some(&instance))?;
            for (key, value) in stack::env(&facts, &instance) {
                if value.contains(['\n', '\r', '\0']) {
                    bail!(
                        "{key} would hold a line break or NUL, which KEY=VALUE lines cannot carry"
                    );
                }
                writeln!(out, "{key}={value}")?;
            }
        }
        Cmd::Prepare { bin_dir } => stack::prepare::run(&cli.facts.facts(None)?, &bin_dir)?,
        Cmd::Services => {
            for service in Service::SERVERS {
                writeln!(out, "{service}")?;
            }
        }
    }
    Ok(())
}
