//! The command-service checks tokens by the identity provider's published keys, against the
//! real provider compose/test starts (Keycloak, `FM_TEST_OIDC_ISSUER`; docs/identity.md): a
//! director's token from the provider is let in; a forged HS256 token, a token of another
//! issuer and an expired token get 401; a person's token on an internal route gets 403 where the
//! saga runner's client-credentials token is let in; a token with an unknown `kid` makes the
//! verifier fetch the keys once, not once per token; a token says which homes its person acts
//! for.

#![allow(clippy::unwrap_used)] // A test fails loudly on any unexpected error; that is the point.

mod support;

use std::time::Duration;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header, Validation};
use platform::{
    auth::{
        Homes, ServiceToken,
        oidc::{ClientCredentials, OidcSettings, OidcVerifier},
    },
    settings::{AuthSettings, TenancySettings},
};
use reqwest::{Client, StatusCode, header};
use schemas::Role;
use serde_json::{Value, json};
use support::{Service, facility, fresh_kafka};
use test_support::{oidc_issuer, person_token, provider_token};
use uuid::Uuid;

/// The local realm's confidential clients (compose/keycloak/realm.json; local secrets).
const SAGA_RUNNER: (&str, &str) = ("fm-saga-runner", "local-saga-runner-secret");
/// Role `ops`, tokens that live 2 s.
const SHORT_LIVED: (&str, &str) = ("fm-test-short-lived", "local-test-short-lived-secret");

/// The command-service with the test provider as its only source of trust, a leeway of 1 s.
async fn start() -> Service {
    let mut settings = support::settings(&fresh_kafka().await);
    settings.auth = AuthSettings::oidc(oidc_issuer().unwrap());
    settings.auth.leeway = Duration::from_secs(1);
    support::start(settings).await
}

async fn post(url: &str, token: &str, body: &Value) -> (StatusCode, Option<String>, Value) {
    let response = Client::new()
        .post(url)
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let challenge = response
        .headers()
        .get(header::WWW_AUTHENTICATE)
        .map(|value| value.to_str().unwrap().to_owned());
    (
        status,
        challenge,
        response.json().await.unwrap_or(Value::Null),
    )
}

/// A client-credentials token of one of the realm's confidential clients.
async fn client_token((id, secret): (&str, &str)) -> String {
    provider_token(
        &oidc_issuer().unwrap(),
        &[
            ("grant_type", "client_credentials"),
            ("client_id", id),
            ("client_secret", secret),
        ],
    )
    .await
    .unwrap()
}

/// The header and claims of a token, read without checking anything.
fn parts(token: &str) -> (Header, Value) {
    let header = jsonwebtoken::decode_header(token).unwrap();
    let mut validation = Validation::new(header.alg);
    validation.insecure_disable_signature_validation();
    validation.validate_aud = false;
    validation.validate_exp = false;
    let claims = jsonwebtoken::decode::<Value>(
        token,
        &jsonwebtoken::DecodingKey::from_secret(b""),
        &validation,
    )
    .unwrap()
    .claims;
    (header, claims)
}

/// `token` with its header's `kid` replaced (the signature no longer matches, but a verifier
/// looks the key up before it checks the signature).
fn with_kid(token: &str, kid: &str) -> String {
    let (header, rest) = token.split_once('.').unwrap();
    let mut header: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap();
    header["kid"] = json!(kid);
    format!(
        "{}.{rest}",
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).unwrap())
    )
}

fn facilities(service: &Service) -> String {
    format!("{}/facilities", service.url)
}

