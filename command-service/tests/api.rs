//! The command-service's HTTP contract on the real broker: bad input gets the right 4xx and
//! writes nothing; Idempotency-Key replays return the first answer, even after a restart;
//! If-Match and ownership are enforced.

#![allow(clippy::unwrap_used)] // A test fails loudly on any unexpected error; that is the point.

mod support;

use event_log::KafkaSettings;
use reqwest::{Client, StatusCode};
use schemas::Role;
use serde_json::{Value, json};
use support::{Service, booking, facility, fresh_kafka, log_ends, read_log, slot, token};

async fn start(kafka: &KafkaSettings) -> Service {
    support::start_to_book(support::settings(kafka)).await
}

async fn post(url: &str, token: Option<&str>, body: &Value) -> (StatusCode, Value) {
    let mut request = Client::new().post(url).json(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn register_facility(service: &Service) -> String {
    let director = token(Role::Director, "director-1").await;
    let (status, body) = post(
        &format!("{}/facilities", service.url),
        Some(&director),
        &facility(),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["facility_id"].as_str().unwrap().to_owned()
}

/// One row of the bad-input table: what is sent, and what must come back.
struct Case {
    name: &'static str,
    path: String,
    token: Option<String>,
    content_type: &'static str,
    body: Vec<u8>,
    status: StatusCode,
    /// The field and rule the problem must name, when it names one.
    field_rule: Option<(&'static str, &'static str)>,
}

/// Stands for the director's token in a [`Case`] (the loop puts the provider's token there).
const DIRECTOR: &str = "<the director's token>";

fn json_case(
    name: &'static str,
    path: &str,
    body: &Value,
    status: StatusCode,
    field_rule: Option<(&'static str, &'static str)>,
) -> Case {
    Case {
        name,
        path: path.to_owned(),
        token: Some(DIRECTOR.to_owned()),
        content_type: "application/json",
        body: serde_json::to_vec(body).unwrap(),
        status,
        field_rule,
    }
}

fn adding(mut body: Value, key: &str, value: Value) -> Value {
    body[key] = value;
    body
}

fn with(mut body: Value, pointer: &str, value: Value) -> Value {
    *body.pointer_mut(pointer).unwrap() = value;
    body
}

#[tokio::test]
#[allow(clippy::too_many_lines)] // The table is the test; splitting it would hide it.
async fn bad_input_gets_the_right_problem_and_writes_nothing() {
    let kafka = fresh_kafka().await;
    let service = start(&kafka).await;
    let facility_id = register_facility(&service).await;
    let facilities = format!("{}/facilities", service.url);
    let bookings = format!("{}/bookings", service.url);
    let good = booking(&facility_id, 14);
    let unprocessable = StatusCode::UNPROCESSABLE_ENTITY;

    let mut overlapping_hours = facility();
    overlapping_hours["opening_hours"] = json!([
        {"weekday": "mon", "opens": "09:00", "closes": "13:00"},
        {"weekday": "mon", "opens": "12:00", "closes": "17:00"}]);
    let mut cases = vec![
        Case {
            body: b"{\"facility_id\": ".to_vec(),
            ..json_case(
                "malformed JSON",
                &bookings,
                &good,
                StatusCode::BAD_REQUEST,
                None,
            )
        },
        json_case(
            "wrong type",
            &facilities,
            &with(facility(), "/capacity", json!("many")),
            unprocessable,
            Some(("capacity", "type")),
        ),
        json_case(
            "unknown field",
            &bookings,
            &with(
                good.clone(),
                "/deceased",
                json!({"full_name": "A", "date_of_death": "2026-01-01", "age": 90}),
            ),
            unprocessable,
            Some(("deceased.age", "unknown_field")),
        ),
        json_case(
            "missing field",
            &bookings,
            &json!({"facility_id": facility_id}),
            unprocessable,
            Some(("service_type", "required")),
        ),
        json_case(
            "past slot",
            &bookings,
            &with(good.clone(), "/slot", slot(-3, 10, 0, 60)),
            unprocessable,
            Some(("slot.start", "slot.in_past")),
        ),
        json_case(
            "slot too short",
            &bookings,
            &with(good.clone(), "/slot", slot(14, 10, 0, 10)),
            unprocessable,
            Some(("slot", "slot.duration_30min_to_8h")),
        ),
        json_case(
            "outside opening hours",
            &bookings,
            &with(good.clone(), "/slot", slot(14, 19, 30, 60)),
            unprocessable,
            Some(("slot", "slot.outside_opening_hours")),
        ),
        json_case(
            "overlapping opening hours",
            &facilities,
            &overlapping_hours,
            unprocessable,
            Some(("opening_hours", "opening_hours.overlap")),
        ),
        json_case(
            "a price in the request (the home's list sets it)",
            &bookings,
            &adding(
                good.clone(),
                "price",
                json!({"amount_minor": 1, "currency": "GBP"}),
            ),
            unprocessable,
            Some(("price", "unknown_field")),
        ),
        json_case(
            "float adjustment",
            &bookings,
            &adding(
                good.clone(),
                "adjustments",
                json!([{"amount_minor": -1250.5, "reason": "Goodwill"}]),
            ),
            unprocessable,
            Some(("adjustments[0].amount_minor", "type")),
        ),
        json_case(
            "zero adjustment",
            &bookings,
            &adding(
                good.clone(),
                "adjustments",
                json!([{"amount_minor": 0, "reason": "Nothing"}]),
            ),
            unprocessable,
            Some(("adjustments[0].amount_minor", "adjustment.amount_range")),
        ),
        json_case(
            "malformed add-on code",
            &bookings,
            &adding(good.clone(), "add_ons", json!(["Celebrant!"])),
            unprocessable,
            Some(("add_ons[0]", "item_code.format")),
        ),
        json_case(
            "bad email",
            &bookings,
            &with(good.clone(), "/family_contacts/0/email", json!("byron@")),
            unprocessable,
            Some(("family_contacts[0].email", "email.format")),
        ),
        json_case(
            "bad phone",
            &bookings,
            &with(
                good.clone(),
                "/family_contacts/0/phone",
                json!("07700 900123"),
            ),
            unprocessable,
            Some(("family_contacts[0].phone", "phone.e164")),
        ),
        json_case(
            "no contacts",
            &bookings,
            &with(good.clone(), "/family_contacts", json!([])),
            unprocessable,
            Some(("family_contacts", "family_contacts.non_empty")),
        ),
        json_case(
            "death after the service",
            &bookings,
            &with(
                good.clone(),
                "/deceased/date_of_death",
                json!(
                    (chrono::Utc::now() + chrono::Duration::days(1))
                        .date_naive()
                        .to_string()
                ),
            ),
            unprocessable,
            None,
        ),
        json_case(
            "unknown facility",
            &bookings,
            &with(good.clone(), "/facility_id", json!(uuid::Uuid::new_v4())),
            StatusCode::NOT_FOUND,
            Some(("facility_id", "exists")),
        ),
        json_case(
            "oversized body",
            &bookings,
            &with(
                good.clone(),
                "/deceased/full_name",
                json!("x".repeat(70_000)),
            ),
            StatusCode::PAYLOAD_TOO_LARGE,
            None,
        ),
        Case {
            content_type: "text/plain",
            ..json_case(
                "not JSON",
                &bookings,
                &good,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                None,
            )
        },
        Case {
            token: None,
            ..json_case("no token", &bookings, &good, StatusCode::UNAUTHORIZED, None)
        },
        Case {
            token: Some("eyJhbGciOiJIUzI1NiJ9.e30.bad".into()),
            ..json_case(
                "forged token",
                &bookings,
                &good,
                StatusCode::UNAUTHORIZED,
                None,
            )
        },
        Case {
            token: Some(token(Role::Ops, "ops-1").await),
            ..json_case("wrong role", &bookings, &good, StatusCode::FORBIDDEN, None)
        },
        Case {
            token: Some(token(Role::Family, "family-1").await),
            ..json_case(
                "family registering a facility",
                &facilities,
                &facility(),
                StatusCode::FORBIDDEN,
                None,
            )
        },
    ];
    let before = log_ends(&kafka).await;
    let client = Client::new();
    let director = token(Role::Director, "director-1").await;
    for case in cases.drain(..) {
        let mut request = client
            .post(&case.path)
            .header("content-type", case.content_type)
            .body(case.body);
        if let Some(token) = &case.token {
            request = request.bearer_auth(if token == DIRECTOR { &director } else { token });
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), case.status, "{}", case.name);
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json",
            "{}",
            case.name
        );
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["status"], case.status.as_u16(), "{}", case.name);
        if let Some((field, rule)) = case.field_rule {
            let named = problem["errors"]
                .as_array()
                .unwrap()
                .iter()
                .any(|error| error["field"] == field && error["rule"] == rule);
            assert!(named, "{}: expected {field}/{rule} in {problem}", case.name);
        }
    }
    assert_eq!(
        log_ends(&kafka).await,
        before,
        "a refused request wrote to the log"
    );
}

