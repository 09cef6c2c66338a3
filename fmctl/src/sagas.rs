//! `fmctl sagas`: the booking sagas in flight, stuck, parked, compensated or done, and one
//! booking's saga in full — from the saga runner's ops view (`GET /sagas`), with an `ops` token
//! of fmctl's own client at the identity provider (or, on a test stack without one, minted from
//! the test-only shared secret). The runner owns its tables; this command only asks it.
//!
//! `fmctl sagas park | retry | skip | resolve` act on one saga through the runner's ops API
//! (`POST /sagas/{booking_id}/...`), which checks the saga and forwards the request to the
//! command-service: each action becomes an event of the saga's stream naming the operator
//! (`--operator`, the token's subject) and the reason (docs/saga.md, "Operator actions").

use anyhow::{Context, bail};
use batch_consumer::parking::ParkedAggregate;
use clap::{Args, Subcommand, ValueEnum};
use platform::{auth::ServiceToken, settings::AuthSettings};
use schemas::Role;
use serde::Deserialize;
use serde_json::Value;
use uuid::Uuid;

use crate::inspect::Output;

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    fmctl sagas                          # in flight\n  \
    fmctl sagas --filter stuck --fail-if-any\n  \
    fmctl sagas --filter compensated --output json\n  \
    fmctl sagas --filter parked          # waiting for an operator\n  \
    fmctl sagas --booking <BOOKING_ID>   # facts and every step performed\n  \
    fmctl sagas retry --booking <BOOKING_ID> --reason 'the provider fixed its record'\n  \
    fmctl sagas parked-records           # records the saga's consumer cannot take yet\n\n\
    A saga is stuck when it is not done and past the deadline of the step it is on (a lookup \
    the gateway cannot answer, a mail the SMTP server keeps refusing); parked when a step \
    failed for good or an operator parked it; see docs/saga.md.")]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct SagasArgs {
    #[command(subcommand)]
    action: Option<SagaAction>,
    /// Which sagas to list.
    #[arg(long, value_enum, default_value_t = Filter::InFlight)]
    filter: Filter,
    /// Show this booking's saga only, with its facts and history.
    #[arg(long, value_name = "BOOKING_ID")]
    booking: Option<Uuid>,
    /// At most this many (1-1000), most recently changed first.
    #[arg(long, default_value_t = 100)]
    limit: u32,
    /// Exit with status 1 when the list is not empty (for `--filter stuck` in a check).
    #[arg(long)]
    fail_if_any: bool,
    /// The saga runner's base URL.
    #[arg(long, env = "FM_SAGA_URL", default_value = "http://127.0.0.1:8084")]
    url: String,
    #[arg(long, value_enum, default_value_t = Output::Pretty)]
    output: Output,
}

/// An operator's action on one saga: an event of its stream, with who and why.
#[derive(Debug, Subcommand)]
enum SagaAction {
    /// Stop the saga until it is retried or resolved.
    Park {
        #[command(flatten)]
        target: Target,
        /// The step to park at (default: the one it is on).
        #[arg(long)]
        step: Option<String>,
    },
    /// Act now: unpark, forget the failed attempts, start the step's clock again.
    Retry {
        #[command(flatten)]
        target: Target,
    },
    /// Count the step the saga is on as done (a letter `notify_*`, or `lookup_capture`).
    Skip {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        step: String,
    },
    /// The booking was settled outside the system: the saga does nothing more, ever.
    Resolve {
        #[command(flatten)]
        target: Target,
    },
    /// The aggregates whose records the saga's consumer keeps parked: an event type or version
    /// this release does not know, or one beyond a gap (docs/evolution.md). Not the sagas an
    /// operator or a failed step parked (`--filter parked`). A release that knows the records
    /// takes everything parked, in order, when it starts.
    ParkedRecords {
        /// Exit with status 1 when any aggregate is parked (for a check).
        #[arg(long)]
        fail_if_any: bool,
        /// The saga runner's base URL.
        #[arg(long, env = "FM_SAGA_URL", default_value = "http://127.0.0.1:8084")]
        url: String,
        #[arg(long, value_enum, default_value_t = Output::Pretty)]
        output: Output,
    },
}

