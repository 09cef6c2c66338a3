//! What the tests share, so that every level of the test pyramid has one shape:
//!
//! - storage and projections: `#[sqlx::test]` (a fresh database per test, from `DATABASE_URL`);
//! - a service's API: [`spawn_app`], the service in-process on a port the system picks;
//! - across services and processes: [`fresh_database`] and [`fresh_kafka`], a database and
//!   topics of the test's own on the broker and PostgreSQL that `compose/test` started
//!   (`FM_TEST_DATABASE_URL`, `FM_TEST_KAFKA_BROKERS`);
//! - and, for every request, a bearer token: one the test stack's identity provider issues
//!   ([`oidc_issuer`], [`provider_token`], [`person_token`]), or, where a suite has not moved to
//!   the provider yet, one minted with a test secret ([`token`], the test-only path of
//!   docs/identity.md);
//! - two releases side by side: [`variants::build_variant`], the binaries built once more with
//!   a test-only feature.
//!
//! A test run without the test stack fails at once with a sentence saying how to run it.

use anyhow::Context;
use event_log::KafkaSettings;
use platform::{auth::TokenKeys, shutdown::CancellationToken, startup::Service};
use schemas::Role;
use secrecy::SecretString;
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

pub mod variants;

/// The signing secret of test stacks that need no other.
pub const TEST_SECRET: &str = "system-tests-secret-0123456789abcdef";

/// Reads a variable the test command sets, or explains how to run the tests.
pub fn required_env(name: &str) -> anyhow::Result<String> {
    std::env::var(name).with_context(|| {
        format!("{name} is not set: run the suite with `compose/test`, which starts the broker, PostgreSQL and the identity provider")
    })
}

/// A new empty database named `<prefix>_<uuid>` on the server of `admin_url` (a URL with a
/// database name, which is replaced); returns its URL.
pub async fn create_database(admin_url: &str, prefix: &str) -> anyhow::Result<String> {
    let name = format!("{prefix}_{}", Uuid::new_v4().simple());
    let mut admin = PgConnection::connect(admin_url)
        .await
        .context("Failed to connect to PostgreSQL")?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .with_context(|| format!("Failed to create database {name}"))?;
    let (base, _) = admin_url
        .rsplit_once('/')
        .context("the admin URL has no database name")?;
    Ok(format!("{base}/{name}"))
}

/// A new empty database on the test server (`FM_TEST_DATABASE_URL`); returns its URL.
pub async fn fresh_database() -> anyhow::Result<String> {
    create_database(&required_env("FM_TEST_DATABASE_URL")?, "fm_test").await
}

/// Kafka settings for the test broker (`FM_TEST_KAFKA_BROKERS`) with a topic prefix of the
/// test's own, and those topics created.
pub async fn fresh_kafka() -> anyhow::Result<KafkaSettings> {
    let settings = KafkaSettings {
        brokers: required_env("FM_TEST_KAFKA_BROKERS")?,
        topic_prefix: format!("test-{}", Uuid::new_v4().simple()),
        ..KafkaSettings::default()
    };
    event_log::topics::ensure_topics(&settings, false)
        .await
        .context("Failed to create the test topics")?;
    Ok(settings)
}

/// Builds service `S` in this process and serves it in a task until `shutdown`; returns its
/// base URL (`http://127.0.0.1:<port>`). Give it settings whose HTTP port is 0, so that the
/// system picks a free one.
pub async fn spawn_app<S>(
    settings: S::Settings,
    shutdown: &CancellationToken,
) -> anyhow::Result<String>
where
    S: Service + Send + 'static,
{
    let app = S::build(settings, shutdown.clone())
        .await
        .with_context(|| format!("Failed to start the {}", S::NAME))?;
    let url = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until_stopped());
    Ok(url)
}

/// The issuer of the test stack's identity provider (`FM_TEST_OIDC_ISSUER`): the
/// `funeral-manager` realm of compose/keycloak/realm.json on the Keycloak compose/test started.
pub fn oidc_issuer() -> anyhow::Result<String> {
    required_env("FM_TEST_OIDC_ISSUER")
}

/// The access token the token endpoint of `issuer` issues for the grant `form`.
pub async fn provider_token(issuer: &str, form: &[(&str, &str)]) -> anyhow::Result<String> {
    let url = format!("{issuer}/protocol/openid-connect/token");
    let response = reqwest::Client::new()
        .post(&url)
        .form(form)
        .send()
        .await
        .with_context(|| format!("Failed to reach {url}"))?;
    let status = response.status();
    let body: serde_json::Value = response
        .json()
        .await
        .with_context(|| format!("{url} answered no JSON"))?;
    body["access_token"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("{url} issued no token ({status}): {body}"))
}

/// A person's token from the test provider: the password grant of the local realm's front-end
/// client `fm-web` (in the local realm every password is the user name).
pub async fn person_token(username: &str) -> anyhow::Result<String> {
    let issuer = oidc_issuer()?;
    provider_token(
        &issuer,
        &[
            ("grant_type", "password"),
            ("client_id", "fm-web"),
            ("username", username),
            ("password", username),
        ],
    )
    .await
}

/// A bearer token for `subject` with `role`, valid for an hour, signed with `secret`: the
/// test-only path for suites that still run their services with a shared secret
/// (docs/identity.md, Status).
pub fn token(secret: &str, role: Role, subject: &str) -> String {
    TokenKeys::from_secret(&SecretString::from(secret))
        .expect("a test secret has at least 32 bytes")
        .mint(subject, role, chrono::Duration::hours(1))
        .expect("minting with a valid key")
}
