//! Crypto-shredding end to end (docs/privacy.md): a booking made through the API leaves no
//! plaintext personal data in the broker's files or the command-service's snapshot; erasing it
//! makes every reader show it as erased and changes nothing else; erasing twice is harmless;
//! the export shows what is held.

#![allow(clippy::unwrap_used)] // A test fails loudly on any unexpected error; that is the point.

use std::{path::Path, time::Duration};

use command_service::{Application, Settings};
use platform::{shutdown::CancellationToken, startup::Service as _};
use reqwest::StatusCode;
use schemas::Role;
use serde_json::{Value, json};
use system_tests::{TestStack, bodies, private::PrivateBroker};
use uuid::Uuid;

/// Canaries: strings that must never reach the broker's files or the snapshot.
const CANARY_NAME: &str = "Canarina Shreddington";
const CANARY_CONTACT: &str = "Peregrine Forgetmenot";
const CANARY_EMAIL: &str = "canary.7f3a9c@shred.example";
const CANARY_PHONE: &str = "+447700987654";

fn canary_booking(facility_id: &str) -> Value {
    let mut body = bodies::booking(facility_id, 14);
    body["deceased"]["full_name"] = json!(CANARY_NAME);
    body["family_contacts"] = json!([{
        "name": CANARY_CONTACT, "relationship": "granddaughter",
        "email": CANARY_EMAIL, "phone": CANARY_PHONE,
    }]);
    body
}

/// Every file under `dir` that contains `needle`, with how many files were read.
fn files_containing(dir: &Path, needle: &[u8]) -> (Vec<String>, usize) {
    let mut found = Vec::new();
    let mut read = 0;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        if path.is_dir() {
            for entry in std::fs::read_dir(&path).unwrap() {
                pending.push(entry.unwrap().path());
            }
        } else if let Ok(bytes) = std::fs::read(&path) {
            read += 1;
            if bytes.windows(needle.len()).any(|window| window == needle) {
                found.push(path.display().to_string());
            }
        }
    }
    (found, read)
}

