//! The identity provider's signing key rotates while bookings flow, and no valid token gets 401
//! (issue 16 item 5; docs/operations.md, "Rotating the identity provider's signing key").
//!
//! Against the real Keycloak compose/test starts, on a realm of the test's own (a copy of
//! compose/keycloak/realm.json under another name, with 15-second tokens), so that rotating
//! its keys disturbs no other test: two streams of directors' requests (writes through the
//! command-service, reads through the query-api; one stream with a fresh token for every
//! request, one that keeps its token for 8 s, across key changes) run while the runbook's
//! steps happen through Keycloak's admin API:
//!
//! 1. a new RS256 key of higher priority (Keycloak signs with it at once), and within 10 s of
//!    the services' fetch for it a second one: the verifier's throttle must not turn the second
//!    new key's tokens away;
//! 2. the old keys made passive (published, no longer signing);
//! 3. after the longest token lifetime, the old keys removed.
//!
//! Then no request of either stream got 401, tokens of every key were let in, and a token whose
//! key was removed early (against the runbook, on purpose) is refused once the services have
//! fetched the keys again.

#![allow(clippy::unwrap_used)] // A test fails loudly on any unexpected error; that is the point.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use platform::settings::AuthSettings;
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use system_tests::{TestStack, bodies, fresh_kafka};
use uuid::Uuid;

/// The realm copy's access token lifetime: the "longest token lifetime" of the runbook.
// Long enough for steps 1 and 2 to check the first token while it is valid on a loaded machine
// (four Keycloak admin calls and six requests; 15 s was too short at load average 15).
const TOKEN_LIFETIME: Duration = Duration::from_secs(30);
/// How long the held stream keeps one token.
const HELD_FOR: Duration = Duration::from_secs(8);
/// The services' age refresh of the keys in this test (5 min by default).
const JWKS_REFRESH: Duration = Duration::from_secs(3);

/// Keycloak's admin API, as the master realm's administrator of the test stack
/// (`start_keycloak` and `keycloak_seed` in compose/lib.sh: `FM_KEYCLOAK_ADMIN`, admin/admin by
/// default).
struct Admin {
    http: Client,
    base: String,
    realm: String,
}

impl Admin {
    async fn token(&self) -> String {
        let user = std::env::var("FM_KEYCLOAK_ADMIN").unwrap_or_else(|_| "admin".to_owned());
        let password =
            std::env::var("FM_KEYCLOAK_ADMIN_PASSWORD").unwrap_or_else(|_| "admin".to_owned());
        test_support::provider_token(
            &format!("{}/realms/master", self.base),
            &[
                ("grant_type", "password"),
                ("client_id", "admin-cli"),
                ("username", &user),
                ("password", &password),
            ],
        )
        .await
        .unwrap()
    }

    fn url(&self, tail: &str) -> String {
        format!("{}/admin/realms/{}{tail}", self.base, self.realm)
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> reqwest::Response {
        let response = request
            .bearer_auth(self.token().await)
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "the admin API answered {}",
            response.status()
        );
        response
    }

    async fn get(&self, tail: &str) -> Value {
        self.send(self.http.get(self.url(tail)))
            .await
            .json()
            .await
            .unwrap()
    }

