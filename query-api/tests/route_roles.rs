//! The roles the OpenAPI document declares for each operation are the roles the query-api
//! enforces (issue 16 item 7): every operation is called with a real token of every role from
//! the test provider, and a 403 must come exactly for the roles the document leaves out.

#![allow(clippy::unwrap_used)] // A test fails loudly on any unexpected error; that is the point.

use platform::{settings::DatabaseSettings, shutdown::CancellationToken};
use query_api::{Application, Settings};
use reqwest::Client;
use serde_json::Value;

#[tokio::test]
async fn every_operation_declares_the_roles_it_lets_in() {
    // An empty database: the roles are decided before any query (a read then fails at once,
    // with no read model, but not with 403).
    let database = DatabaseSettings {
        url: test_support::fresh_database().await.unwrap().into(),
        ..DatabaseSettings::default()
    };
    let mut settings = Settings::new(test_support::auth_settings(), database);
    settings.http.port = 0;
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
    assert_eq!(
        platform::openapi::declared_roles(&document).len(),
        5,
        "every operation is checked"
    );
    let mismatches = test_support::route_role_mismatches(&url, &document).await;
    assert!(mismatches.is_empty(), "{mismatches:#?}");
    shutdown.cancel();
}
