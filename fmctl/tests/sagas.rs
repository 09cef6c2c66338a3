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
        .envs(test_support::privacy_env())
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
    start_runner_mailing(stack, simulator, sink.settings()).await
}

/// As [`start_runner`], sending its letters through `smtp`.
async fn start_runner_mailing(
    stack: &TestStack,
    simulator: &Simulator,
    smtp: notifications::SmtpSettings,
) -> (String, CancellationToken) {
    let mut settings = saga_runner::Settings::with_auth(test_support::saga_runner_auth_settings());
    settings.http = platform::settings::HttpSettings::on_port(0);
    settings.privacy = Some(test_support::privacy_settings());
    settings.kafka = stack.kafka.clone();
    settings.database = DatabaseSettings {
        url: SecretString::from(stack.database_url.clone()),
        ..DatabaseSettings::default()
    };
    settings.saga.command_url.clone_from(&stack.command_url);
    settings.gateway = simulator.gateway_settings();
    settings.smtp = smtp;
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

/// Issue 14: `fmctl payments reconcile` shows the runner's payment reconciliation. Before any
/// run it says so (exit 1); a run over a clean ledger passes `--fail-if-any`; a capture the
/// provider made for a booking no saga knows is a discrepancy, named with its booking, that
/// `--fail-if-any` turns into exit 1; without `--now` the last report is shown again.
#[tokio::test]
async fn payments_reconcile_names_a_capture_that_no_booking_kept() {
    use domain::values::{BookingId, Currency, Money};
    use payment_gateway::{CaptureRequest, HttpGateway, PaymentGateway};

    let stack = TestStack::spawn().await.unwrap();
    let simulator = Simulator::spawn().await.unwrap();
    let sink = SmtpSink::start().await.unwrap();
    let (saga_url, shutdown) = start_runner(&stack, &simulator, &sink).await;

    let none = fmctl(&saga_url, &["payments", "reconcile"]).await;
    assert_eq!(none.status, 1, "{}", none.stdout);
    assert!(
        none.stderr.contains("no reconciliation has run yet"),
        "{}",
        none.stderr
    );
    let clean = fmctl(
        &saga_url,
        &["payments", "reconcile", "--now", "--fail-if-any"],
    )
    .await;
    assert_eq!(clean.status, 0, "{}{}", clean.stdout, clean.stderr);
    assert!(
        clean.stdout.contains("0 discrepancy(ies)"),
        "{}",
        clean.stdout
    );

    // Money taken at the provider for a booking that nobody asked the system for.
    let stray = uuid::Uuid::new_v4();
    HttpGateway::new(&simulator.gateway_settings())
        .unwrap()
        .capture(&CaptureRequest {
            idempotency_key: format!("stray-{stray}"),
            booking_id: BookingId::from_uuid(stray),
            amount: Money::new(12_345, Currency::GBP).unwrap(),
        })
        .await
        .unwrap();
    let found = fmctl(
        &saga_url,
        &["payments", "reconcile", "--now", "--fail-if-any"],
    )
    .await;
    assert_eq!(found.status, 1, "{}{}", found.stdout, found.stderr);
    assert!(found.stdout.contains("unknown_booking"), "{}", found.stdout);
    assert!(
        found.stdout.contains(&stray.to_string()),
        "{}",
        found.stdout
    );
    assert!(found.stdout.contains("12345 GBP"), "{}", found.stdout);
    assert!(
        found
            .stderr
            .contains("the reconciliation found 1 capture(s) that no booking kept"),
        "{}",
        found.stderr
    );

    let last = fmctl(&saga_url, &["payments", "reconcile", "--output", "json"]).await;
    assert_eq!(last.status, 0, "{}", last.stderr);
    let report: Value = serde_json::from_str(&last.stdout).unwrap();
    assert_eq!(report["discrepancies"][0]["booking_id"], stray.to_string());
    assert_eq!(report["discrepancies"][0]["kept_minor"], 12_345);
    shutdown.cancel();
}

/// Polls `fmctl sagas --booking` until `until` holds of the saga; returns it.
async fn saga_when(
    saga_url: &str,
    booking: &str,
    what: &str,
    until: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_mins(1);
    loop {
        let run = fmctl(
            saga_url,
            &["sagas", "--booking", booking, "--output", "json"],
        )
        .await;
        if run.status != 0 && run.stderr.contains("no saga for that booking") {
            // The runner has not read the request yet.
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: {}",
                run.stderr
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
            continue;
        }
        assert_eq!(run.status, 0, "{}", run.stderr);
        let saga: Value = serde_json::from_str(&run.stdout).unwrap();
        if until(&saga) {
            return saga;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}: {saga}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// An operator's action through `fmctl sagas <action>`, as `alice`, which must be recorded.
async fn act(saga_url: &str, action: &str, booking: &str, extra: &[&str]) {
    let mut args = vec![
        "sagas",
        action,
        "--booking",
        booking,
        "--reason",
        "the mail server is down for maintenance",
        "--operator",
        "alice",
    ];
    args.extend_from_slice(extra);
    let run = fmctl(saga_url, &args).await;
    assert_eq!(run.status, 0, "{action}: {}{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains(&format!("{action}: recorded")),
        "{}",
        run.stdout
    );
}

/// Issue 14, point 4: park, retry and skip end to end. The mail server is unreachable, so the
/// confirmed booking's letter fails again and again (transiently: it is retried). An operator
/// parks the saga (it shows in `--filter parked` and nothing more is tried), retries it (it
/// tries the letter again, and fails again), then skips the letter: the saga is done, the
/// booking stays confirmed with its money, and each action is kept with who did it and why.
#[tokio::test]
async fn an_operator_parks_retries_and_skips_a_letter_that_cannot_be_sent() {
    let stack = TestStack::spawn().await.unwrap();
    let simulator = Simulator::spawn().await.unwrap();
    let nowhere = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let smtp = notifications::SmtpSettings {
        timeout: Duration::from_secs(1),
        ..notifications::SmtpSettings::local(nowhere)
    };
    let (saga_url, shutdown) = start_runner_mailing(&stack, &simulator, smtp).await;
    let booking = book(&stack).await;

    // Confirmed and paid, then stuck on its letter.
    let failing = saga_when(
        &saga_url,
        &booking,
        "the letter is not being retried",
        |saga| {
            saga["facts"]["status"] == "confirmed"
                && saga["done"] == false
                && saga["attempts"].as_i64().unwrap_or_default() >= 2
        },
    )
    .await;
    assert!(
        failing["last_error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "{failing}"
    );

    act(&saga_url, "park", &booking, &[]).await;
    let parked = saga_when(&saga_url, &booking, "not parked", |saga| {
        saga["stage"] == "parked"
    })
    .await;
    let run = fmctl(
        &saga_url,
        &["sagas", "--filter", "parked", "--output", "json"],
    )
    .await;
    assert!(run.stdout.contains(&booking), "{}", run.stdout);
    // Parked: no pass while it stays so.
    let history_len = parked["history"].as_array().map_or(0, Vec::len);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let still = saga_when(&saga_url, &booking, "parked", |_| true).await;
    assert_eq!(still["stage"], "parked", "{still}");
    assert_eq!(
        still["history"].as_array().map_or(0, Vec::len),
        history_len,
        "a parked saga is left alone: {still}"
    );

    act(&saga_url, "retry", &booking, &[]).await;
    let retried = saga_when(&saga_url, &booking, "not retried", |saga| {
        saga["stage"] != "parked" && saga["history"].as_array().map_or(0, Vec::len) > history_len
    })
    .await;
    assert_eq!(
        retried["done"], false,
        "the letter still cannot go: {retried}"
    );

    act(
        &saga_url,
        "skip",
        &booking,
        &["--step", "notify_confirmation"],
    )
    .await;
    let done = saga_when(&saga_url, &booking, "not done", |saga| saga["done"] == true).await;
    assert_eq!(done["facts"]["status"], "confirmed", "{done}");
    let ledger = simulator.ledger().await.unwrap();
    let captures = ledger.captures_for(booking.parse().unwrap());
    assert_eq!(captures.len(), 1, "{done}");
    assert!(
        ledger.refunds_for(booking.parse().unwrap()).is_empty(),
        "{done}"
    );
    let control = done["facts"]["control"].to_string();
    assert!(control.contains("alice"), "who acted is kept: {done}");
    assert!(
        control.contains("the mail server is down for maintenance"),
        "why is kept: {done}"
    );
    shutdown.cancel();
}

/// A record of a version this release does not know parks its aggregate in the saga's
/// consumer; `fmctl sagas parked-records` lists it (with the reason and how many records wait),
/// `--fail-if-any` fails then, and neither says anything while nothing is parked.
#[tokio::test]
async fn parked_records_lists_what_the_saga_consumer_cannot_take_yet() {
    use event_log::EventProducer;
    use rdkafka::message::OwnedHeaders;
    use schemas::AggregateType;

    let stack = TestStack::spawn().await.unwrap();
    let simulator = Simulator::spawn().await.unwrap();
    let sink = SmtpSink::start().await.unwrap();
    let (saga_url, _runner) = start_runner(&stack, &simulator, &sink).await;
    let clean = fmctl(&saga_url, &["sagas", "parked-records", "--fail-if-any"]).await;
    assert_eq!(clean.status, 0, "{}", clean.stderr);
    assert!(
        clean.stdout.contains("0 aggregates parked"),
        "{}",
        clean.stdout
    );

    let facility = uuid::Uuid::new_v4();
    let from_a_newer_release = serde_json::json!({
        "event_id": uuid::Uuid::new_v4(), "event_type": "FacilityRegistered",
        "event_version": 99, "aggregate_type": "facility", "aggregate_id": facility,
        "sequence": 1, "occurred_at": "2027-01-05T09:30:00Z",
        "correlation_id": uuid::Uuid::new_v4(), "causation_id": uuid::Uuid::new_v4(),
        "actor": {"subject": "d", "role": "director"},
        "data": {"a_field_of_the_future": true}
    });
    let producer = EventProducer::new(&stack.kafka).unwrap();
    producer
        .send(
            &producer.topics().events(AggregateType::Facility),
            Some(facility.as_bytes()),
            &serde_json::to_vec(&from_a_newer_release).unwrap(),
            OwnedHeaders::new(),
        )
        .await
        .unwrap();

    let mut listed = Value::Null;
    for _ in 0..300 {
        let run = fmctl(&saga_url, &["sagas", "parked-records", "--output", "json"]).await;
        assert_eq!(run.status, 0, "{}", run.stderr);
        listed = serde_json::from_str(&run.stdout).unwrap();
        if listed["parked"].as_array().is_some_and(|p| !p.is_empty()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let parked = listed["parked"].as_array().cloned().unwrap_or_default();
    assert_eq!(parked.len(), 1, "{listed}");
    assert_eq!(parked[0]["aggregate_id"], facility.to_string(), "{listed}");
    assert_eq!(parked[0]["event_version"], 99, "{listed}");
    assert_eq!(parked[0]["records"], 1, "{listed}");
    assert!(
        parked[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("FacilityRegistered v99")),
        "{listed}"
    );
    let check = fmctl(&saga_url, &["sagas", "parked-records", "--fail-if-any"]).await;
    assert_eq!(check.status, 1, "{}", check.stdout);
    assert!(
        check.stdout.contains("1 aggregates parked")
            && check.stdout.contains(&facility.to_string()),
        "{}",
        check.stdout
    );
}
