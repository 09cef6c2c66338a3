//! The tracer bullet: one facility and one booking through every service, on the real broker
//! and PostgreSQL.

#![allow(clippy::unwrap_used)] // A test fails loudly on any unexpected error; that is the point.

use reqwest::StatusCode;
use schemas::Role;
use serde_json::Value;
use system_tests::{TestStack, bodies};

#[tokio::test]
async fn a_booking_travels_from_the_command_api_through_kafka_into_the_query_api() {
    let stack = TestStack::spawn().await.expect("stack starts");
    let director = stack.token(Role::Director, "director-1").await;

    let response = stack
        .http
        .post(format!("{}/facilities", stack.command_url))
        .bearer_auth(&director)
        .json(&bodies::facility())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let facility: Value = response.json().await.unwrap();
    let facility_id = facility["facility_id"].as_str().unwrap().to_owned();
    assert_eq!(facility["version"], 1);

    let response = stack
        .http
        .post(format!("{}/bookings", stack.command_url))
        .bearer_auth(&director)
        .json(&bodies::booking(&facility_id, 14))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let header_token = response.headers()["consistency-token"]
        .to_str()
        .unwrap()
        .to_owned();
    let accepted: Value = response.json().await.unwrap();
    assert_eq!(accepted["consistency_token"], header_token.as_str());
    let booking_id = accepted["booking_id"].as_str().unwrap();

    // Presenting the token right away returns the new state, with no polling.
    let response = stack
        .http
        .get(format!("{}/bookings/{booking_id}", stack.query_url))
        .bearer_auth(&director)
        .header("consistency-token", &header_token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let etag = response.headers()["etag"].to_str().unwrap().to_owned();
    let booking: Value = response.json().await.unwrap();
    assert_eq!(booking["status"], "requested");
    assert_eq!(booking["facility_id"], facility_id.as_str());
    assert_eq!(booking["price"]["amount_minor"], 125_000);
    assert_eq!(booking["price"]["currency"], "GBP");
    // The server priced it from home A's list: the itemised statement, as the log keeps it.
    let statement = &booking["statement"];
    assert_eq!(
        statement["price_list"]["home_id"],
        platform::settings::TenancySettings::LOCAL_HOME_A.to_string()
    );
    assert_eq!(statement["lines"][0]["code"], "burial");
    assert_eq!(statement["lines"][1]["code"], "chapel.hour");
    assert_eq!(statement["lines"][1]["minutes"], 60);
    assert_eq!(statement["total_minor"], 125_000);
    assert_eq!(booking["deceased"]["full_name"], "Ada Lovelace");
    assert_eq!(booking["family_contacts"][0]["email"], "byron@example.org");
    assert_eq!(booking["version"], 1);

    let response = stack
        .http
        .get(format!("{}/bookings/{booking_id}", stack.query_url))
        .bearer_auth(&director)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_MODIFIED);

    let response = stack
        .http
        .get(format!("{}/facilities/{facility_id}", stack.query_url))
        .bearer_auth(&director)
        .header(
            "consistency-token",
            facility["consistency_token"].as_str().unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let facility_view: Value = response.json().await.unwrap();
    assert_eq!(facility_view["name"], "St Mary's Chapel");
    assert_eq!(facility_view["time_zone"], "Europe/London");
    assert_eq!(facility_view["opening_hours"].as_array().unwrap().len(), 7);
}

#[tokio::test]
async fn a_family_cannot_see_a_booking_it_did_not_make() {
    let stack = TestStack::spawn().await.expect("stack starts");
    let director = stack.token(Role::Director, "director-1").await;
    let family = stack.token(Role::Family, "family-1").await;
    let other_family = stack.token(Role::Family, "family-2").await;

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
    let response = stack
        .http
        .post(format!("{}/bookings", stack.command_url))
        .bearer_auth(&family)
        .json(&bodies::booking(
            facility["facility_id"].as_str().unwrap(),
            10,
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let accepted: Value = response.json().await.unwrap();
    let url = format!(
        "{}/bookings/{}",
        stack.query_url,
        accepted["booking_id"].as_str().unwrap()
    );
    let token = accepted["consistency_token"].as_str().unwrap();

    let own = stack
        .http
        .get(&url)
        .bearer_auth(&family)
        .header("consistency-token", token)
        .send()
        .await
        .unwrap();
    assert_eq!(own.status(), StatusCode::OK);
    let others = stack
        .http
        .get(&url)
        .bearer_auth(&other_family)
        .send()
        .await
        .unwrap();
    assert_eq!(others.status(), StatusCode::NOT_FOUND);
    let body = others.text().await.unwrap();
    assert!(
        !body.contains("byron@example.org"),
        "no contact data leaks: {body}"
    );
}

#[tokio::test]
async fn writes_without_a_valid_token_or_role_are_refused_and_nothing_is_written() {
    let stack = TestStack::spawn().await.expect("stack starts");
    let url = format!("{}/facilities", stack.command_url);
    let anonymous = stack
        .http
        .post(&url)
        .json(&bodies::facility())
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        anonymous.headers()["content-type"],
        "application/problem+json"
    );
    let forged = stack
        .http
        .post(&url)
        .bearer_auth("not.a.token")
        .json(&bodies::facility())
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), StatusCode::UNAUTHORIZED);
    let family = stack.token(Role::Family, "family-1").await;
    let wrong_role = stack
        .http
        .post(&url)
        .bearer_auth(&family)
        .json(&bodies::facility())
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_role.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn an_invalid_booking_gets_a_problem_naming_every_broken_field() {
    let stack = TestStack::spawn().await.expect("stack starts");
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
    let mut body = bodies::booking(facility["facility_id"].as_str().unwrap(), 14);
    body["family_contacts"][0]["email"] = "not-an-email".into();
    body["add_ons"] = serde_json::json!(["Not A Code"]);
    let response = stack
        .http
        .post(format!("{}/bookings", stack.command_url))
        .bearer_auth(&director)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let problem: Value = response.json().await.unwrap();
    let fields: Vec<&str> = problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["family_contacts[0].email", "add_ons[0]"]);

    let unknown_facility = bodies::booking("7f1c1a8e-0000-4000-8000-000000000000", 14);
    let response = stack
        .http
        .post(format!("{}/bookings", stack.command_url))
        .bearer_auth(&director)
        .json(&unknown_facility)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}