#[tokio::test]
async fn an_idempotency_key_replays_the_first_answer_even_after_a_restart() {
    let kafka = fresh_kafka().await;
    let service = start(&kafka).await;
    let facility_id = register_facility(&service).await;
    let family = token(Role::Family, "family-1").await;
    let client = Client::new();
    let send = |body: Value| {
        client
            .post(format!("{}/bookings", service.url))
            .bearer_auth(&family)
            .header("idempotency-key", "book-grandma-1")
            .json(&body)
            .send()
    };
    let body = booking(&facility_id, 20);
    let first = send(body.clone()).await.unwrap();
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    let first: Value = first.json().await.unwrap();

    let replay = send(body.clone()).await.unwrap();
    assert_eq!(replay.status(), StatusCode::ACCEPTED);
    assert_eq!(replay.json::<Value>().await.unwrap(), first);

    let other = send(with(body.clone(), "/service_type", json!("cremation")))
        .await
        .unwrap();
    assert_eq!(other.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let problem: Value = other.json().await.unwrap();
    assert_eq!(problem["errors"][0]["rule"], "idempotency_key.reused");

    // A new process reads the key back from the log.
    drop(service);
    let restarted = start(&kafka).await;
    let replay = client
        .post(format!("{}/bookings", restarted.url))
        .bearer_auth(&family)
        .header("idempotency-key", "book-grandma-1")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), StatusCode::ACCEPTED);
    assert_eq!(replay.json::<Value>().await.unwrap(), first);

    let bookings_in_log = support::read_log(&kafka)
        .await
        .into_iter()
        .filter(|(_, envelope)| envelope.event_type == "BookingRequested")
        .count();
    assert_eq!(bookings_in_log, 1, "retries never create a second booking");
}

