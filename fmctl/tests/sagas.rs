//! `fmctl sagas`, the real binary, against a saga runner (in this process) on the real broker,
//! PostgreSQL, gateway simulator and SMTP sink: a declined booking shows up as compensated and
//! done, its facts and steps are shown in full, and `--fail-if-any` fails exactly when the list
//! is not empty.

#![allow(clippy::unwrap_used)] // A test fails loudly on any unexpected error; that is the point.

use std::time::Duration;

use gateway_simulator::Mode;
use platform::{settings::DatabaseSettings, shutdown::CancellationToken};
use schemas::Role;
use secrecy::SecretString;
use serde_json::Value;
use system_tests::{TestStack, bodies, simulator::Simulator, smtp_sink::SmtpSink};

struct Run {
    status: i32,
    stdout: String,
    stderr: String,
}

async fn fmctl(saga_url: &str, args: &[&str]) -> Run {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_fmctl"))
        .args(args)
        .env("FM_SAGA_URL", saga_url)
        .envs(test_support::auth_env())
        .envs(test_support::client_env(test_support::FMCTL_CLIENT))
        .output()
        .await
        .unwrap();
    Run {
        status: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
    }
}

/// A saga runner in this process on the stack's broker and database; it stops when the returned
/// token is cancelled.
async fn start_runner(
    stack: &TestStack,
    simulator: &Simulator,
    sink: &SmtpSink,
) -> (String, CancellationToken) {
    let mut settings = saga_runner::Settings::with_auth(test_support::saga_runner_auth_settings());
    settings.http = platform::settings::HttpSettings::on_port(0);
    settings.kafka = stack.kafka.clone();
    settings.database = DatabaseSettings {
        url: SecretString::from(stack.database_url.clone()),
        ..DatabaseSettings::default()
    };
    settings.saga.command_url.clone_from(&stack.command_url);
    settings.gateway = simulator.gateway_settings();
    settings.smtp = sink.settings();
    let shutdown = CancellationToken::new();
    let saga_url = test_support::spawn_app::<saga_runner::Application>(settings, &shutdown)
        .await
        .unwrap();
    (saga_url, shutdown)
}

/// Registers a facility and requests a booking there; returns the booking id.
async fn book(stack: &TestStack) -> String {
    let director = stack.token(Role::Director, "director-1").await;
    let facility: Value = stack
        .http
        .post(format!("{}/facilities", stack.command_url))
        .bearer_auth(&director)
        .json(&bodies::facility())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let facility = facility["facility_id"].as_str().unwrap();
    let booking: Value = stack
        .http
        .post(format!("{}/bookings", stack.command_url))
        .bearer_auth(&director)
        .json(&bodies::booking(facility, 3))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    booking["booking_id"].as_str().unwrap().to_owned()
}

