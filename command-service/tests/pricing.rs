//! Price lists and server-priced bookings (docs/pricing.md), on the real broker, PostgreSQL and
//! identity provider: a director publishes versions of the home's list; a booking is priced by
//! the server from the current version and keeps its statement in the log whatever is published
//! later; a family can neither state a price nor adjust one; a director's discount is recorded
//! with its reason; a home without a list cannot be booked; another home's list is not a
//! director's to read or publish.

#![allow(clippy::unwrap_used)] // A test fails loudly on any unexpected error; that is the point.

mod support;

use command_service::Settings;
use event_log::KafkaSettings;
use platform::settings::{DatabaseSettings, TenancySettings};
use reqwest::{Client, StatusCode};
use schemas::Role;
use secrecy::SecretString;
use serde_json::{Value, json};
use support::{Service, booking, facility, fresh_kafka, read_log, token};
use uuid::Uuid;

const HOME_A: Uuid = TenancySettings::LOCAL_HOME_A;
const HOME_B: Uuid = TenancySettings::LOCAL_HOME_B;

/// A command-service on a database of its own: no home has a list until the test publishes one.
async fn start(kafka: &KafkaSettings) -> Service {
    start_on(kafka, &test_support::fresh_database().await.unwrap()).await
}

/// A command-service on `database` (replicas share one).
async fn start_on(kafka: &KafkaSettings, database: &str) -> Service {
    let database = DatabaseSettings {
        url: SecretString::from(database.to_owned()),
        ..DatabaseSettings::default()
    };
    let mut privacy = test_support::privacy_settings();
    privacy.database_url = None;
    let mut settings = Settings::with_auth(test_support::auth_settings(), database, privacy);
    settings.http.port = 0;
    settings.kafka = kafka.clone();
    support::start(settings).await
}

