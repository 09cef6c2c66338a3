//! The roles the OpenAPI document declares for each operation are the roles the command-service
//! enforces (issue 16 item 7): every operation is called with a real token of every role from
//! the test provider, and a 403 must come exactly for the roles the document leaves out.

#![allow(clippy::unwrap_used)] // A test fails loudly on any unexpected error; that is the point.

mod support;

use command_service::{Application, Settings};
use platform::shutdown::CancellationToken;
use reqwest::Client;
use serde_json::Value;
use support::fresh_kafka;

#[tokio::test]
async fn every_operation_declares_the_roles_it_lets_in() {
    let mut settings = Settings::with_auth(
        test_support::auth_settings(),
        test_support::key_database(),
        test_support::privacy_settings(),
    );
    settings.http.port = 0;
    settings.kafka = fresh_kafka().await;
    let shutdown = CancellationToken::new();
    let url = test_support::spawn_app::<Application>(settings, &shutdown)
        .await
        .unwrap();
    let document: Value = Client::new()
        .get(format!("{url}/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let operations = platform::openapi::declared_roles(&document);
    // 21 with roles, and the three family-session routes that take no staff token.
    assert_eq!(operations.len(), 26, "every operation is checked");
    let mismatches = test_support::route_role_mismatches(&url, &document).await;
    assert!(mismatches.is_empty(), "{mismatches:#?}");
    // The retry token is declared on writes only.
    let export = &document["paths"]["/bookings/{id}/personal-data"]["get"];
    assert!(
        export["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .all(|parameter| parameter["name"] != "Idempotency-Key"),
        "{export}"
    );
    assert!(
        document["paths"]["/bookings"]["post"]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|parameter| parameter["name"] == "Idempotency-Key")
    );
    shutdown.cancel();
}