#[tokio::test]
async fn a_directors_token_from_the_provider_is_accepted() {
    let service = start().await;
    let director = person_token("director-a").await.unwrap();
    let (status, _, body) = post(&facilities(&service), &director, &facility()).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

#[tokio::test]
async fn a_forged_hs256_token_gets_401() {
    let service = start().await;
    // Everything a real director's token says, with the provider's key id, signed with HMAC:
    // the "public key as HMAC secret" forgery, here with the key's modulus as the secret.
    let (real_header, claims) = parts(&person_token("director-a").await.unwrap());
    let mut header = Header::new(Algorithm::HS256);
    header.kid = real_header.kid;
    let forged = jsonwebtoken::encode(
        &header,
        &claims,
        &EncodingKey::from_secret(b"a public key is no secret at all"),
    )
    .unwrap();
    let (status, challenge, body) = post(&facilities(&service), &forged, &facility()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(challenge.as_deref(), Some("Bearer"));
}

#[tokio::test]
async fn a_token_of_another_issuer_gets_401() {
    let service = start().await;
    let issuer = oidc_issuer().unwrap();
    // The same provider and keys, under another name: only `iss` differs.
    let other_name = issuer.replace("127.0.0.1", "localhost");
    assert_ne!(other_name, issuer, "the test provider is on 127.0.0.1");
    let renamed = provider_token(
        &other_name,
        &[
            ("grant_type", "password"),
            ("client_id", "fm-web"),
            ("username", "director-a"),
            ("password", "director-a"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(parts(&renamed).1["iss"], json!(other_name));
    let (status, _, body) = post(&facilities(&service), &renamed, &facility()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
}

#[tokio::test]
async fn an_expired_token_gets_401() {
    let service = start().await;
    let retry = format!("{}/sagas/{}/retry", service.url, Uuid::new_v4());
    let why = json!({"reason": "checking the token"});
    let token = client_token(SHORT_LIVED).await;
    // Valid now: let in, and the unknown saga is a 404.
    let (status, _, body) = post(&retry, &token, &why).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    // 2 s of life and 1 s of leeway later it is expired.
    let exp = parts(&token).1["exp"].as_i64().unwrap();
    let wait = exp + 2 - chrono::Utc::now().timestamp();
    tokio::time::sleep(Duration::from_secs(u64::try_from(wait.max(0)).unwrap())).await;
    let (status, challenge, body) = post(&retry, &token, &why).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(challenge.as_deref(), Some("Bearer"));
}

#[tokio::test]
async fn a_persons_token_on_an_internal_route_gets_403_and_the_saga_runners_is_let_in() {
    let service = start().await;
    let confirm = format!("{}/bookings/{}/confirm", service.url, Uuid::new_v4());
    for person in ["director-a", "group-admin", "operator"] {
        let token = person_token(person).await.unwrap();
        let (status, _, body) = post(&confirm, &token, &json!({})).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{person}: {body}");
    }
    // The saga runner's own token, as the saga runner gets it.
    let mut auth = AuthSettings::oidc(oidc_issuer().unwrap());
    auth.client_id = Some(SAGA_RUNNER.0.to_owned());
    auth.client_secret = Some(SAGA_RUNNER.1.to_owned().into());
    let service_token = ServiceToken::from_settings(&auth, "saga-runner", Role::System).unwrap();
    let token = service_token.token().await.unwrap();
    let (status, _, body) = post(&confirm, &token, &json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}

#[tokio::test]
async fn a_client_credentials_token_is_renewed_before_it_expires() {
    let (id, secret) = SHORT_LIVED;
    let client = ClientCredentials::new(
        &oidc_issuer().unwrap(),
        id.to_owned(),
        secret.to_owned().into(),
    );
    let first = client.token().await.unwrap();
    assert_eq!(
        client.token().await.unwrap(),
        first,
        "a fresh token is reused"
    );
    // A 2-second token is renewed at half its life, before it expires.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let renewed = client.token().await.unwrap();
    assert_ne!(renewed, first);
    assert!(parts(&renewed).1["exp"].as_i64() > parts(&first).1["exp"].as_i64());
}

#[tokio::test]
async fn an_unknown_kid_makes_the_verifier_fetch_the_keys_once() {
    let mut settings = OidcSettings::new(oidc_issuer().unwrap(), "funeral-manager-api");
    settings.min_refresh = Duration::from_secs(1);
    let verifier = OidcVerifier::new(settings);
    verifier.prefetch().await.unwrap();
    assert_eq!(verifier.jwks_fetches(), 1);
    let director = person_token("director-a").await.unwrap();
    assert_eq!(
        verifier.verify(&director).await.unwrap().role,
        Role::Director
    );
    assert_eq!(verifier.jwks_fetches(), 1, "a known kid needs no fetch");
    // Right after the start-up fetch: a fetch that helped holds nothing back, so a new key
    // (here a kid that turns out to be garbage) is looked for at once.
    let unknown = with_kid(&director, "a-key-the-provider-never-published");
    assert!(verifier.verify(&unknown).await.is_err());
    assert_eq!(
        verifier.jwks_fetches(),
        2,
        "an unknown kid fetches the keys again, even right after another fetch"
    );
    // That fetch did not find its kid: more unknown kids within the minimum interval fetch
    // nothing.
    for n in 0..5 {
        assert!(
            verifier
                .verify(&with_kid(&director, &format!("garbage-{n}")))
                .await
                .is_err()
        );
    }
    assert_eq!(verifier.jwks_fetches(), 2, "rate-limited");
    assert_eq!(
        verifier.verify(&director).await.unwrap().role,
        Role::Director
    );
    // Once the window has passed, an unknown kid is looked for again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(
        verifier
            .verify(&with_kid(&director, "garbage-late"))
            .await
            .is_err()
    );
    assert_eq!(verifier.jwks_fetches(), 3, "the window has passed");
}

/// The provider's tokens say which homes each person acts for (docs/identity.md, "Tenancy"):
/// a director their home only, although the provider also hands them the group's list (a home
/// inherits it from its parent group); a group administrator every home of the group; the
/// operator every home; a family none.
#[tokio::test]
async fn the_provider_says_which_homes_each_person_acts_for() {
    let verifier = OidcVerifier::new(OidcSettings::new(
        oidc_issuer().unwrap(),
        "funeral-manager-api",
    ));
    let (a, b) = (TenancySettings::LOCAL_HOME_A, TenancySettings::LOCAL_HOME_B);
    let caller = async |who: &str| {
        verifier
            .verify(&person_token(who).await.unwrap())
            .await
            .unwrap()
    };
    let director_a = caller("director-a").await;
    assert_eq!(director_a.homes, Homes::Only([a].into()));
    assert!(!director_a.group_admin);
    assert_eq!(director_a.only_home(), Some(a));
    assert_eq!(caller("director-b").await.homes, Homes::Only([b].into()));
    let admin = caller("group-admin").await;
    assert_eq!(
        (admin.role, admin.homes.clone(), admin.group_admin),
        (Role::Director, Homes::Only([a, b].into()), true)
    );
    assert_eq!(
        admin.only_home(),
        None,
        "a group administrator names the home"
    );
    assert_eq!(caller("operator").await.homes, Homes::All);
    let family = caller("family-demo").await;
    assert!(!family.acts_for(a) && !family.acts_for(b));
}
