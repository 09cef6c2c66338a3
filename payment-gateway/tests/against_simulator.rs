//! The HTTP adapter and the breaker against the real simulator over real sockets: each test
//! starts its own simulator in-process on port 0 and drives it through `HttpGateway`.

#![allow(clippy::unwrap_used)] // A test fails loudly on any unexpected error; that is the point.

use std::time::{Duration, Instant};

use domain::{
    payment::PaymentStatus,
    values::{BookingId, Currency, Money},
};
use gateway_simulator::{Application, Settings};
use payment_gateway::{
    BreakerPolicy, BreakingGateway, CaptureRequest, CircuitState, GatewayError, GatewaySettings,
    HttpGateway, PaymentGateway, RefundRequest,
};
use platform::shutdown::CancellationToken;
use serde_json::{Value, json};

struct Simulator {
    url: String,
    http: reqwest::Client,
    shutdown: CancellationToken,
}

impl Drop for Simulator {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Simulator {
    async fn start() -> Self {
        let mut settings = Settings::default();
        settings.http.port = 0;
        let shutdown = CancellationToken::new();
        let url = test_support::spawn_app::<Application>(settings, &shutdown)
            .await
            .unwrap();
        Self {
            url,
            http: reqwest::Client::new(),
            shutdown,
        }
    }

    /// An adapter whose requests time out after `timeout`.
    fn gateway(&self, timeout: Duration) -> HttpGateway {
        HttpGateway::new(&GatewaySettings {
            base_url: self.url.clone(),
            request_timeout: timeout,
            connect_timeout: Duration::from_secs(1),
        })
        .unwrap()
    }

    async fn control(&self, behaviour: Value) {
        let response = self
            .http
            .put(format!("{}/control", self.url))
            .json(&behaviour)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    }