async fn post(url: String, token: &str, body: &Value) -> (StatusCode, Value) {
    let response = reqwest::Client::new()
        .post(url)
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_booking_made_through_the_api_leaves_no_plaintext_in_the_brokers_files_or_the_snapshot() {
    let broker = PrivateBroker::start();
    let kafka = test_support::fresh_kafka_on(&broker.address())
        .await
        .unwrap();
    let snapshots = std::env::temp_dir().join(format!("fm-canary-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&snapshots).unwrap();
    let snapshot = snapshots.join("command-service.snapshot");
    let mut settings = Settings::with_auth(
        test_support::auth_settings(),
        test_support::key_database(),
        test_support::privacy_settings(),
    );
    settings.http.port = 0;
    settings.kafka = kafka.clone();
    settings.commands.snapshot_path = Some(snapshot.clone());
    settings.commands.snapshot_interval = Duration::from_millis(200);
    let shutdown = CancellationToken::new();
    let app = Application::build(settings, shutdown.clone())
        .await
        .unwrap();
    let url = format!("http://127.0.0.1:{}", app.port());
    let task = tokio::spawn(app.run_until_stopped());
    for _ in 0..600 {
        if reqwest::get(format!("{url}/ready"))
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let director = test_support::token(Role::Director, "director-canary").await;
    let (status, facility) =
        post(format!("{url}/facilities"), &director, &bodies::facility()).await;
    assert_eq!(status, StatusCode::CREATED, "{facility}");
    let facility_id = facility["facility_id"].as_str().unwrap();
    let (status, booking) = post(
        format!("{url}/bookings"),
        &director,
        &canary_booking(facility_id),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{booking}");
    let booking_id = booking["booking_id"].as_str().unwrap().to_owned();

    // The export opens it: the data is there, sealed, not lost.
    let export: Value = reqwest::Client::new()
        .get(format!("{url}/bookings/{booking_id}/personal-data"))
        .bearer_auth(&director)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(export["deceased"]["full_name"], CANARY_NAME, "{export}");
    assert_eq!(
        export["family_contacts"][0]["email"], CANARY_EMAIL,
        "{export}"
    );

    // The snapshot is written with the booking in it, then the service stops (its last
    // snapshot written).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !std::fs::read(&snapshot).is_ok_and(|bytes| {
        bytes
            .windows(booking_id.len())
            .any(|window| window == booking_id.as_bytes())
    }) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no snapshot with the booking"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shutdown.cancel();
    task.await.unwrap().unwrap();

    // The search looks in the right places: the booking's id is in both.
    for dir in [broker.data_dir(), snapshots.as_path()] {
        let (found, read) = files_containing(dir, booking_id.as_bytes());
        assert!(
            !found.is_empty(),
            "the booking id is in no file of {}",
            dir.display()
        );
        assert!(read > 0);
    }
    for canary in [
        CANARY_NAME,
        CANARY_CONTACT,
        CANARY_EMAIL,
        CANARY_PHONE,
        "Shreddington",
        "Forgetmenot",
        "granddaughter",
    ] {
        for dir in [broker.data_dir(), snapshots.as_path()] {
            let (found, read) = files_containing(dir, canary.as_bytes());
            assert!(
                found.is_empty(),
                "{canary:?} is in plaintext in {found:?} ({read} files read)"
            );
        }
    }
    std::fs::remove_dir_all(&snapshots).unwrap();
}

/// The booking as the query-api shows it once it has seen `written` (its consistency token).
async fn read(stack: &TestStack, token: &str, booking_id: &str, written: &Value) -> Value {
    let response = stack
        .http
        .get(format!("{}/bookings/{booking_id}", stack.query_url))
        .bearer_auth(token)
        .header(
            "consistency-token",
            written["consistency_token"].as_str().unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

#[tokio::test]
async fn erasing_a_booking_shows_it_erased_everywhere_changes_nothing_else_and_twice_is_harmless() {
    let stack = TestStack::spawn().await.unwrap();
    let director = stack.token(Role::Director, "director-erase").await;
    let family = stack.token(Role::Family, "family-erase").await;
    let (status, facility) = post(
        format!("{}/facilities", stack.command_url),
        &director,
        &bodies::facility(),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let facility_id = facility["facility_id"].as_str().unwrap();
    let (status, booking) = post(
        format!("{}/bookings", stack.command_url),
        &family,
        &canary_booking(facility_id),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let booking_id = booking["booking_id"].as_str().unwrap().to_owned();
    let before = read(&stack, &director, &booking_id, &booking).await;
    assert_eq!(before["deceased"]["full_name"], CANARY_NAME, "{before}");
    assert_eq!(
        before["family_contacts"][0]["email"], CANARY_EMAIL,
        "{before}"
    );

    // A family may not erase; a director may.
    let erase = format!("{}/bookings/{booking_id}/erase", stack.command_url);
    let (status, _) = post(erase.clone(), &family, &json!({})).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, erased) = post(
        erase.clone(),
        &director,
        &json!({"reason": "the family asked"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{erased}");
    assert_eq!(erased["version"], 2, "{erased}");
    let after = read(&stack, &director, &booking_id, &erased).await;
    assert_eq!(after["deceased"], "erased", "{after}");
    assert_eq!(after["family_contacts"], "erased", "{after}");
    for unchanged in ["status", "slot", "price", "facility_id", "service_type"] {
        assert_eq!(after[unchanged], before[unchanged], "{unchanged}: {after}");
    }

    // Twice: the same answer, no new event.
    let ops = stack.token(Role::Ops, "ops-erase").await;
    let (status, again) = post(erase, &ops, &json!({})).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["version"], 2, "{again}");

    // The export says so.
    let export: Value = stack
        .http
        .get(format!(
            "{}/bookings/{booking_id}/personal-data",
            stack.command_url
        ))
        .bearer_auth(&ops)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(export["erased"], true, "{export}");
    assert_eq!(export["deceased"]["full_name"], Value::Null, "{export}");
    assert_eq!(export["family_contacts"], Value::Null, "{export}");
    assert!(!export.to_string().contains("Shreddington"), "{export}");

    // An unknown booking is not found.
    let (status, _) = post(
        format!("{}/bookings/{}/erase", stack.command_url, Uuid::new_v4()),
        &director,
        &json!({}),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