#[tokio::test]
async fn cancel_honours_if_match_and_ownership() {
    let kafka = fresh_kafka().await;
    let service = start(&kafka).await;
    let facility_id = register_facility(&service).await;
    let family = token(Role::Family, "family-1").await;
    let (status, created) = post(
        &format!("{}/bookings", service.url),
        Some(&family),
        &booking(&facility_id, 9),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let cancel_url = format!(
        "{}/bookings/{}/cancel",
        service.url,
        created["booking_id"].as_str().unwrap()
    );
    let client = Client::new();

    let stranger = client
        .post(&cancel_url)
        .bearer_auth(token(Role::Family, "family-2").await)
        .send()
        .await
        .unwrap();
    assert_eq!(
        stranger.status(),
        StatusCode::NOT_FOUND,
        "another family's booking is not found"
    );

    let stale = client
        .post(&cancel_url)
        .bearer_auth(&family)
        .header("if-match", "\"7\"")
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), StatusCode::PRECONDITION_FAILED);

    let etag = format!("\"booking-{}-v1\"", created["booking_id"].as_str().unwrap());
    let cancelled = client
        .post(&cancel_url)
        .bearer_auth(&family)
        .header("if-match", etag)
        .json(&json!({"reason": "The family chose another date"}))
        .send()
        .await
        .unwrap();
    assert_eq!(cancelled.status(), StatusCode::OK);
    let cancelled: Value = cancelled.json().await.unwrap();
    assert_eq!(cancelled["version"], 2);

    let again = client
        .post(&cancel_url)
        .bearer_auth(&family)
        .send()
        .await
        .unwrap();
    assert_eq!(
        again.status(),
        StatusCode::OK,
        "cancelling twice is a no-op"
    );
    assert_eq!(again.json::<Value>().await.unwrap()["version"], 2);
}

