//! The simulator's own HTTP contract over real sockets: operational endpoints, problem bodies,
//! per-booking behaviour, and control validation.

#![allow(clippy::unwrap_used)] // A test fails loudly on any unexpected error; that is the point.

use gateway_simulator::{Application, Settings};
use platform::shutdown::CancellationToken;
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

struct Simulator {
    url: String,
    http: Client,
    shutdown: CancellationToken,
}

impl Drop for Simulator {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn start() -> Simulator {
    let mut settings = Settings::default();
    settings.http.port = 0;
    let shutdown = CancellationToken::new();
    let url = test_support::spawn_app::<Application>(settings, &shutdown)
        .await
        .unwrap();
    Simulator {
        url,
        http: Client::new(),
        shutdown,
    }
}

impl Simulator {
    async fn capture(&self, key: Option<&str>, booking: Uuid) -> reqwest::Response {
        let mut request = self
            .http
            .post(format!("{}/captures", self.url))
            .json(&json!({
                "booking_id": booking,
                "amount": {"amount_minor": 5000, "currency": "GBP"}
            }));
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        request.send().await.unwrap()
    }
}

#[tokio::test]
async fn serves_health_ready_metrics_and_openapi() {
    let sim = start().await;
    for path in ["/health", "/ready", "/metrics", "/openapi.json"] {
        let response = sim
            .http
            .get(format!("{}{path}", sim.url))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
    }
    let openapi: Value = sim
        .http
        .get(format!("{}/openapi.json", sim.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for path in [
        "/captures",
        "/refunds",
        "/payments/{idempotency_key}",
        "/ledger",
        "/control",
    ] {
        assert!(openapi["paths"][path].is_object(), "{path}");
    }
}

#[tokio::test]
async fn a_capture_without_an_idempotency_key_is_refused_with_a_problem() {
    let sim = start().await;
    let response = sim.capture(None, Uuid::new_v4()).await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["errors"][0]["field"], "Idempotency-Key");
}

#[tokio::test]
async fn bad_money_is_refused_naming_the_field() {
    let sim = start().await;
    for (amount, field) in [
        (
            json!({"amount_minor": 0, "currency": "GBP"}),
            "amount.amount_minor",
        ),
        (
            json!({"amount_minor": 10, "currency": "XYZ"}),
            "amount.currency",
        ),
        (
            json!({"amount_minor": 12.5, "currency": "GBP"}),
            "amount.amount_minor",
        ),
    ] {
        let response = sim
            .http
            .post(format!("{}/captures", sim.url))
            .header("Idempotency-Key", "k")
            .json(&json!({"booking_id": Uuid::new_v4(), "amount": amount}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["errors"][0]["field"], field, "{problem}");
    }
}

#[tokio::test]
async fn each_booking_can_have_its_own_outcome() {
    let sim = start().await;
    let declined = Uuid::new_v4();
    let approved = Uuid::new_v4();
    let response = sim
        .http
        .put(format!("{}/control/bookings/{declined}", sim.url))
        .json(&json!({"mode": "decline", "decline_reason": "card_expired"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    let (refused, taken) = tokio::join!(
        sim.capture(Some("a"), declined),
        sim.capture(Some("b"), approved)
    );
    assert_eq!(refused.status(), StatusCode::PAYMENT_REQUIRED);
    assert_eq!(
        refused.headers()["content-type"],
        "application/problem+json"
    );
    let problem: Value = refused.json().await.unwrap();
    assert_eq!(problem["reason"], "card_expired");
    assert_eq!(taken.status(), StatusCode::CREATED);
    let body: Value = taken.json().await.unwrap();
    assert_eq!(body["status"], "captured");

    let lookup: Value = sim
        .http
        .get(format!("{}/payments/a", sim.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(lookup["status"], "declined");
    let unknown = sim
        .http
        .get(format!("{}/payments/never-seen", sim.url))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);

    let cleared = sim
        .http
        .delete(format!("{}/control/bookings/{declined}", sim.url))
        .send()
        .await
        .unwrap();
    assert_eq!(cleared.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        sim.capture(Some("c"), declined).await.status(),
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn times_limits_a_behaviour_to_that_many_requests() {
    let sim = start().await;
    sim.http
        .put(format!("{}/control", sim.url))
        .json(&json!({"mode": "error_5xx", "times": 2}))
        .send()
        .await
        .unwrap();
    let booking = Uuid::new_v4();
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(sim.capture(Some("k"), booking).await.status());
    }
    assert_eq!(
        statuses,
        [
            StatusCode::INTERNAL_SERVER_ERROR,
            StatusCode::INTERNAL_SERVER_ERROR,
            StatusCode::CREATED
        ]
    );
}

#[tokio::test]
async fn every_documented_mode_is_accepted_and_nonsense_is_refused() {
    let sim = start().await;
    for mode in [
        "approve",
        "decline",
        "slow",
        "error_5xx",
        "timeout",
        "capture_then_timeout",
        "detached_capture",
        "reject",
    ] {
        let response = sim
            .http
            .put(format!("{}/control", sim.url))
            .json(&json!({"mode": mode, "delay_ms": 10}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{mode}");
        let control: Value = response.json().await.unwrap();
        assert_eq!(control["global"]["mode"], mode);
    }
    for bad in [
        json!({"mode": "explode"}),
        json!({"mode": "slow", "times": 0}),
    ] {
        let response = sim
            .http
            .put(format!("{}/control", sim.url))
            .json(&bad)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
    }
    let reset: Value = sim
        .http
        .delete(format!("{}/control", sim.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(reset["global"]["mode"], "approve");
}

#[tokio::test]
async fn shutdown_ends_a_hanging_request() {
    let sim = start().await;
    sim.http
        .put(format!("{}/control", sim.url))
        .json(&json!({"mode": "timeout"}))
        .send()
        .await
        .unwrap();
    let hanging = tokio::spawn({
        let http = sim.http.clone();
        let url = sim.url.clone();
        async move {
            http.post(format!("{url}/captures"))
                .header("Idempotency-Key", "k")
                .json(&json!({"booking_id": Uuid::new_v4(),
                              "amount": {"amount_minor": 1, "currency": "GBP"}}))
                .send()
                .await
        }
    });
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    sim.shutdown.cancel();
    let answer = tokio::time::timeout(std::time::Duration::from_secs(2), hanging)
        .await
        .expect("the hanging request ends at shutdown")
        .unwrap()
        .unwrap();
    assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
}

/// A real provider finishes a capture whose client gave up: the `detached_capture` mode. While
/// it works, a retry with the key is 409 and a lookup finds nothing (the hazard the saga's
/// settle window is for, docs/payments.md); then the capture is in the ledger all the same.
#[tokio::test]
async fn a_detached_capture_completes_after_its_client_has_gone() {
    let sim = start().await;
    let booking = Uuid::new_v4();
    sim.http
        .put(format!("{}/control/bookings/{booking}", sim.url))
        .json(&json!({"mode": "detached_capture", "delay_ms": 1500, "times": 1}))
        .send()
        .await
        .unwrap();
    let impatient = Client::builder()
        .timeout(std::time::Duration::from_millis(300))
        .build()
        .unwrap();
    let gave_up = impatient
        .post(format!("{}/captures", sim.url))
        .header("Idempotency-Key", "detached-1")
        .json(&json!({"booking_id": booking, "amount": {"amount_minor": 5000, "currency": "GBP"}}))
        .send()
        .await;
    assert!(gave_up.is_err_and(|error| error.is_timeout()));
    let retried = sim.capture(Some("detached-1"), booking).await;
    assert_eq!(retried.status(), StatusCode::CONFLICT);
    let lookup = |sim: &Simulator| {
        sim.http
            .get(format!("{}/payments/detached-1", sim.url))
            .send()
    };
    assert_eq!(lookup(&sim).await.unwrap().status(), StatusCode::NOT_FOUND);
    tokio::time::sleep(std::time::Duration::from_millis(1700)).await;
    let found: Value = lookup(&sim).await.unwrap().json().await.unwrap();
    assert_eq!(found["status"], "captured", "{found}");
    let listed: Value = sim
        .http
        .get(format!("{}/captures?since=2000-01-01T00:00:00Z", sim.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["booking_id"], booking.to_string());
    assert!(listed[0]["created_at"].is_string(), "{listed}");
    // The retry now gets the first answer.
    assert_eq!(
        sim.capture(Some("detached-1"), booking).await.status(),
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn reject_mode_refuses_the_request_itself_and_records_nothing() {
    let sim = start().await;
    let booking = Uuid::new_v4();
    sim.http
        .put(format!("{}/control/bookings/{booking}", sim.url))
        .json(&json!({"mode": "reject"}))
        .send()
        .await
        .unwrap();
    let refused = sim.capture(Some("rejected-1"), booking).await;
    assert_eq!(refused.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let problem: Value = refused.json().await.unwrap();
    assert_eq!(
        problem["type"]
            .as_str()
            .map(|t| t.ends_with("request-rejected")),
        Some(true),
        "{problem}"
    );
    let lookup = sim
        .http
        .get(format!("{}/payments/rejected-1", sim.url))
        .send()
        .await
        .unwrap();
    assert_eq!(lookup.status(), StatusCode::NOT_FOUND);
}