    /// The realm's RS256 signing key ids by key provider (component) id.
    async fn rs256_keys(&self) -> Vec<(String, String, String)> {
        let keys = self.get("/keys").await;
        keys["keys"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|key| key["algorithm"] == "RS256" && key["use"] == "SIG")
            .map(|key| {
                (
                    key["providerId"].as_str().unwrap().to_owned(),
                    key["kid"].as_str().unwrap().to_owned(),
                    key["status"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }

    /// Adds a generated RS256 key provider of `priority`; its component id and its key's id.
    async fn add_key(&self, name: &str, priority: u32) -> (String, String) {
        let realm = self.get("").await;
        let response = self
            .send(self.http.post(self.url("/components")).json(&json!({
                "name": name,
                "providerId": "rsa-generated",
                "providerType": "org.keycloak.keys.KeyProvider",
                "parentId": realm["id"],
                "config": {
                    "priority": [priority.to_string()],
                    "enabled": ["true"],
                    "active": ["true"],
                    "algorithm": ["RS256"],
                    "keySize": ["2048"],
                },
            })))
            .await;
        let location = response.headers()["location"].to_str().unwrap().to_owned();
        let component = location.rsplit('/').next().unwrap().to_owned();
        let kid = self
            .rs256_keys()
            .await
            .into_iter()
            .find(|(provider, _, _)| *provider == component)
            .map(|(_, kid, _)| kid)
            .unwrap();
        (component, kid)
    }

    /// The key stays published (tokens it signed are still checked) but signs nothing new.
    async fn make_passive(&self, component: &str) {
        let tail = format!("/components/{component}");
        let mut representation = self.get(&tail).await;
        representation["config"]["active"] = json!(["false"]);
        self.send(self.http.put(self.url(&tail)).json(&representation))
            .await;
    }

    async fn remove(&self, component: &str) {
        self.send(
            self.http
                .delete(self.url(&format!("/components/{component}"))),
        )
        .await;
    }
}

/// A realm of the test's own: compose/keycloak/realm.json under another name, tokens living
/// [`TOKEN_LIFETIME`]. Returns its issuer.
async fn own_realm(admin: &Admin) -> String {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../compose/keycloak/realm.json"
    );
    let mut realm: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    realm["realm"] = json!(admin.realm);
    realm["displayName"] = json!("Funeral Manager (key rotation test)");
    realm["accessTokenLifespan"] = json!(TOKEN_LIFETIME.as_secs());
    let response = admin
        .http
        .post(format!("{}/admin/realms", admin.base))
        .bearer_auth(admin.token().await)
        .json(&realm)
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::CREATED,
        "the realm is created"
    );
    format!("{}/realms/{}", admin.base, admin.realm)
}

/// Part `n` of a token (0: header, 1: claims), read without checking anything.
fn part(token: &str, n: usize) -> Value {
    let part = token.split('.').nth(n).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

/// The `kid` a token's header names.
fn kid_of(token: &str) -> String {
    part(token, 0)["kid"].as_str().unwrap().to_owned()
}

/// When a token expires (`exp`).
fn expires_at(token: &str) -> i64 {
    part(token, 1)["exp"].as_i64().unwrap()
}

/// What one request of a stream got.
#[derive(Debug, Clone)]
struct Outcome {
    stream: &'static str,
    what: &'static str,
    status: StatusCode,
    kid: String,
}

struct Flow {
    stack: Arc<TestStack>,
    issuer: String,
    outcomes: Arc<Mutex<Vec<Outcome>>>,
    stop: Arc<AtomicBool>,
}

impl Flow {
    async fn director_token(issuer: &str) -> String {
        test_support::provider_token(
            issuer,
            &[
                ("grant_type", "password"),
                ("client_id", "fm-web"),
                ("username", "director-a"),
                ("password", "director-a"),
            ],
        )
        .await
        .unwrap()
    }

    /// One write (a facility, every third time also a booking on it) through the
    /// command-service and one read of it through the query-api, recorded.
    async fn round(&self, stream: &'static str, token: &str, n: usize) {
        let stack = &self.stack;
        let kid = kid_of(token);
        let record = |what, status| {
            self.outcomes.lock().unwrap().push(Outcome {
                stream,
                what,
                status,
                kid: kid.clone(),
            });
        };
        let response = stack
            .http
            .post(format!("{}/facilities", stack.command_url))
            .bearer_auth(token)
            .json(&bodies::facility())
            .send()
            .await
            .unwrap();
        let status = response.status();
        record("write facility", status);
        if status != StatusCode::CREATED {
            return;
        }
        let consistency = response.headers()["consistency-token"].clone();
        let facility: Value = response.json().await.unwrap();
        let id = facility["facility_id"].as_str().unwrap().to_owned();
        let response = stack
            .http
            .get(format!("{}/facilities/{id}", stack.query_url))
            .bearer_auth(token)
            .header("consistency-token", consistency)
            .send()
            .await
            .unwrap();
        record("read facility", response.status());
        if n.is_multiple_of(3) {
            let response = stack
                .http
                .post(format!("{}/bookings", stack.command_url))
                .bearer_auth(token)
                .json(&bodies::booking(&id, 14))
                .send()
                .await
                .unwrap();
            record("write booking", response.status());
        }
    }

    /// A fresh token for every round.
    async fn fresh_stream(self: Arc<Self>) {
        let mut n = 0;
        while !self.stop.load(Ordering::Relaxed) {
            let token = Self::director_token(&self.issuer).await;
            self.round("fresh", &token, n).await;
            n += 1;
        }
    }

    /// One token kept for [`HELD_FOR`], across key changes.
    async fn held_stream(self: Arc<Self>) {
        let mut n = 0;
        let mut held: Option<(String, Instant)> = None;
        while !self.stop.load(Ordering::Relaxed) {
            let token = match &held {
                Some((token, since)) if since.elapsed() < HELD_FOR => token.clone(),
                _ => {
                    let token = Self::director_token(&self.issuer).await;
                    held = Some((token.clone(), Instant::now()));
                    token
                }
            };
            self.round("held", &token, n).await;
            n += 1;
        }
    }

    fn count(&self, stream: &str) -> usize {
        let outcomes = self.outcomes.lock().unwrap();
        outcomes.iter().filter(|o| o.stream == stream).count()
    }

    /// Waits until each stream has made `more` further requests.
    async fn let_run(&self, more: usize) {
        let start = (self.count("fresh"), self.count("held"));
        let deadline = Instant::now() + Duration::from_mins(1);
        while self.count("fresh") < start.0 + more || self.count("held") < start.1 + more {
            assert!(Instant::now() < deadline, "the streams stalled");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The status a write with `token` gets from the command-service and a read from the query-api.
async fn statuses(stack: &TestStack, token: &str) -> (StatusCode, StatusCode) {
    let write = stack
        .http
        .post(format!("{}/facilities", stack.command_url))
        .bearer_auth(token)
        .json(&bodies::facility())
        .send()
        .await
        .unwrap()
        .status();
    let read = stack
        .http
        .get(format!("{}/facilities/{}", stack.query_url, Uuid::new_v4()))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status();
    (write, read)
}

/// Accepted: the write is created, the read of an unknown facility is a 404 (not a 401).
const ACCEPTED: (StatusCode, StatusCode) = (StatusCode::CREATED, StatusCode::NOT_FOUND);

/// No request of either stream got 401 or failed otherwise; tokens of the old and the newest
/// key were used.
fn check_outcomes(outcomes: &[Outcome], old_kid: &str, second_kid: &str) {
    let refused: Vec<_> = outcomes
        .iter()
        .filter(|o| o.status == StatusCode::UNAUTHORIZED)
        .collect();
    assert!(refused.is_empty(), "valid tokens got 401: {refused:?}");
    let unexpected: Vec<_> = outcomes
        .iter()
        .filter(|o| !(o.status.is_success() || o.status == StatusCode::ACCEPTED))
        .collect();
    assert!(unexpected.is_empty(), "requests failed: {unexpected:?}");
    for kid in [old_kid, second_kid] {
        assert!(
            outcomes.iter().any(|o| o.kid == kid),
            "the streams used a token of {kid}"
        );
    }
    eprintln!(
        "{} requests during the rotation, none refused ({} writes, {} reads)",
        outcomes.len(),
        outcomes
            .iter()
            .filter(|o| o.what.starts_with("write"))
            .count(),
        outcomes
            .iter()
            .filter(|o| o.what.starts_with("read"))
            .count(),
    );
}

/// A key removed before its tokens expired (what the runbook's wait prevents): once the
/// services fetch the keys again, its tokens are refused, and the new key's are let in.
async fn a_key_removed_early_is_refused(
    admin: &Admin,
    stack: &TestStack,
    issuer: &str,
    second_kid: &str,
    second_component: &str,
) {
    let early = Flow::director_token(issuer).await;
    assert_eq!(kid_of(&early), second_kid);
    admin.add_key("rotated-3", 400).await;
    admin.remove(second_component).await;
    let newest = Flow::director_token(issuer).await;
    assert_eq!(statuses(stack, &newest).await, ACCEPTED);
    let deadline = Instant::now() + JWKS_REFRESH + Duration::from_secs(10);
    loop {
        let (write, read) = statuses(stack, &early).await;
        if (write, read) == (StatusCode::UNAUTHORIZED, StatusCode::UNAUTHORIZED) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a removed key's token is still let in: {write} {read}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        expires_at(&early) > chrono::Utc::now().timestamp(),
        "refused for its key, not for its age"
    );
}

#[tokio::test]
async fn the_signing_key_rotates_while_bookings_flow_and_no_valid_token_gets_401() {
    let test_issuer = test_support::oidc_issuer().unwrap();
    let base = test_issuer.split("/realms/").next().unwrap().to_owned();
    let admin = Admin {
        http: Client::new(),
        base,
        realm: format!("fm-rotation-{}", &Uuid::new_v4().simple().to_string()[..8]),
    };
    let issuer = own_realm(&admin).await;
    let mut auth = AuthSettings::oidc(&issuer);
    auth.leeway = Duration::from_secs(1);
    auth.jwks_refresh = JWKS_REFRESH;
    let stack = Arc::new(
        TestStack::spawn_with_auth(fresh_kafka().await.unwrap(), auth)
            .await
            .unwrap(),
    );
    test_support::publish_price_list_as(
        &stack.command_url,
        &Flow::director_token(&issuer).await,
        platform::settings::TenancySettings::LOCAL_HOME_A,
    )
    .await
    .unwrap();
    let keys = admin.rs256_keys().await;
    assert_eq!(keys.len(), 1, "a new realm has one RS256 key: {keys:?}");
    let (old_component, old_kid, _) = keys[0].clone();

    let flow = Arc::new(Flow {
        stack: stack.clone(),
        issuer: issuer.clone(),
        outcomes: Arc::new(Mutex::new(Vec::new())),
        stop: Arc::new(AtomicBool::new(false)),
    });
    let streams = [
        tokio::spawn(flow.clone().fresh_stream()),
        tokio::spawn(flow.clone().held_stream()),
    ];
    flow.let_run(6).await;

    // 1. A new key of higher priority: Keycloak signs with it at once, before any service has
    //    seen it. Its first token is let in by both services.
    // A token of the old key, used again at each step below while it is still valid.
    let old_token = Flow::director_token(&issuer).await;
    assert_eq!(kid_of(&old_token), old_kid);
    let (first_component, first_kid) = admin.add_key("rotated-1", 200).await;
    let token = Flow::director_token(&issuer).await;
    assert_eq!(kid_of(&token), first_kid, "the new key signs at once");
    assert_eq!(statuses(&stack, &token).await, ACCEPTED);
    let first_seen = Instant::now();
    assert_eq!(
        statuses(&stack, &old_token).await,
        ACCEPTED,
        "the old key's token still passes beside the new key"
    );
    // A second new key right away, well within 10 s of the services' fetch for the first: the
    // fetch that found the first key must not hold back the fetch for the second.
    let (second_component, second_kid) = admin.add_key("rotated-2", 300).await;
    let token = Flow::director_token(&issuer).await;
    assert_eq!(kid_of(&token), second_kid);
    assert_eq!(statuses(&stack, &token).await, ACCEPTED);
    assert!(
        first_seen.elapsed() < Duration::from_secs(10),
        "the second key came within the 10 s throttle window"
    );

    // 2. The old keys passive: still published, so the tokens they signed still pass.
    let passive_since = Instant::now();
    admin.make_passive(&old_component).await;
    admin.make_passive(&first_component).await;
    assert_eq!(
        statuses(&stack, &old_token).await,
        ACCEPTED,
        "a passive key's token still passes"
    );
    flow.let_run(3).await;
    let statuses_now = admin.rs256_keys().await;
    assert!(
        statuses_now
            .iter()
            .filter(|(_, kid, _)| *kid != second_kid)
            .all(|(_, _, status)| status == "PASSIVE"),
        "{statuses_now:?}"
    );
    // 3. After the longest token lifetime (and the services' leeway), no token of the old keys
    //    is valid any more: they go. The streams run all along.
    while passive_since.elapsed() < TOKEN_LIFETIME + Duration::from_secs(2) {
        flow.let_run(1).await;
    }
    admin.remove(&old_component).await;
    admin.remove(&first_component).await;
    flow.let_run(6).await;
    flow.stop.store(true, Ordering::Relaxed);
    for stream in streams {
        stream.await.unwrap();
    }

    check_outcomes(&flow.outcomes.lock().unwrap(), &old_kid, &second_kid);
    a_key_removed_early_is_refused(&admin, &stack, &issuer, &second_kid, &second_component).await;

    let response = admin
        .http
        .delete(format!("{}/admin/realms/{}", admin.base, admin.realm))
        .bearer_auth(admin.token().await)
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
}
