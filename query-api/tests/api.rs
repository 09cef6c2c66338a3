//! The query-api's HTTP contract where no query runs: what it answers before it reads the read
//! models (authentication, parameters, the consistency token) must be what its OpenAPI document
//! declares. Regressions found by `compose/fuzz` (docs/reliability.md, "API fuzzing"). The
//! database URL points nowhere: a request that reached PostgreSQL would fail the test.

#![allow(clippy::unwrap_used)] // A test fails loudly on any unexpected error; that is the point.

use platform::{
    openapi::declared_response, rate_limit::RateLimitSettings, settings::DatabaseSettings,
    shutdown::CancellationToken,
};
use query_api::{Application, Settings};
use reqwest::{Client, StatusCode};
use schemas::Role;
use serde_json::Value;

struct Service {
    url: String,
    token: String,
    document: Value,
    shutdown: CancellationToken,
}

impl Drop for Service {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn start() -> Service {
    start_with(RateLimitSettings::UNLIMITED).await
}

async fn start_with(limits: RateLimitSettings) -> Service {
    let database = DatabaseSettings {
        url: "postgres://fm:fm@127.0.0.1:9/nowhere".to_owned().into(),
        ..DatabaseSettings::default()
    };
    let mut settings = Settings::new(test_support::auth_settings(), database);
    settings.http.port = 0;
    settings.limits = limits;
    let shutdown = CancellationToken::new();
    let url = test_support::spawn_app::<Application>(settings, &shutdown)
        .await
        .unwrap();
    let document = Client::new()
        .get(format!("{url}/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = test_support::token(Role::Director, "director-1").await;
    Service {
        url,
        token,
        document,
        shutdown,
    }
}

/// GETs `path` with the director's token and `headers`; checks that the answer has `status`,
/// declared for `template` with the content type it has; returns the body.
async fn get_as_declared(
    service: &Service,
    (path, template): (&str, &str),
    headers: &[(&str, &str)],
    status: StatusCode,
) -> Value {
    let mut request = Client::new()
        .get(format!("{}{path}", service.url))
        .bearer_auth(&service.token);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), status, "GET {path}");
    let declared = declared_response(&service.document, "get", template, status.as_u16())
        .unwrap_or_else(|| panic!("GET {template} answered {status}, which is not declared"));
    let content_type = response.headers()["content-type"].to_str().unwrap();
    assert!(
        declared["content"].get(content_type).is_some(),
        "GET {template} answered {status} as {content_type}, declared as {}",
        declared["content"]
    );
    response.json().await.unwrap()
}

#[tokio::test]
async fn a_malformed_consistency_token_is_a_declared_problem() {
    let service = start().await;
    let id = uuid::Uuid::new_v4();
    for template in ["/bookings/{id}", "/facilities/{id}"] {
        let path = template.replace("{id}", &id.to_string());
        let problem = get_as_declared(
            &service,
            (&path, template),
            &[("consistency-token", "not-a-token")],
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
        assert_eq!(problem["errors"][0]["field"], "Consistency-Token");
    }
}

#[tokio::test]
async fn a_subject_over_its_rate_of_consistency_waits_gets_429_and_others_do_not() {
    let service = start_with(RateLimitSettings {
        per_subject_per_minute: 1,
        per_subject_burst: 2,
        ..RateLimitSettings::UNLIMITED
    })
    .await;
    let template = "/bookings/{id}";
    let path = template.replace("{id}", &uuid::Uuid::new_v4().to_string());
    let waits = [("consistency-token", "not-a-token")];
    for _ in 0..2 {
        get_as_declared(
            &service,
            (&path, template),
            &waits,
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
    }
    let throttled = Client::new()
        .get(format!("{}{path}", service.url))
        .bearer_auth(&service.token)
        .header(waits[0].0, waits[0].1)
        .send()
        .await
        .unwrap();
    assert_eq!(throttled.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(declared_response(&service.document, "get", template, 429).is_some());
    let seconds: u64 = throttled.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&seconds), "Retry-After: {seconds}");
    assert_eq!(
        throttled.headers()["content-type"],
        "application/problem+json"
    );
    let problem: Value = throttled.json().await.unwrap();
    assert_eq!(problem["errors"][0]["rule"], "rate_limit.per_subject");

    let family = test_support::token(Role::Family, "family-1").await;
    let other = Client::new()
        .get(format!("{}{path}", service.url))
        .bearer_auth(&family)
        .header(waits[0].0, waits[0].1)
        .send()
        .await
        .unwrap();
    assert_eq!(
        other.status(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "another subject's budget is its own"
    );
}

#[tokio::test]
async fn a_consistency_token_beyond_the_end_of_the_log_is_refused_at_once() {
    let kafka = test_support::fresh_kafka().await.unwrap();
    let database = DatabaseSettings {
        url: "postgres://fm:fm@127.0.0.1:9/nowhere".to_owned().into(),
        ..DatabaseSettings::default()
    };
    let mut settings = Settings::new(test_support::auth_settings(), database);
    settings.http.port = 0;
    settings.kafka = Some(kafka.clone());
    // A wait far longer than an answer at once may take (two questions to the log of at most
    // 2 s each, half a second apart), so that a token held for the wait cannot pass.
    settings.consistency.max_wait = std::time::Duration::from_secs(30);
    let shutdown = CancellationToken::new();
    let url = test_support::spawn_app::<Application>(settings, &shutdown)
        .await
        .unwrap();
    let service = Service {
        document: Client::new()
            .get(format!("{url}/openapi.json"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap(),
        url,
        token: test_support::token(Role::Director, "director-1").await,
        shutdown,
    };
    let topic = event_log::Topics::new(&kafka.topic_prefix).event_topics()[0].clone();
    let template = "/bookings/{id}";
    let path = template.replace("{id}", &uuid::Uuid::new_v4().to_string());
    for token in [
        format!("{topic}:0:0"),
        format!("{topic}:0:1000000"),
        "another-deployment.booking.events:0:0".to_owned(),
    ] {
        let started = std::time::Instant::now();
        let problem = get_as_declared(
            &service,
            (&path, template),
            &[("consistency-token", &token)],
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
        assert_eq!(
            problem["errors"][0]["rule"], "consistency_token.beyond_log",
            "{token}"
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "answered at once, not after the 30 s wait: {:?}",
            started.elapsed()
        );
    }
}

#[tokio::test]
async fn every_read_declares_conditional_answers() {
    let service = start().await;
    for template in [
        "/bookings",
        "/bookings/{id}",
        "/facilities",
        "/facilities/{id}",
        "/facilities/{id}/calendar",
    ] {
        let operation = &service.document["paths"][template]["get"];
        assert!(
            declared_response(&service.document, "get", template, 304).is_some(),
            "GET {template} answers 304 to If-None-Match"
        );
        assert!(
            operation["responses"]["200"]["headers"]["ETag"].is_object(),
            "GET {template} sends an ETag"
        );
        let takes_if_none_match = operation["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|parameter| parameter["name"] == "If-None-Match");
        assert!(takes_if_none_match, "GET {template} reads If-None-Match");
    }
}

#[tokio::test]
async fn a_path_id_that_is_not_a_uuid_is_a_problem_naming_it() {
    let service = start().await;
    // Was axum's plain-text 400, declared nowhere.
    for (path, template) in [
        ("/bookings/not-a-uuid", "/bookings/{id}"),
        ("/facilities/null%2Cnull", "/facilities/{id}"),
        (
            "/facilities/%C3%82%C2%BC/calendar?from=2027-03-01T00:00:00Z&to=2027-03-02T00:00:00Z",
            "/facilities/{id}/calendar",
        ),
    ] {
        let problem = get_as_declared(
            &service,
            (path, template),
            &[],
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
        assert_eq!(problem["errors"][0]["field"], "id", "{path}");
    }
}