/// Which saga, why, and who acts.
#[derive(Debug, Args)]
struct Target {
    #[arg(long, value_name = "BOOKING_ID")]
    booking: Uuid,
    /// Why (1-500 characters); kept in the log with the action.
    #[arg(long)]
    reason: String,
    /// Who acts, kept in the log with the action: the subject of a minted ops token, or, with
    /// fmctl's client at the identity provider, named in the recorded reason.
    #[arg(long, env = "USER")]
    operator: String,
    /// The saga runner's base URL.
    #[arg(long, env = "FM_SAGA_URL", default_value = "http://127.0.0.1:8084")]
    url: String,
}

impl SagaAction {
    /// An action on one saga: its kind, target and step; `None` for a listing.
    fn parts(&self) -> Option<(&'static str, &Target, Option<&str>)> {
        match self {
            Self::Park { target, step } => Some(("park", target, step.as_deref())),
            Self::Retry { target } => Some(("retry", target, None)),
            Self::Skip { target, step } => Some(("skip", target, Some(step.as_str()))),
            Self::Resolve { target } => Some(("resolve", target, None)),
            Self::ParkedRecords { .. } => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Filter {
    InFlight,
    Stuck,
    Parked,
    Compensated,
    Done,
    All,
}

impl Filter {
    fn query(self) -> &'static str {
        match self {
            Self::InFlight => "in_flight",
            Self::Stuck => "stuck",
            Self::Parked => "parked",
            Self::Compensated => "compensated",
            Self::Done => "done",
            Self::All => "all",
        }
    }
}

#[derive(Debug, Deserialize)]
struct Settings {
    auth: Option<AuthSettings>,
}

/// An `ops` token, and whether its subject is `subject`: with a provider (`FM_AUTH__ISSUER`), the
/// client-credentials grant of fmctl's own client (`FM_AUTH__CLIENT_ID`,
/// `FM_AUTH__CLIENT_SECRET`: `fm-fmctl` locally), whose subject is that client's service account;
/// without one, minted for `subject` from the test-only shared secret.
pub(crate) async fn ops_token(subject: &str) -> anyhow::Result<(String, bool)> {
    let settings: Settings =
        platform::settings::load().context("Failed to read the FM_* configuration")?;
    let auth = settings
        .auth
        .context("set FM_AUTH__ISSUER with FM_AUTH__CLIENT_ID and FM_AUTH__CLIENT_SECRET (or FM_AUTH__SECRET)")?;
    let token = ServiceToken::from_settings(&auth, subject, Role::Ops)?;
    let names_subject = matches!(token, ServiceToken::Minted { .. });
    let token = token.token().await.map_err(anyhow::Error::msg)?;
    Ok((token, names_subject))
}

/// Performs an operator's action through the runner's ops API and says what was recorded.
async fn act((kind, target, step): (&'static str, &Target, Option<&str>)) -> anyhow::Result<()> {
    let (token, names_operator) = ops_token(&target.operator).await?;
    let base = target.url.trim_end_matches('/');
    // fmctl's client token names fmctl's service account, not the person: the reason does.
    let reason = if names_operator {
        target.reason.clone()
    } else {
        format!("{} (operator {})", target.reason, target.operator)
    };
    let mut body = serde_json::json!({ "reason": reason });
    if let Some(step) = step {
        body["step"] = Value::String(step.to_owned());
    }
    let response = reqwest::Client::new()
        .post(format!("{base}/sagas/{}/{kind}", target.booking))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .with_context(|| {
            format!("Failed to reach the saga runner at {base} (--url or FM_SAGA_URL)")
        })?;
    let status = response.status();
    let answer: Value = response.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        let detail = answer["detail"]
            .as_str()
            .or_else(|| answer["title"].as_str())
            .unwrap_or("no detail");
        bail!("the saga runner refused to {kind} the saga: {status}: {detail}");
    }
    println!(
        "{kind}: recorded in the saga's stream of booking {} as {} (ops), version {}",
        target.booking, target.operator, answer["version"]
    );
    Ok(())
}

pub(crate) async fn sagas(args: SagasArgs) -> anyhow::Result<()> {
    match &args.action {
        Some(SagaAction::ParkedRecords {
            fail_if_any,
            url,
            output,
        }) => return parked_records(url, *output, *fail_if_any).await,
        Some(action) => {
            if let Some(parts) = action.parts() {
                return act(parts).await;
            }
        }
        None => {}
    }
    let (token, _) = ops_token("fmctl").await?;
    let base = args.url.trim_end_matches('/');
    let url = match args.booking {
        Some(booking) => format!("{base}/sagas/{booking}"),
        None => format!(
            "{base}/sagas?filter={}&limit={}",
            args.filter.query(),
            args.limit
        ),
    };
    let response = reqwest::Client::new()
        .get(&url)
        .bearer_auth(token)
        .send()
        .await
        .with_context(|| {
            format!("Failed to reach the saga runner at {base} (--url or FM_SAGA_URL)")
        })?;
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if status.as_u16() == 404 {
        bail!(
            "no saga for that booking (the runner has not read its request, or it does not exist)"
        );
    }
    if !status.is_success() {
        let detail = body["detail"].as_str().unwrap_or("no detail");
        bail!("the saga runner answered {status}: {detail}");
    }
    let listed = if args.booking.is_some() {
        vec![body.clone()]
    } else {
        body["sagas"].as_array().cloned().unwrap_or_default()
    };
    match args.output {
        Output::Json => println!("{body}"),
        Output::Pretty => {
            if let Some(circuit) = body["gateway_circuit"].as_str() {
                println!("payment gateway circuit: {circuit}");
            }
            println!(
                "{:<36}  {:<12}  {:<20}  {:>8}  {:<5}  {:<11}  last error",
                "booking", "stage", "next step", "attempts", "stuck", "compensated"
            );
            for saga in &listed {
                println!(
                    "{:<36}  {:<12}  {:<20}  {:>8}  {:<5}  {:<11}  {}",
                    saga["booking_id"].as_str().unwrap_or("?"),
                    saga["stage"].as_str().unwrap_or("?"),
                    saga["step"].as_str().unwrap_or("-"),
                    saga["attempts"],
                    saga["stuck"],
                    saga["compensated"],
                    saga["last_error"].as_str().unwrap_or("")
                );
            }
            if args.booking.is_some() {
                println!("facts: {:#}", body["facts"]);
                println!("history: {:#}", body["history"]);
            }
        }
    }
    if args.fail_if_any && !listed.is_empty() {
        bail!(
            "{} saga(s) match --filter {}",
            listed.len(),
            args.filter.query()
        );
    }
    Ok(())
}

/// `fmctl sagas parked-records`: the runner's `GET /parked-records`.
async fn parked_records(url: &str, output: Output, fail_if_any: bool) -> anyhow::Result<()> {
    let (token, _) = ops_token("fmctl").await?;
    let base = url.trim_end_matches('/');
    let response = reqwest::Client::new()
        .get(format!("{base}/parked-records"))
        .bearer_auth(token)
        .send()
        .await
        .with_context(|| {
            format!("Failed to reach the saga runner at {base} (--url or FM_SAGA_URL)")
        })?;
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        let detail = body["detail"].as_str().unwrap_or("no detail");
        bail!("the saga runner answered {status}: {detail}");
    }
    let parked: Vec<ParkedAggregate> = serde_json::from_value(body["parked"].clone())
        .context("the saga runner's list of parked records is not what fmctl reads")?;
    match output {
        Output::Json => println!("{body}"),
        Output::Pretty => {
            println!("saga consumer: {} aggregates parked", parked.len());
            for aggregate in &parked {
                println!("  {aggregate}");
            }
        }
    }
    if fail_if_any && !parked.is_empty() {
        bail!(
            "{} aggregate(s) parked in the saga's consumer",
            parked.len()
        );
    }
    Ok(())
}