#[tokio::test]
#[allow(clippy::too_many_lines)] // One story: set up, book, then every view of it.
async fn sagas_lists_in_flight_compensated_and_one_booking_in_full() {
    let stack = TestStack::spawn().await.unwrap();
    let simulator = Simulator::spawn().await.unwrap();
    let sink = SmtpSink::start().await.unwrap();
    simulator.set_mode(Mode::Decline).await.unwrap();
    let (saga_url, shutdown) = start_runner(&stack, &simulator, &sink).await;
    let booking = book(&stack).await;

    // The declined booking ends compensated and done.
    let deadline = tokio::time::Instant::now() + Duration::from_mins(1);
    let listed = loop {
        let run = fmctl(
            &saga_url,
            &["sagas", "--filter", "compensated", "--output", "json"],
        )
        .await;
        assert_eq!(run.status, 0, "{}", run.stderr);
        let body: Value = serde_json::from_str(&run.stdout).unwrap();
        let done = body["sagas"]
            .as_array()
            .unwrap()
            .iter()
            .find(|saga| saga["booking_id"] == booking.as_str() && saga["done"] == true)
            .cloned();
        if let Some(saga) = done {
            break saga;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not compensated: {body}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(listed["stage"], "done");

    // Nothing in flight: --fail-if-any passes; the done list is not empty: it fails.
    let in_flight = fmctl(&saga_url, &["sagas", "--fail-if-any"]).await;
    assert_eq!(
        in_flight.status, 0,
        "{}{}",
        in_flight.stdout, in_flight.stderr
    );
    assert!(
        in_flight.stdout.contains("payment gateway circuit: closed"),
        "{}",
        in_flight.stdout
    );
    let done = fmctl(&saga_url, &["sagas", "--filter", "done", "--fail-if-any"]).await;
    assert_eq!(done.status, 1);
    assert!(done.stdout.contains(&booking), "{}", done.stdout);
    assert!(
        done.stderr.contains("1 saga(s) match --filter done"),
        "{}",
        done.stderr
    );

    // One booking in full: its facts and the steps performed, compensations included.
    let one = fmctl(&saga_url, &["sagas", "--booking", &booking]).await;
    assert_eq!(one.status, 0, "{}", one.stderr);
    for expected in ["\"declined\"", "release_slot", "notify_failure", "facts:"] {
        assert!(
            one.stdout.contains(expected),
            "{expected} missing: {}",
            one.stdout
        );
    }
    let unknown = fmctl(
        &saga_url,
        &["sagas", "--booking", "00000000-0000-4000-8000-000000000000"],
    )
    .await;
    assert_eq!(unknown.status, 1);
    assert!(
        unknown.stderr.contains("no saga for that booking"),
        "{}",
        unknown.stderr
    );
    shutdown.cancel();
}

/// Issue 14: a step that fails for good (the gateway refuses the capture itself, 422) parks the
/// saga at once, instead of retrying until the deadline; `--filter parked` lists it; an operator
/// resolves it by hand with `fmctl sagas resolve`, which the log records with who and why; a
/// resolved saga refuses further actions with a sentence and a non-zero status.
#[tokio::test]
async fn a_permanent_failure_parks_the_saga_and_an_operator_resolves_it_by_hand() {
    let stack = TestStack::spawn().await.unwrap();
    let simulator = Simulator::spawn().await.unwrap();
    let sink = SmtpSink::start().await.unwrap();
    simulator.set_mode(Mode::Reject).await.unwrap();
    let (saga_url, shutdown) = start_runner(&stack, &simulator, &sink).await;
    let booking = book(&stack).await;

    let deadline = tokio::time::Instant::now() + Duration::from_mins(1);
    let parked = loop {
        let run = fmctl(
            &saga_url,
            &["sagas", "--filter", "parked", "--output", "json"],
        )
        .await;
        assert_eq!(run.status, 0, "{}", run.stderr);
        let body: Value = serde_json::from_str(&run.stdout).unwrap();
        let found = body["sagas"]
            .as_array()
            .unwrap()
            .iter()
            .find(|saga| saga["booking_id"] == booking.as_str())
            .cloned();
        if let Some(saga) = found {
            break saga;
        }
        assert!(tokio::time::Instant::now() < deadline, "not parked: {body}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(parked["stage"], "parked", "{parked}");
    // Parked at once: one capture attempt, not a retry per backoff until the deadline.
    let ledger = simulator.ledger().await.unwrap();
    assert!(
        ledger.captures.is_empty(),
        "a refused capture takes nothing"
    );

    let run = fmctl(
        &saga_url,
        &[
            "sagas",
            "resolve",
            "--booking",
            &booking,
            "--reason",
            "refunded outside the system",
            "--operator",
            "alice",
        ],
    )
    .await;
    assert_eq!(run.status, 0, "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("resolve: recorded"), "{}", run.stdout);

    let deadline = tokio::time::Instant::now() + Duration::from_mins(1);
    let resolved = loop {
        let run = fmctl(
            &saga_url,
            &["sagas", "--booking", &booking, "--output", "json"],
        )
        .await;
        assert_eq!(run.status, 0, "{}", run.stderr);
        let saga: Value = serde_json::from_str(&run.stdout).unwrap();
        if saga["done"] == true {
            break saga;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not resolved: {saga}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let by_hand = &resolved["facts"]["control"]["resolved"];
    // fmctl acts with its own client's token (an ops service account of the provider); the
    // person is named in the reason.
    assert_eq!(
        by_hand["reason"], "refunded outside the system (operator alice)",
        "{resolved}"
    );
    assert!(
        by_hand["by"].as_str().unwrap().ends_with("(ops)"),
        "who resolved it is recorded: {resolved}"
    );

    // Nothing more to do with a resolved saga: one sentence, status 1.
    let run = fmctl(
        &saga_url,
        &[
            "sagas",
            "retry",
            "--booking",
            &booking,
            "--reason",
            "try again",
            "--operator",
            "bob",
        ],
    )
    .await;
    assert_eq!(run.status, 1, "{}", run.stdout);
    assert!(
        run.stderr.contains("refused to retry the saga"),
        "{}",
        run.stderr
    );
    shutdown.cancel();
}