#[tokio::test]
async fn the_openapi_document_lists_every_write_route_with_bearer_auth() {
    let kafka = fresh_kafka().await;
    let service = start(&kafka).await;
    let document: Value = Client::new()
        .get(format!("{}/openapi.json", service.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let paths = document["paths"].as_object().unwrap();
    for path in [
        "/facilities",
        "/facilities/{id}/opening-hours",
        "/facilities/{id}/reservations",
        "/facilities/{id}/reservations/{booking_id}/release",
        "/bookings",
        "/bookings/{id}/cancel",
        "/bookings/{id}/slot-held",
        "/bookings/{id}/confirm",
        "/bookings/{id}/reject",
        "/bookings/{id}/fail",
        "/bookings/{id}/payment/captured",
        "/bookings/{id}/payment/declined",
        "/bookings/{id}/payment/refunded",
    ] {
        assert!(
            paths.contains_key(path),
            "{path} is missing from /openapi.json"
        );
    }
    assert_eq!(
        document["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
}

// Regressions found by `compose/fuzz` (docs/reliability.md, "API fuzzing"): each sends what the
// fuzzer sent and holds the answer to the service's own OpenAPI document.

/// The OpenAPI document the service serves.
async fn served_document(service: &Service) -> Value {
    Client::new()
        .get(format!("{}/openapi.json", service.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Sends `request`, checks that its answer has `status` and that the document declares that
/// status for `method template` with the content type the answer has; returns the body.
async fn answer_as_declared(
    document: &Value,
    (method, template): (&str, &str),
    request: reqwest::RequestBuilder,
    status: StatusCode,
) -> Value {
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), status, "{method} {template}");
    let declared =
        platform::openapi::declared_response(document, method, template, status.as_u16())
            .unwrap_or_else(|| {
                panic!("{method} {template} answered {status}, which its document does not declare")
            });
    if let Some(content_type) = response.headers().get("content-type") {
        let content_type = content_type.to_str().unwrap();
        assert!(
            declared["content"].get(content_type).is_some(),
            "{method} {template} answered {status} as {content_type}, declared as {}",
            declared["content"]
        );
    }
    response.json().await.unwrap_or(Value::Null)
}

/// A service with a facility and a family's booking: (service, facility id, booking id).
async fn with_a_booking(kafka: &KafkaSettings) -> (Service, String, String) {
    let service = start(kafka).await;
    let facility_id = register_facility(&service).await;
    let (status, created) = post(
        &format!("{}/bookings", service.url),
        Some(&token(Role::Family, "family-1").await),
        &booking(&facility_id, 12),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{created}");
    let booking_id = created["booking_id"].as_str().unwrap().to_owned();
    (service, facility_id, booking_id)
}

#[tokio::test]
async fn every_answer_the_fuzzer_found_undeclared_is_declared() {
    let kafka = fresh_kafka().await;
    let (service, facility_id, booking_id) = with_a_booking(&kafka).await;
    let document = served_document(&service).await;
    let client = Client::new();
    let url = |path: String| format!("{}{path}", service.url);
    let (director, family, saga) = (
        token(Role::Director, "director-1").await,
        token(Role::Family, "family-1").await,
        token(Role::System, "saga").await,
    );
    let confirm = ("post", "/bookings/{id}/confirm");
    let cases = [
        (
            confirm,
            client.post(url(format!("/bookings/{booking_id}/confirm"))),
            StatusCode::UNAUTHORIZED,
        ),
        (
            confirm,
            client
                .post(url(format!("/bookings/{booking_id}/confirm")))
                .bearer_auth(&director),
            StatusCode::FORBIDDEN,
        ),
        (
            ("post", "/bookings/{id}/slot-held"),
            client
                .post(url(format!("/bookings/{}/slot-held", uuid::Uuid::new_v4())))
                .bearer_auth(&saga),
            StatusCode::NOT_FOUND,
        ),
        (
            ("post", "/bookings/{id}/fail"),
            client
                .post(url(format!("/bookings/{booking_id}/fail")))
                .bearer_auth(&saga)
                .json(&json!({"reason": 6016})),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            ("post", "/bookings/{id}/cancel"),
            client
                .post(url(format!("/bookings/{booking_id}/cancel")))
                .bearer_auth(&family)
                .json(&json!({"reason": 6016})),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            ("post", "/facilities/{id}/reservations"),
            client
                .post(url(format!("/facilities/{facility_id}/reservations")))
                .bearer_auth(&saga)
                .json(&json!({"booking_id": booking_id, "slot": {"start": "0", "end": "0"}})),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            ("post", "/facilities/{id}/reservations/{booking_id}/release"),
            client
                .post(url(format!(
                    "/facilities/{facility_id}/reservations/{booking_id}/release"
                )))
                .bearer_auth(&saga)
                .header("if-match", "\"7\""),
            StatusCode::PRECONDITION_FAILED,
        ),
        (
            ("put", "/facilities/{id}/opening-hours"),
            client
                .put(url(format!("/facilities/{facility_id}/opening-hours")))
                .bearer_auth(&director)
                .header("content-type", "application/json")
                .body("{"),
            StatusCode::BAD_REQUEST,
        ),
        (
            ("post", "/bookings/{id}/payment/captured"),
            client
                .post(url(format!("/bookings/{booking_id}/payment/captured")))
                .bearer_auth(&saga)
                .header("content-type", "text/plain")
                .body("captured"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
    ];
    for (operation, request, status) in cases {
        answer_as_declared(&document, operation, request, status).await;
    }
}

#[tokio::test]
async fn a_path_id_that_is_not_a_uuid_is_a_problem_naming_it() {
    let kafka = fresh_kafka().await;
    let (service, facility_id, _) = with_a_booking(&kafka).await;
    let document = served_document(&service).await;
    let client = Client::new();
    // Was axum's plain-text 400, declared nowhere.
    let problem = answer_as_declared(
        &document,
        ("post", "/bookings/{id}/cancel"),
        client
            .post(format!("{}/bookings/not-a-uuid/cancel", service.url))
            .bearer_auth(token(Role::Family, "family-1").await),
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(problem["errors"][0]["field"], "id");
    let problem = answer_as_declared(
        &document,
        ("post", "/facilities/{id}/reservations/{booking_id}/release"),
        client
            .post(format!(
                "{}/facilities/{facility_id}/reservations/%C3%82%C2%BC/release",
                service.url
            ))
            .bearer_auth(token(Role::System, "saga").await),
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(problem["errors"][0]["field"], "booking_id");
}

#[tokio::test]
async fn a_declined_payment_without_a_reason_is_refused_and_writes_nothing() {
    let kafka = fresh_kafka().await;
    let (service, _, booking_id) = with_a_booking(&kafka).await;
    let before = log_ends(&kafka).await;
    // Was appended (an event its own schema refuses, so no reader admitted it) and answered 503
    // once the wait for it to be read back ran out.
    let (status, problem) = post(
        &format!("{}/bookings/{booking_id}/payment/declined", service.url),
        Some(&token(Role::System, "saga").await),
        &json!({"amount": {"amount_minor": 125_000, "currency": "GBP"}, "reason": ""}),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    assert_eq!(problem["errors"][0]["field"], "reason");
    assert_eq!(problem["errors"][0]["rule"], "reason.length");
    assert_eq!(
        log_ends(&kafka).await,
        before,
        "the refused decline reached the log"
    );
}

#[tokio::test]
async fn if_match_takes_the_booking_etag_the_query_api_gives() {
    let kafka = fresh_kafka().await;
    let (service, _, booking_id) = with_a_booking(&kafka).await;
    let url = format!("{}/bookings/{booking_id}/cancel", service.url);
    let family = token(Role::Family, "family-1").await;
    let client = Client::new();
    // The query-api's booking ETag carries the payment's version and the saga's progress after
    // the booking's: "booking-<id>-v<version>-p<payment version>[-s<digest>]". It was refused
    // as a malformed If-Match (422) although the README says to send it back.
    let stale = client
        .post(&url)
        .bearer_auth(&family)
        .header(
            "if-match",
            format!("W/\"booking-{booking_id}-v7-p0-s0123456789ab\""),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), StatusCode::PRECONDITION_FAILED);
    let current = client
        .post(&url)
        .bearer_auth(&family)
        .header("if-match", format!("\"booking-{booking_id}-v1-p0\""))
        .send()
        .await
        .unwrap();
    assert_eq!(current.status(), StatusCode::OK);
}

/// Issue 14: records no reader can use — one that passes every schema but does not decode (a
/// time zone that does not exist), in the very stream of a facility at its next sequence, and
/// a valid facility event on the booking topic — are passed over before they can take a
/// sequence: a service that folds the log afterwards still takes the facility's next command
/// at version 2, and a booking's stream is not disturbed by a facility event keyed like it.
#[tokio::test]
async fn records_no_reader_can_use_are_passed_over_and_take_no_sequence() {
    use event_log::EventProducer;
    use rdkafka::message::OwnedHeaders;
    use schemas::AggregateType;

    let kafka = fresh_kafka().await;
    let first = start(&kafka).await;
    let facility_id = register_facility(&first).await;
    let poison = |sequence: u64, time_zone: &str| {
        json!({
            "event_id": uuid::Uuid::new_v4(), "event_type": "FacilityRegistered",
            "event_version": 1, "aggregate_type": "facility", "aggregate_id": facility_id,
            "sequence": sequence, "occurred_at": "2027-01-05T09:30:00Z",
            "correlation_id": uuid::Uuid::new_v4(), "causation_id": uuid::Uuid::new_v4(),
            "actor": {"subject": "d", "role": "director"},
            "data": {
                "facility_id": facility_id, "name": "Chapel", "kind": "chapel",
                "capacity": 40, "time_zone": time_zone,
                "opening_hours": [{"weekday": "mon", "opens": "09:00", "closes": "17:00"}],
                "turnaround_minutes": 30
            }
        })
    };
    let producer = EventProducer::new(&kafka).unwrap();
    for (aggregate, record) in [
        (AggregateType::Facility, poison(2, "Mars/Olympus_Mons")),
        (AggregateType::Booking, poison(2, "Europe/London")),
    ] {
        producer
            .send(
                &producer.topics().events(aggregate),
                Some(facility_id.as_bytes()),
                &serde_json::to_vec(&record).unwrap(),
                OwnedHeaders::new(),
            )
            .await
            .unwrap();
    }
    drop(first);

    // A fresh service folds the whole log, poison included, and the facility is still at 1.
    let second = start(&kafka).await;
    let hours: Vec<Value> = ["mon", "tue"]
        .iter()
        .map(|day| json!({"weekday": day, "opens": "09:00", "closes": "17:00"}))
        .collect();
    let response = Client::new()
        .put(format!(
            "{}/facilities/{facility_id}/opening-hours",
            second.url
        ))
        .bearer_auth(token(Role::Director, "director-1").await)
        .header("if-match", "\"1\"")
        .json(&json!({ "opening_hours": hours }))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["version"], 2, "{body}");
}

/// docs/evolution.md, "Unknown is parked": a record of a version this release does not know
/// (a newer release wrote it) parks its facility. A command on that facility answers 503 with a
/// problem saying why, instead of deciding on a state that misses the record; `/ready` names
/// the parked facility and stays ready; every other facility takes commands.
#[tokio::test]
async fn a_record_of_an_unknown_version_parks_its_aggregate_and_commands_on_it_answer_503() {
    use event_log::EventProducer;
    use rdkafka::message::OwnedHeaders;
    use schemas::AggregateType;

    let kafka = fresh_kafka().await;
    let service = start(&kafka).await;
    let facility_id = register_facility(&service).await;
    let from_a_newer_release = json!({
        "event_id": uuid::Uuid::new_v4(), "event_type": "OpeningHoursChanged",
        "event_version": 99, "aggregate_type": "facility", "aggregate_id": facility_id,
        "sequence": 2, "occurred_at": "2027-01-05T09:30:00Z",
        "correlation_id": uuid::Uuid::new_v4(), "causation_id": uuid::Uuid::new_v4(),
        "actor": {"subject": "d", "role": "director"},
        "data": {"opening_hours": [], "a_field_of_the_future": true}
    });
    let producer = EventProducer::new(&kafka).unwrap();
    producer
        .send(
            &producer.topics().events(AggregateType::Facility),
            Some(facility_id.as_bytes()),
            &serde_json::to_vec(&from_a_newer_release).unwrap(),
            OwnedHeaders::new(),
        )
        .await
        .unwrap();

    let client = Client::new();
    let mut ready = Value::Null;
    for _ in 0..200 {
        ready = client
            .get(format!("{}/ready", service.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if ready["checks"][2]["detail"].is_string() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(ready["ready"], true, "{ready}");
    assert_eq!(ready["checks"][2]["name"], "parked", "{ready}");
    let detail = ready["checks"][2]["detail"].as_str().unwrap_or_default();
    assert!(
        detail.starts_with("1 aggregates parked")
            && detail.contains(&facility_id)
            && detail.contains("unknown event OpeningHoursChanged v99"),
        "{ready}"
    );

    let hours = json!({"opening_hours": [{"weekday": "mon", "opens": "09:00", "closes": "17:00"}]});
    let response = client
        .put(format!(
            "{}/facilities/{facility_id}/opening-hours",
            service.url
        ))
        .bearer_auth(token(Role::Director, "director-1").await)
        .header("if-match", "\"1\"")
        .json(&hours)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["status"], 503, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("parked at sequence 2") && d.contains("newer release")),
        "{body}"
    );
    // Another facility is served as before.
    let other = register_facility(&service).await;
    assert_ne!(other, facility_id);
}

#[tokio::test]
async fn a_booking_is_written_sealed_and_its_export_and_erasure_open_and_forget_it() {
    let kafka = fresh_kafka().await;
    let service = start(&kafka).await;
    let facility_id = register_facility(&service).await;
    let director = token(Role::Director, "director-1").await;
    let (status, written) = post(
        &format!("{}/bookings", service.url),
        Some(&director),
        &booking(&facility_id, 14),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{written}");
    let booking_id = written["booking_id"].as_str().unwrap().to_owned();

    let log = read_log(&kafka).await;
    let (_, requested) = log
        .iter()
        .find(|(_, e)| e.event_type == "BookingRequested")
        .unwrap();
    assert_eq!(requested.event_version, 3);
    let data = requested.data.to_string();
    assert!(
        requested.data["personal"]["ciphertext"].is_string(),
        "{data}"
    );
    for plaintext in [
        "Ada Lovelace",
        "Byron",
        "byron@example.org",
        "+447700900123",
    ] {
        assert!(!data.contains(plaintext), "{plaintext} in {data}");
    }

    let export = |token: String| {
        let url = format!("{}/bookings/{booking_id}/personal-data", service.url);
        async move {
            let response = Client::new()
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            let status = response.status();
            (
                status,
                response.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let (status, opened) = export(director.clone()).await;
    assert_eq!(status, StatusCode::OK, "{opened}");
    assert_eq!(opened["erased"], false);
    assert_eq!(opened["deceased"]["full_name"], "Ada Lovelace");
    assert_eq!(opened["family_contacts"][0]["email"], "byron@example.org");
    let (status, _) = export(token(Role::Family, "family-1").await).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // The document declares the flow headers on every route: a malformed one is refused here
    // as on a write (compose/fuzz).
    let malformed = Client::new()
        .get(format!(
            "{}/bookings/{booking_id}/personal-data",
            service.url
        ))
        .bearer_auth(&director)
        .header("correlation-id", "not-a-uuid")
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let problem: Value = malformed.json().await.unwrap();
    assert_eq!(problem["errors"][0]["field"], "Correlation-Id", "{problem}");

    let erase = format!("{}/bookings/{booking_id}/erase", service.url);
    let (status, erased) = post(&erase, Some(&director), &json!({"reason": "asked"})).await;
    assert_eq!(status, StatusCode::OK, "{erased}");
    let (status, again) = post(&erase, Some(&director), &json!({})).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["version"], erased["version"]);
    let (_, forgotten) = export(director).await;
    assert_eq!(forgotten["erased"], true, "{forgotten}");
    assert!(!forgotten.to_string().contains("Lovelace"), "{forgotten}");
    let erasures = read_log(&kafka)
        .await
        .into_iter()
        .filter(|(_, e)| e.event_type == "PersonalDataErased")
        .count();
    assert_eq!(erasures, 1);
}
