//! Limits on the flow (docs/security.md, API4 and API6), on the real broker: a family's open
//! bookings, the contacts of a booking, free text, a price in the request, add-ons, and write
//! rates per token
//! subject and per client address, each answered with the status and problem+json the API
//! contract names.

#![allow(clippy::unwrap_used)] // A test fails loudly on any unexpected error; that is the point.

mod support;

use command_service::settings::LimitSettings;
use event_log::KafkaSettings;
use platform::rate_limit::RateLimitSettings;
use reqwest::{Client, StatusCode};
use schemas::Role;
use serde_json::{Value, json};
use support::{Service, booking, facility, fresh_kafka, log_ends, token};

/// A command-service with `limits`, its homes' price lists published (for the tests that book).
async fn start(kafka: &KafkaSettings, limits: LimitSettings) -> Service {
    let mut settings = support::settings(kafka);
    settings.limits = limits;
    support::start_to_book(settings).await
}

/// A command-service with `limits` and no write made to it yet: publishing the price lists
/// would spend the per-address budget a test is about to measure.
async fn start_untouched(kafka: &KafkaSettings, limits: LimitSettings) -> Service {
    let mut settings = support::settings(kafka);
    settings.limits = limits;
    support::start(settings).await
}

struct Answer {
    status: StatusCode,
    content_type: String,
    retry_after: Option<String>,
    body: Value,
}

async fn post(url: &str, token: &str, key: Option<&str>, body: &Value) -> Answer {
    let mut request = Client::new().post(url).bearer_auth(token).json(body);
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    let response = request.send().await.unwrap();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|value| value.to_str().unwrap().to_owned())
    };
    let content_type = header("content-type").unwrap_or_default();
    let retry_after = header("retry-after");
    Answer {
        status: response.status(),
        content_type,
        retry_after,
        body: response.json().await.unwrap_or(Value::Null),
    }
}

async fn register_facility(service: &Service) -> String {
    let director = token(Role::Director, "director-1").await;
    let answer = post(
        &format!("{}/facilities", service.url),
        &director,
        None,
        &facility(),
    )
    .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    answer.body["facility_id"].as_str().unwrap().to_owned()
}

fn only_error(answer: &Answer) -> (&str, &str) {
    assert_eq!(answer.content_type, "application/problem+json");
    let errors = answer.body["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{}", answer.body);
    (
        errors[0]["field"].as_str().unwrap(),
        errors[0]["rule"].as_str().unwrap(),
    )
}

#[tokio::test]
async fn a_family_holds_at_most_its_limit_of_open_bookings() {
    let kafka = fresh_kafka().await;
    let limits = LimitSettings {
        max_open_bookings_per_family: 2,
        ..LimitSettings::UNLIMITED
    };
    let service = start(&kafka, limits).await;
    test_support::publish_price_lists(&service.url)
        .await
        .unwrap();
    let facility_id = register_facility(&service).await;
    let bookings = format!("{}/bookings", service.url);
    let family = token(Role::Family, "family-1").await;

    let first = post(
        &bookings,
        &family,
        Some("first"),
        &booking(&facility_id, 10),
    )
    .await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.body);
    let second = post(
        &bookings,
        &family,
        Some("second"),
        &booking(&facility_id, 11),
    )
    .await;
    assert_eq!(second.status, StatusCode::ACCEPTED, "{}", second.body);

    let ends = log_ends(&kafka).await;
    let third = post(
        &bookings,
        &family,
        Some("third"),
        &booking(&facility_id, 12),
    )
    .await;
    assert_eq!(third.status, StatusCode::CONFLICT, "{}", third.body);
    assert_eq!(only_error(&third).1, "booking.open_bookings_limit");
    assert!(
        third.body["detail"]
            .as_str()
            .unwrap()
            .contains("2 open bookings"),
        "{}",
        third.body
    );
    assert_eq!(
        log_ends(&kafka).await,
        ends,
        "a refused request writes nothing"
    );

    // A retry of a request that was accepted is the first answer, whatever the count now.
    let retried = post(
        &bookings,
        &family,
        Some("first"),
        &booking(&facility_id, 10),
    )
    .await;
    assert_eq!(retried.status, StatusCode::ACCEPTED, "{}", retried.body);
    assert_eq!(retried.body["booking_id"], first.body["booking_id"]);

    // Another family, and a director booking for a family, are not counted with this one.
    let other = token(Role::Family, "family-2").await;
    let theirs = post(&bookings, &other, None, &booking(&facility_id, 13)).await;
    assert_eq!(theirs.status, StatusCode::ACCEPTED, "{}", theirs.body);
    let director = token(Role::Director, "director-1").await;
    for day in 14..17 {
        let booked = post(&bookings, &director, None, &booking(&facility_id, day)).await;
        assert_eq!(booked.status, StatusCode::ACCEPTED, "{}", booked.body);
    }

    // A cancelled booking is closed: the family may ask again.
    let id = first.body["booking_id"].as_str().unwrap();
    let cancelled = post(
        &format!("{bookings}/{id}/cancel"),
        &family,
        None,
        &json!({"reason": "We chose another day"}),
    )
    .await;
    assert_eq!(cancelled.status, StatusCode::OK, "{}", cancelled.body);
    let again = post(
        &bookings,
        &family,
        Some("third"),
        &booking(&facility_id, 12),
    )
    .await;
    assert_eq!(again.status, StatusCode::ACCEPTED, "{}", again.body);
}