    async fn ledger(&self) -> Value {
        self.http
            .get(format!("{}/ledger", self.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

const TIMEOUT: Duration = Duration::from_millis(1500);

fn gbp(minor: i64) -> Money {
    Money::new(minor, Currency::GBP).unwrap()
}

fn capture(key: &str) -> CaptureRequest {
    CaptureRequest {
        idempotency_key: key.to_owned(),
        booking_id: BookingId::new(),
        amount: gbp(125_000),
    }
}

fn captures_in(ledger: &Value) -> usize {
    ledger["captures"].as_array().unwrap().len()
}

#[tokio::test]
async fn an_approved_capture_takes_the_money_once() {
    let sim = Simulator::start().await;
    let captured = sim.gateway(TIMEOUT).capture(&capture("k1")).await.unwrap();
    assert!(captured.reference.starts_with("cap_"));
    let ledger = sim.ledger().await;
    assert_eq!(captures_in(&ledger), 1);
    assert_eq!(
        ledger["captures"][0]["reference"],
        captured.reference.as_str()
    );
    assert_eq!(ledger["totals"]["GBP"]["captured_minor"], 125_000);
}

#[tokio::test]
async fn a_declined_capture_is_a_decline_with_its_reason() {
    let sim = Simulator::start().await;
    sim.control(json!({"mode": "decline", "decline_reason": "insufficient_funds"}))
        .await;
    let gateway = sim.gateway(TIMEOUT);
    let error = gateway.capture(&capture("k1")).await.unwrap_err();
    assert_eq!(
        error,
        GatewayError::Declined {
            reason: "insufficient_funds".to_owned()
        }
    );
    assert_eq!(captures_in(&sim.ledger().await), 0);
    let record = gateway.lookup("k1").await.unwrap().unwrap();
    assert_eq!(record.status, PaymentStatus::Declined);
    assert_eq!(record.decline_reason.as_deref(), Some("insufficient_funds"));
}

#[tokio::test]
async fn a_retried_capture_with_the_same_key_charges_once() {
    let sim = Simulator::start().await;
    let gateway = sim.gateway(TIMEOUT);
    let request = capture("same-key");
    let first = gateway.capture(&request).await.unwrap();
    let again = gateway.capture(&request).await.unwrap();
    assert_eq!(first, again);

    // Concurrent retries, all in flight at once while the simulator is slow.
    sim.control(json!({"mode": "slow", "delay_ms": 200})).await;
    let request = capture("raced-key");
    let answers = futures_join(&gateway, &request, 5).await;
    assert!(
        answers.windows(2).all(|pair| pair[0] == pair[1]),
        "{answers:?}"
    );

    assert_eq!(captures_in(&sim.ledger().await), 2);
    assert_eq!(
        sim.ledger().await["totals"]["GBP"]["captured_minor"],
        250_000
    );
}

/// Sends `n` copies of `request` at once and returns their answers.
async fn futures_join(gateway: &HttpGateway, request: &CaptureRequest, n: usize) -> Vec<String> {
    let mut tasks = Vec::new();
    for _ in 0..n {
        let gateway = gateway.clone();
        let request = request.clone();
        tasks.push(tokio::spawn(async move {
            gateway.capture(&request).await.unwrap().reference
        }));
    }
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.unwrap());
    }
    answers
}

#[tokio::test]
async fn the_same_key_with_another_body_is_rejected() {
    let sim = Simulator::start().await;
    let gateway = sim.gateway(TIMEOUT);
    gateway.capture(&capture("k1")).await.unwrap();
    let other = capture("k1"); // another booking id
    let error = gateway.capture(&other).await.unwrap_err();
    assert!(
        matches!(error, GatewayError::Rejected { status: 422, .. }),
        "{error:?}"
    );
    assert_eq!(captures_in(&sim.ledger().await), 1);
}

#[tokio::test]
async fn a_slow_answer_within_the_timeout_succeeds() {
    let sim = Simulator::start().await;
    sim.control(json!({"mode": "slow", "delay_ms": 200})).await;
    let started = Instant::now();
    sim.gateway(TIMEOUT).capture(&capture("k1")).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(captures_in(&sim.ledger().await), 1);
}

#[tokio::test]
async fn no_answer_is_a_timeout_after_the_clients_timeout_and_moves_no_money() {
    let sim = Simulator::start().await;
    sim.control(json!({"mode": "timeout"})).await;
    let gateway = sim.gateway(Duration::from_millis(300));
    let started = Instant::now();
    let error = gateway.capture(&capture("k1")).await.unwrap_err();
    let waited = started.elapsed();
    assert_eq!(error, GatewayError::Timeout);
    assert!(waited >= Duration::from_millis(300), "{waited:?}");
    assert!(waited < Duration::from_secs(2), "{waited:?}");
    assert_eq!(gateway.lookup("k1").await.unwrap(), None);
    assert_eq!(captures_in(&sim.ledger().await), 0);
}

#[tokio::test]
async fn a_capture_whose_answer_timed_out_is_found_by_lookup_and_counted_once() {
    let sim = Simulator::start().await;
    sim.control(json!({"mode": "capture_then_timeout"})).await;
    let gateway = sim.gateway(Duration::from_millis(300));
    let request = capture("k1");
    assert_eq!(
        gateway.capture(&request).await.unwrap_err(),
        GatewayError::Timeout
    );

    let record = gateway.lookup("k1").await.unwrap().unwrap();
    assert_eq!(record.status, PaymentStatus::Captured);
    assert_eq!(record.amount, gbp(125_000));
    let reference = record.reference.unwrap();

    // A retry with the same key gets the first answer at once instead of hanging again.
    let retried = gateway.capture(&request).await.unwrap();
    assert_eq!(retried.reference, reference);
    let ledger = sim.ledger().await;
    assert_eq!(captures_in(&ledger), 1);
    assert_eq!(ledger["totals"]["GBP"]["captured_minor"], 125_000);
}

#[tokio::test]
async fn a_5xx_is_a_server_error_and_moves_no_money() {
    let sim = Simulator::start().await;
    sim.control(json!({"mode": "error_5xx"})).await;
    let gateway = sim.gateway(TIMEOUT);
    let error = gateway.capture(&capture("k1")).await.unwrap_err();
    assert_eq!(error, GatewayError::Server(500));
    assert!(error.is_retryable());
    assert_eq!(gateway.lookup("k1").await.unwrap(), None);
    assert_eq!(captures_in(&sim.ledger().await), 0);
}

#[tokio::test]
async fn an_unreachable_gateway_is_unavailable() {
    let sim = Simulator::start().await;
    let gateway = sim.gateway(TIMEOUT);
    sim.shutdown.cancel();
    // Wait until the listener is gone.
    let mut error = None;
    for _ in 0..100 {
        match gateway.lookup("k").await {
            Err(failure) => {
                error = Some(failure);
                break;
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
    assert!(
        matches!(error, Some(GatewayError::Unavailable(_))),
        "{error:?}"
    );
}

#[tokio::test]
async fn refunds_are_idempotent_and_never_exceed_the_capture() {
    let sim = Simulator::start().await;
    let gateway = sim.gateway(TIMEOUT);
    let captured = gateway.capture(&capture("c1")).await.unwrap();
    let refund = |key: &str, minor| RefundRequest {
        idempotency_key: key.to_owned(),
        capture_reference: captured.reference.clone(),
        amount: gbp(minor),
    };
    let first = gateway.refund(&refund("r1", 100_000)).await.unwrap();
    assert_eq!(gateway.refund(&refund("r1", 100_000)).await.unwrap(), first);
    let too_much = gateway.refund(&refund("r2", 25_001)).await.unwrap_err();
    assert!(
        matches!(too_much, GatewayError::Rejected { status: 422, .. }),
        "{too_much:?}"
    );
    let unknown = RefundRequest {
        capture_reference: "cap_unknown".to_owned(),
        ..refund("r3", 1)
    };
    assert!(matches!(
        gateway.refund(&unknown).await.unwrap_err(),
        GatewayError::Rejected { status: 404, .. }
    ));

    let record = gateway.lookup("r1").await.unwrap().unwrap();
    assert_eq!(record.status, PaymentStatus::Refunded);
    assert_eq!(record.reference, Some(first.reference));
    let ledger = sim.ledger().await;
    assert_eq!(ledger["refunds"].as_array().unwrap().len(), 1);
    assert_eq!(ledger["totals"]["GBP"]["refunded_minor"], 100_000);
}

#[tokio::test]
async fn the_breaker_opens_on_5xx_fails_fast_half_opens_and_closes_when_the_gateway_recovers() {
    let sim = Simulator::start().await;
    let cool_down = Duration::from_millis(300);
    let gateway = BreakingGateway::new(
        sim.gateway(Duration::from_millis(300)),
        BreakerPolicy {
            failure_threshold: 3,
            cool_down,
        },
    );
    sim.control(json!({"mode": "error_5xx"})).await;
    for attempt in 0..3 {
        assert_eq!(
            gateway.capture(&capture(&format!("k{attempt}"))).await,
            Err(GatewayError::Server(500))
        );
    }
    assert_eq!(gateway.state(), CircuitState::Open);

    // While open nothing reaches the simulator: in `timeout` mode a call that went through
    // would end in Timeout, not CircuitOpen.
    sim.control(json!({"mode": "timeout"})).await;
    assert_eq!(
        gateway.capture(&capture("k9")).await,
        Err(GatewayError::CircuitOpen)
    );
    assert_eq!(gateway.lookup("k9").await, Err(GatewayError::CircuitOpen));

    // The gateway recovers; after the cool-down one probe goes through and closes the circuit.
    sim.control(json!({"mode": "approve"})).await;
    tokio::time::sleep(cool_down * 2).await;
    assert_eq!(gateway.state(), CircuitState::HalfOpen);
    gateway.capture(&capture("k10")).await.unwrap();
    assert_eq!(gateway.state(), CircuitState::Closed);
    assert_eq!(captures_in(&sim.ledger().await), 1);
}

#[tokio::test]
async fn a_failed_probe_opens_the_circuit_again() {
    let sim = Simulator::start().await;
    let cool_down = Duration::from_millis(200);
    let gateway = BreakingGateway::new(
        sim.gateway(TIMEOUT),
        BreakerPolicy {
            failure_threshold: 1,
            cool_down,
        },
    );
    sim.control(json!({"mode": "error_5xx"})).await;
    assert_eq!(
        gateway.capture(&capture("k1")).await,
        Err(GatewayError::Server(500))
    );
    tokio::time::sleep(cool_down * 2).await;
    assert_eq!(
        gateway.capture(&capture("k2")).await,
        Err(GatewayError::Server(500))
    );
    assert_eq!(gateway.state(), CircuitState::Open);
}

#[tokio::test]
async fn declines_do_not_open_the_breaker() {
    let sim = Simulator::start().await;
    let gateway = BreakingGateway::new(
        sim.gateway(TIMEOUT),
        BreakerPolicy {
            failure_threshold: 1,
            cool_down: Duration::from_mins(1),
        },
    );
    sim.control(json!({"mode": "decline"})).await;
    for attempt in 0..3 {
        let result = gateway.capture(&capture(&format!("k{attempt}"))).await;
        assert!(matches!(result, Err(GatewayError::Declined { .. })));
    }
    assert_eq!(gateway.state(), CircuitState::Closed);
}
