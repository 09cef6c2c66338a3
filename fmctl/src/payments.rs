//! `fmctl payments reconcile`: the payment reconciliation of the saga runner (the gateway's
//! captures compared with what the log says each booking kept; docs/payments.md,
//! "Reconciliation"). Without `--now` it shows the last report (`GET /reconciliation`); with it,
//! it runs one now (`POST /reconciliation`) and shows that. `--fail-if-any` makes a
//! discrepancy an exit status, for a check or an alert.

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::Value;

use crate::{inspect::Output, sagas::ops_token};

#[derive(Debug, Subcommand)]
pub(crate) enum PaymentsCommand {
    /// The last reconciliation of the gateway's captures with the log, or a new one (`--now`).
    #[command(
        after_help = "Examples:\n  fmctl payments reconcile\n  fmctl payments reconcile --now --fail-if-any\n  fmctl payments reconcile --output json\n\nA discrepancy is a capture that no booking kept as the log says it should (docs/payments.md,\n\"Reconciliation\"); a saga an operator resolved by hand is listed as explained."
    )]
    Reconcile(ReconcileArgs),
}

#[derive(Debug, Args)]
pub(crate) struct ReconcileArgs {
    /// Run a reconciliation now instead of showing the last one (needs the ops role).
    #[arg(long)]
    now: bool,
    /// Exit with status 1 when the report has any discrepancy.
    #[arg(long)]
    fail_if_any: bool,
    /// The saga runner's base URL.
    #[arg(long, env = "FM_SAGA_URL", default_value = "http://127.0.0.1:8084")]
    url: String,
    #[arg(long, value_enum, default_value_t = Output::Pretty)]
    output: Output,
}

pub(crate) async fn payments(command: PaymentsCommand) -> anyhow::Result<()> {
    let PaymentsCommand::Reconcile(args) = command;
    let (token, _) = ops_token("fmctl").await?;
    let base = args.url.trim_end_matches('/');
    let url = format!("{base}/reconciliation");
    let client = reqwest::Client::new();
    let request = if args.now {
        client.post(&url)
    } else {
        client.get(&url)
    };
    let response = request.bearer_auth(token).send().await.with_context(|| {
        format!("Failed to reach the saga runner at {base} (--url or FM_SAGA_URL)")
    })?;
    let status = response.status();
    let report: Value = response.json().await.unwrap_or(Value::Null);
    if status.as_u16() == 404 && !args.now {
        bail!(
            "no reconciliation has run yet (the schedule's first run is one interval after the \
             start); `fmctl payments reconcile --now` runs one"
        );
    }
    if !status.is_success() {
        let detail = report["detail"]
            .as_str()
            .or_else(|| report["title"].as_str())
            .unwrap_or("no detail");
        bail!("the saga runner answered {status}: {detail}");
    }
    let findings = |key: &str| report[key].as_array().cloned().unwrap_or_default();
    let (discrepancies, explained) = (findings("discrepancies"), findings("explained"));
    match args.output {
        Output::Json => println!("{report}"),
        Output::Pretty => {
            println!(
                "reconciliation finished at {}: {} capture(s) checked, {} in flight, {} discrepancy(ies), {} explained",
                report["finished_at"].as_str().unwrap_or("?"),
                report["captures_checked"],
                report["in_flight"],
                discrepancies.len(),
                explained.len()
            );
            for (heading, list) in [("discrepancies", &discrepancies), ("explained", &explained)] {
                if list.is_empty() {
                    continue;
                }
                println!("{heading}:");
                println!(
                    "  {:<26}  {:<36}  {:<24}  {:>12}  {:<10}  detail",
                    "kind", "booking", "capture", "kept", "booking is"
                );
                for finding in list {
                    println!(
                        "  {:<26}  {:<36}  {:<24}  {:>12}  {:<10}  {}{}",
                        finding["kind"].as_str().unwrap_or("?"),
                        finding["booking_id"].as_str().unwrap_or("?"),
                        finding["capture_reference"].as_str().unwrap_or("?"),
                        format!(
                            "{} {}",
                            finding["kept_minor"],
                            finding["currency"].as_str().unwrap_or("")
                        ),
                        finding["booking_status"].as_str().unwrap_or("unknown"),
                        finding["detail"].as_str().unwrap_or(""),
                        finding["action"]
                            .as_str()
                            .map(|action| format!(" (action: {action})"))
                            .unwrap_or_default()
                    );
                }
            }
        }
    }
    if args.fail_if_any && !discrepancies.is_empty() {
        bail!(
            "the reconciliation found {} capture(s) that no booking kept",
            discrepancies.len()
        );
    }
    Ok(())
}