#[tokio::test]
async fn contacts_free_text_and_price_are_refused_naming_the_field_and_the_rule() {
    let kafka = fresh_kafka().await;
    let service = start(&kafka, LimitSettings::UNLIMITED).await;
    test_support::publish_price_lists(&service.url)
        .await
        .unwrap();
    let facility_id = register_facility(&service).await;
    let bookings = format!("{}/bookings", service.url);
    let family = token(Role::Family, "family-1").await;
    let ends = log_ends(&kafka).await;

    let mut body = booking(&facility_id, 10);
    let contact = body["family_contacts"][0].clone();
    body["family_contacts"] = Value::Array(
        (0..11)
            .map(|index| {
                let mut contact = contact.clone();
                contact["email"] = json!(format!("contact-{index}@example.org"));
                contact
            })
            .collect(),
    );
    let answer = post(&bookings, &family, None, &body).await;
    assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        only_error(&answer),
        ("family_contacts", "family_contacts.max_items")
    );

    let mut body = booking(&facility_id, 10);
    body["family_contacts"][0]["name"] = json!("Byron\r\nBcc: everyone@example.org");
    let answer = post(&bookings, &family, None, &body).await;
    assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        only_error(&answer),
        ("family_contacts[0].name", "person_name.control_characters")
    );

    let mut body = booking(&facility_id, 10);
    body["deceased"]["full_name"] = json!("A".repeat(201));
    let answer = post(&bookings, &family, None, &body).await;
    assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        only_error(&answer),
        ("deceased.full_name", "person_name.too_long")
    );

    // A family cannot price its own booking, not even at a penny (docs/pricing.md).
    let mut body = booking(&facility_id, 10);
    body["price"] = json!({"amount_minor": 1, "currency": "GBP"});
    let answer = post(&bookings, &family, None, &body).await;
    assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(only_error(&answer), ("price", "unknown_field"));
    let mut body = booking(&facility_id, 10);
    body["add_ons"] = json!(vec!["celebrant"; 11]);
    let answer = post(&bookings, &family, None, &body).await;
    assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(only_error(&answer), ("add_ons", "add_ons.max_items"));
    assert_eq!(log_ends(&kafka).await, ends, "nothing refused was written");

    let booked = post(&bookings, &family, None, &booking(&facility_id, 10)).await;
    assert_eq!(booked.status, StatusCode::ACCEPTED, "{}", booked.body);
    let id = booked.body["booking_id"].as_str().unwrap();
    let cancel = format!("{bookings}/{id}/cancel");
    let ends = log_ends(&kafka).await;
    for (reason, rule) in [
        ("Changed\u{1b}[2J plans", "reason.control_characters"),
        ("Changed\nplans", "reason.control_characters"),
        (&*"x".repeat(501), "reason.length"),
    ] {
        let answer = post(&cancel, &family, None, &json!({ "reason": reason })).await;
        assert_eq!(
            answer.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{reason:?}"
        );
        assert_eq!(only_error(&answer), ("reason", rule));
    }
    assert_eq!(log_ends(&kafka).await, ends, "nothing refused was written");
}

/// Writes that can only be refused (a cancel of a booking that does not exist): each still
/// counts against the caller's rate.
async fn cancel_nothing(service: &Service, token: &str) -> Answer {
    let id = uuid::Uuid::new_v4();
    post(
        &format!("{}/bookings/{id}/cancel", service.url),
        token,
        None,
        &json!({}),
    )
    .await
}

fn assert_throttled(answer: &Answer, by: &str) {
    assert_eq!(
        answer.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        answer.body
    );
    assert_eq!(answer.body["status"], 429);
    let seconds: u64 = answer.retry_after.as_deref().unwrap().parse().unwrap();
    assert!((1..=60).contains(&seconds), "Retry-After: {seconds}");
    assert_eq!(
        only_error(answer),
        (by, format!("rate_limit.per_{by}").as_str())
    );
}

#[tokio::test]
async fn a_subject_over_its_write_rate_gets_429_and_another_subject_does_not() {
    let kafka = fresh_kafka().await;
    let limits = LimitSettings {
        rate: RateLimitSettings {
            per_subject_per_minute: 1,
            per_subject_burst: 3,
            ..RateLimitSettings::UNLIMITED
        },
        ..LimitSettings::UNLIMITED
    };
    let service = start(&kafka, limits).await;
    let family = token(Role::Family, "family-1").await;
    for _ in 0..3 {
        assert_eq!(
            cancel_nothing(&service, &family).await.status,
            StatusCode::NOT_FOUND
        );
    }
    assert_throttled(&cancel_nothing(&service, &family).await, "subject");
    let other = token(Role::Family, "family-2").await;
    assert_eq!(
        cancel_nothing(&service, &other).await.status,
        StatusCode::NOT_FOUND,
        "another family's budget is its own"
    );
    let metrics = Client::new()
        .get(format!("{}/metrics", service.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.lines().any(|line| line
            .starts_with("commands_total{command=\"cancel_booking\",outcome=\"throttled\"}")),
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|line| line.starts_with("rate_limited_total{")
                && line.contains("scope=\"writes\"")
                && line.contains("key=\"subject\"")),
        "{metrics}"
    );
}

#[tokio::test]
async fn an_address_over_its_write_rate_gets_429_whatever_its_tokens() {
    let kafka = fresh_kafka().await;
    let limits = LimitSettings {
        rate: RateLimitSettings {
            per_address_per_minute: 1,
            per_address_burst: 2,
            ..RateLimitSettings::UNLIMITED
        },
        ..LimitSettings::UNLIMITED
    };
    let service = start_untouched(&kafka, limits).await;
    let family = token(Role::Family, "family-1").await;
    let other = token(Role::Family, "family-2").await;
    assert_eq!(
        cancel_nothing(&service, &family).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        cancel_nothing(&service, &other).await.status,
        StatusCode::NOT_FOUND
    );
    assert_throttled(&cancel_nothing(&service, &family).await, "address");
    assert_throttled(&cancel_nothing(&service, &other).await, "address");
}