async fn send(request: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let response = request.send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn publish(
    service: &Service,
    token: &str,
    home: Uuid,
    list: &Value,
    if_match: Option<&str>,
) -> (StatusCode, Value) {
    let mut request = Client::new()
        .put(format!("{}/homes/{home}/price-list", service.url))
        .bearer_auth(token)
        .json(list);
    if let Some(version) = if_match {
        request = request.header("If-Match", version);
    }
    send(request).await
}

async fn register_facility(service: &Service, director: &str) -> String {
    let (status, body) = send(
        Client::new()
            .post(format!("{}/facilities", service.url))
            .bearer_auth(director)
            .json(&facility()),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["facility_id"].as_str().unwrap().to_owned()
}

async fn request(service: &Service, token: &str, body: &Value) -> (StatusCode, Value) {
    send(
        Client::new()
            .post(format!("{}/bookings", service.url))
            .bearer_auth(token)
            .json(body),
    )
    .await
}

/// The `BookingRequested` of `booking` as the log holds it.
async fn requested(kafka: &KafkaSettings, booking: &str) -> Value {
    read_log(kafka)
        .await
        .into_iter()
        .map(|(_, envelope)| envelope)
        .find(|envelope| {
            envelope.event_type == "BookingRequested"
                && envelope.aggregate_id.to_string() == booking
        })
        .map(|envelope| {
            assert_eq!(envelope.event_version, 3);
            envelope.data
        })
        .unwrap()
}

fn error_of(body: &Value) -> (String, String) {
    let error = &body["errors"][0];
    (
        error["field"].as_str().unwrap_or_default().to_owned(),
        error["rule"].as_str().unwrap_or_default().to_owned(),
    )
}

#[tokio::test]
async fn a_booking_is_priced_by_the_home_s_current_list_and_keeps_its_statement() {
    let kafka = fresh_kafka().await;
    let service = start(&kafka).await;
    let director = token(Role::Director, "director-a").await;
    let family = token(Role::Family, "family-demo").await;
    let facility_id = register_facility(&service, &director).await;

    // No list yet: the home cannot be booked, and nothing is written.
    let (status, body) = request(&service, &family, &booking(&facility_id, 5)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(
        error_of(&body),
        (
            "facility_id".to_owned(),
            "price_list.not_published".to_owned()
        )
    );

    let list = test_support::price_list();
    let (status, published) = publish(&service, &director, HOME_A, &list, Some("\"0\"")).await;
    assert_eq!(status, StatusCode::OK, "{published}");
    assert_eq!(published["version"], 1);
    assert_eq!(published["items"].as_array().map(Vec::len), Some(11));
    // The same list again is the same version: a retried PUT publishes nothing new.
    let (_, again) = publish(&service, &director, HOME_A, &list, None).await;
    assert_eq!(again["version"], 1);

    let mut with_celebrant = booking(&facility_id, 5);
    with_celebrant["add_ons"] = json!(["celebrant"]);
    let (status, first) = request(&service, &family, &with_celebrant).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{first}");
    let first_id = first["booking_id"].as_str().unwrap().to_owned();

    // A new version prices new bookings only.
    let mut dearer = list.clone();
    dearer["items"][0]["amount_minor"] = json!(105_000);
    let (status, v2) = publish(&service, &director, HOME_A, &dearer, Some("\"1\"")).await;
    assert_eq!(status, StatusCode::OK, "{v2}");
    assert_eq!(v2["version"], 2);
    let (status, stale) = publish(&service, &director, HOME_A, &list, Some("\"1\"")).await;
    assert_eq!(status, StatusCode::PRECONDITION_FAILED, "{stale}");
    let (status, second) = request(&service, &family, &booking(&facility_id, 6)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{second}");

    let first = requested(&kafka, &first_id).await;
    let statement = &first["statement"];
    assert_eq!(statement["price_list"]["home_id"], HOME_A.to_string());
    assert_eq!(statement["price_list"]["version"], 1);
    let lines: Vec<(&str, i64)> = statement["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|line| {
            (
                line["code"].as_str().unwrap(),
                line["amount_minor"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        lines,
        [
            ("burial", 95_000),
            ("chapel.hour", 30_000),
            ("celebrant", 18_000)
        ]
    );
    assert_eq!(statement["total_minor"], 143_000);
    assert_eq!(
        first["price"],
        json!({"amount_minor": 143_000, "currency": "GBP"})
    );

    let second = requested(&kafka, second["booking_id"].as_str().unwrap()).await;
    assert_eq!(second["statement"]["price_list"]["version"], 2);
    assert_eq!(second["price"]["amount_minor"], 135_000);
}

#[tokio::test]
async fn a_family_cannot_state_or_adjust_a_price_and_a_director_s_discount_is_recorded() {
    let kafka = fresh_kafka().await;
    let service = start(&kafka).await;
    let director = token(Role::Director, "director-a").await;
    let family = token(Role::Family, "family-demo").await;
    let facility_id = register_facility(&service, &director).await;
    let (status, _) = publish(
        &service,
        &director,
        HOME_A,
        &test_support::price_list(),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    let mut penny = booking(&facility_id, 5);
    penny["price"] = json!({"amount_minor": 1, "currency": "GBP"});
    let (status, body) = request(&service, &family, &penny).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(
        error_of(&body),
        ("price".to_owned(), "unknown_field".to_owned())
    );

    let mut discounted = booking(&facility_id, 5);
    discounted["adjustments"] = json!([{"amount_minor": -124_999, "reason": "Family discount"}]);
    let (status, body) = request(&service, &family, &discounted).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(
        error_of(&body),
        (
            "adjustments".to_owned(),
            "adjustments.director_only".to_owned()
        )
    );

    let mut unknown = booking(&facility_id, 5);
    unknown["add_ons"] = json!(["celebrant", "fireworks"]);
    let (status, body) = request(&service, &family, &unknown).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(
        error_of(&body),
        ("add_ons".to_owned(), "price_list.unknown_item".to_owned())
    );

    let mut nothing = booking(&facility_id, 5);
    nothing["adjustments"] = json!([{"amount_minor": -125_000, "reason": "Waived"}]);
    let (status, body) = request(&service, &director, &nothing).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(
        error_of(&body),
        (
            "statement.total".to_owned(),
            "booking.price_positive".to_owned()
        )
    );

    // None of the refused requests wrote anything.
    let requests = read_log(&kafka)
        .await
        .into_iter()
        .filter(|(_, envelope)| envelope.event_type == "BookingRequested")
        .count();
    assert_eq!(requests, 0);

    discounted["adjustments"] = json!([{"amount_minor": -25_000, "reason": "Hardship discount"}]);
    let (status, body) = request(&service, &director, &discounted).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let event = requested(&kafka, body["booking_id"].as_str().unwrap()).await;
    assert_eq!(
        event["statement"]["adjustments"],
        json!([{"amount_minor": -25_000, "reason": "Hardship discount"}])
    );
    assert_eq!(event["statement"]["total_minor"], 100_000);
    assert_eq!(event["price"]["amount_minor"], 100_000);
}

#[tokio::test]
async fn a_list_is_its_home_s_and_a_broken_one_is_refused_naming_every_field() {
    let kafka = fresh_kafka().await;
    let service = start(&kafka).await;
    let director_a = token(Role::Director, "director-a").await;
    let director_b = token(Role::Director, "director-b").await;
    let family = token(Role::Family, "family-demo").await;
    let list = test_support::price_list();

    // Another home's list is unknown to a director, to read or to publish.
    let (status, _) = publish(&service, &director_b, HOME_A, &list, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = publish(&service, &family, HOME_A, &list, None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = publish(&service, &director_b, HOME_B, &list, None).await;
    assert_eq!(status, StatusCode::OK);
    let read = |token: String, home: Uuid| {
        let url = format!("{}/homes/{home}/price-list", service.url);
        async move { send(Client::new().get(url).bearer_auth(token)).await }
    };
    let (status, _) = read(director_a.clone(), HOME_B).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // A family may read any home's list; a home without one is 404.
    let (status, shown) = read(family.clone(), HOME_B).await;
    assert_eq!(status, StatusCode::OK, "{shown}");
    assert_eq!(shown["items"], list["items"]);
    assert_eq!(shown["currency"], "GBP");
    let (status, _) = read(family, HOME_A).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let broken = json!({"currency": "GBX", "items": [
        {"kind": "service", "code": "Burial", "description": "Burial", "service_type": "burial", "amount_minor": 1},
        {"kind": "add_on", "code": "x", "description": "X", "facility_kind": "chapel", "amount_minor": 1},
        {"kind": "gift", "code": "y", "description": "Y", "amount_minor": 1},
    ]});
    let (status, body) = publish(&service, &director_a, HOME_A, &broken, None).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let named: Vec<(String, String)> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|error| {
            (
                error["field"].as_str().unwrap().to_owned(),
                error["rule"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for expected in [
        ("currency", "currency.iso4217"),
        ("items[0].code", "item_code.format"),
        ("items[1].facility_kind", "price_list.field_for_kind"),
        ("items[2].kind", "price_item.kind"),
    ] {
        assert!(
            named.contains(&(expected.0.to_owned(), expected.1.to_owned())),
            "{expected:?} in {named:?}"
        );
    }
    let mut duplicate = list.clone();
    duplicate["items"][1]["service_type"] = json!("burial");
    let (status, body) = publish(&service, &director_a, HOME_A, &duplicate, None).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(
        error_of(&body),
        (
            "items[1].service_type".to_owned(),
            "price_list.duplicate_service".to_owned()
        )
    );
    let (status, _) = read(director_a, HOME_A).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "nothing was published");
}

/// The version of `home`'s list that `service` answers (its cache, while it listens).
async fn current_version(service: &Service, token: &str, home: Uuid) -> Value {
    let (status, body) = send(
        Client::new()
            .get(format!("{}/homes/{home}/price-list", service.url))
            .bearer_auth(token),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["version"].clone()
}

/// Asks `service` for `home`'s list until it answers `version`: the replica has learnt of a
/// publish made on another one (its notification, or a lost listener's dropped cache). A
/// replica that kept serving what it had cached would answer the old version until the end.
async fn until_version(service: &Service, token: &str, home: Uuid, version: u32) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if current_version(service, token, home).await == version {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the replica still answers an older version than {version}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The version that priced `booking`, as its `BookingRequested` says.
async fn priced_by(kafka: &KafkaSettings, booking: &Value) -> Value {
    let id = booking["booking_id"].as_str().unwrap();
    requested(kafka, id).await["statement"]["price_list"]["version"].clone()
}

#[tokio::test]
async fn a_version_published_on_one_replica_prices_the_next_booking_on_another() {
    // docs/pricing.md, "The cache": each replica keeps the lists it read, and forgets one when
    // any replica publishes a version of it, or everything when it stops hearing of publishes.
    let kafka = fresh_kafka().await;
    let database = test_support::fresh_database().await.unwrap();
    let a = start_on(&kafka, &database).await;
    let b = start_on(&kafka, &database).await;
    let director = token(Role::Director, "director-a").await;
    let family = token(Role::Family, "family-demo").await;
    let list = test_support::price_list();
    let (status, v1) = publish(&a, &director, HOME_A, &list, Some("\"0\"")).await;
    assert_eq!(status, StatusCode::OK, "{v1}");
    let facility_id = register_facility(&b, &director).await;

    // B reads (and keeps) version 1.
    let (status, first) = request(&b, &family, &booking(&facility_id, 5)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{first}");
    assert_eq!(priced_by(&kafka, &first).await, 1);

    let mut dearer = list.clone();
    dearer["items"][0]["amount_minor"] = json!(105_000);
    let (status, v2) = publish(&a, &director, HOME_A, &dearer, Some("\"1\"")).await;
    assert_eq!(status, StatusCode::OK, "{v2}");
    until_version(&b, &director, HOME_A, 2).await;
    let (status, second) = request(&b, &family, &booking(&facility_id, 6)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{second}");
    assert_eq!(priced_by(&kafka, &second).await, 2);

    // The listeners lose their connections; a version published before they are back is never
    // notified to them, and B must not keep pricing with version 2.
    let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&database)
        .await
        .unwrap();
    let terminated: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE application_name = 'fm-command-service-price-lists' AND datname = current_database()",
    )
    .fetch_all(&mut admin)
    .await
    .unwrap();
    assert!(!terminated.is_empty(), "no replica was listening");
    let mut dearer_still = dearer.clone();
    dearer_still["items"][0]["amount_minor"] = json!(110_000);
    let (status, v3) = publish(&a, &director, HOME_A, &dearer_still, Some("\"2\"")).await;
    assert_eq!(status, StatusCode::OK, "{v3}");
    until_version(&b, &director, HOME_A, 3).await;
    let (status, third) = request(&b, &family, &booking(&facility_id, 7)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{third}");
    assert_eq!(priced_by(&kafka, &third).await, 3);
}
