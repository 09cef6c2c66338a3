//! What the tests share, so that every level of the test pyramid has one shape:
//!
//! - storage and projections: `#[sqlx::test]` (a fresh database per test, from `DATABASE_URL`);
//! - a service's API: [`spawn_app`], the service in-process on a port the system picks;
//! - across services and processes: [`fresh_database`] and [`fresh_kafka`], a database and
//!   topics of the test's own on the broker and PostgreSQL that `compose/test` started
//!   (`FM_TEST_DATABASE_URL`, `FM_TEST_KAFKA_BROKERS`);
//! - and, for every request, a bearer token the test stack's identity provider issues
//!   ([`token`], [`person_token`], [`client_token`]; `FM_TEST_OIDC_ISSUER`), never one minted:
//!   the services a test starts trust that provider only ([`auth_settings`], [`auth_env`]);
//! - two releases side by side: [`variants::build_variant`], the binaries built once more with
//!   a test-only feature.
//!
//! A test run without the test stack fails at once with a sentence saying how to run it.

use anyhow::Context;
use event_log::KafkaSettings;
use std::{collections::HashMap, sync::Mutex};

use platform::{settings::AuthSettings, shutdown::CancellationToken, startup::Service};
use schemas::Role;
use secrecy::SecretString;
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

pub mod variants;

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
    fresh_kafka_on(&required_env("FM_TEST_KAFKA_BROKERS")?).await
}

/// Kafka settings for `brokers` (a broker of the test's own) with a topic prefix of the test's
/// own, and those topics created.
pub async fn fresh_kafka_on(brokers: &str) -> anyhow::Result<KafkaSettings> {
    let settings = KafkaSettings {
        brokers: brokers.to_owned(),
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

/// The local realm's confidential clients of the saga runner and of fmctl
/// (compose/keycloak/realm.json; local secrets, published with the repository), as the stack's
/// description (`stack`) knows them.
pub use stack::{FMCTL_CLIENT, SAGA_RUNNER_CLIENT};

/// Auth settings that trust the test provider only (`FM_TEST_OIDC_ISSUER`): what every service a
/// test starts in-process is given.
///
/// # Panics
/// When the test stack is not running (the message says how to run the tests).
pub fn auth_settings() -> AuthSettings {
    match oidc_issuer() {
        Ok(issuer) => AuthSettings::oidc(issuer),
        Err(error) => panic!("{error:#}"),
    }
}

/// [`auth_settings`] with the saga runner's own client, for a saga runner a test starts.
pub fn saga_runner_auth_settings() -> AuthSettings {
    let mut auth = auth_settings();
    auth.client_id = Some(SAGA_RUNNER_CLIENT.0.to_owned());
    auth.client_secret = Some(SecretString::from(SAGA_RUNNER_CLIENT.1));
    auth
}

/// The environment that makes a service process trust the test provider only
/// (`FM_AUTH__ISSUER`; for the saga runner and fmctl add [`client_env`]).
pub fn auth_env() -> Vec<(&'static str, String)> {
    vec![(
        "FM_AUTH__ISSUER",
        auth_settings().issuer.unwrap_or_default(),
    )]
}

/// The facts of the test stack (`stack::Facts`) that every service process a test starts
/// shares: tokens from the test provider, [`TEST_MASTER_KEYS`] with the data keys in the test
/// server's database, no limits on the flow (tests drive many writes and waits with a few
/// tokens from one address), JSON logs at `info`. A test adds where its data is (database,
/// brokers, topic prefix) and [`stack::env`] turns the facts into each service's environment.
///
/// # Panics
/// When the test stack is not running (the message says how to run the tests).
pub fn stack_facts() -> stack::Facts {
    stack::Facts {
        auth: Some(stack::Auth::Provider {
            issuer: auth_settings().issuer.unwrap_or_default(),
        }),
        master_keys: Some(TEST_MASTER_KEYS.to_owned()),
        key_database_url: Some(key_database_url()),
        limits: false,
        log_format: Some("json".to_owned()),
        log_filter: Some("info".to_owned()),
        ..stack::Facts::default()
    }
}

fn key_database_url() -> String {
    match required_env("FM_TEST_DATABASE_URL") {
        Ok(url) => url,
        Err(error) => panic!("{error:#}"),
    }
}

/// The environment that lifts the limits on the flow of a command-service or query-api process
/// (`FM_LIMITS__…`, docs/security.md): tests drive many writes and waits with a few tokens
/// from one address. A test of a limit sets its own.
pub fn no_limits_env() -> Vec<(&'static str, String)> {
    [
        "FM_LIMITS__MAX_OPEN_BOOKINGS_PER_FAMILY",
        "FM_LIMITS__PER_SUBJECT_PER_MINUTE",
        "FM_LIMITS__PER_ADDRESS_PER_MINUTE",
    ]
    .into_iter()
    .map(|key| (key, "0".to_owned()))
    .collect()
}

/// The environment of a confidential client (`FM_AUTH__CLIENT_ID`, `FM_AUTH__CLIENT_SECRET`).
pub fn client_env((id, secret): (&str, &str)) -> Vec<(&'static str, String)> {
    vec![
        ("FM_AUTH__CLIENT_ID", id.to_owned()),
        ("FM_AUTH__CLIENT_SECRET", secret.to_owned()),
    ]
}

/// Tokens already issued in this test process, by user or client (they live 10 hours).
static ISSUED: Mutex<Option<HashMap<String, String>>> = Mutex::new(None);

/// A bearer token with `role` from the test provider, for the local realm's person or client
/// that stands for `subject` (compose/keycloak/realm.json):
///
/// | role | subject | issued to |
/// | --- | --- | --- |
/// | director | `director-2`, `director-b` | `director-b` (home B) |
/// | director | any other | `director-a` (home A) |
/// | family | `family-2` | `family-2` |
/// | family | any other | `family-demo` |
/// | ops | any | `operator` |
/// | system | any | the saga runner's client (`fm-saga-runner`, client credentials) |
///
/// The token's `sub` is the provider's id of that person or client, not `subject`. Tokens are
/// cached for the test process.
///
/// # Panics
/// When the provider issues none (the message says why).
pub async fn token(role: Role, subject: &str) -> String {
    let who = match (role, subject) {
        (Role::Director, "director-2" | "director-b") => "director-b",
        (Role::Director, _) => "director-a",
        (Role::Family, "family-2") => "family-2",
        (Role::Family, _) => "family-demo",
        (Role::Ops, _) => "operator",
        (Role::System, _) => SAGA_RUNNER_CLIENT.0,
    };
    let cached = ISSUED
        .lock()
        .ok()
        .and_then(|issued| issued.as_ref()?.get(who).cloned());
    if let Some(token) = cached {
        return token;
    }
    let issued = if role == Role::System {
        client_token(SAGA_RUNNER_CLIENT).await
    } else {
        person_token(who).await
    };
    let token = match issued {
        Ok(token) => token,
        Err(error) => panic!("the test provider issued no token for {who}: {error:#}"),
    };
    if let Ok(mut issued) = ISSUED.lock() {
        issued
            .get_or_insert_with(HashMap::new)
            .insert(who.to_owned(), token.clone());
    }
    token
}

/// A client-credentials token of one of the local realm's confidential clients.
pub async fn client_token((id, secret): (&str, &str)) -> anyhow::Result<String> {
    provider_token(
        &oidc_issuer()?,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", id),
            ("client_secret", secret),
        ],
    )
    .await
}

/// The master key every service a test starts is given (docs/privacy.md): fixed, so that
/// services of one test, and `fmctl`, open each other's boxes. A test key, never a deployment's.
pub const TEST_MASTER_KEYS: &str = "test-1:dGVzdC1tYXN0ZXIta2V5LW9mLTMyLWJ5dGVzLW9rISE=";

/// Privacy settings with [`TEST_MASTER_KEYS`] and the data keys in the test server's database
/// (`FM_TEST_DATABASE_URL`), whatever database the service itself is given: every service of a
/// test, and `fmctl`, must reach the same keys.
///
/// # Panics
/// When the test stack is not running (the message says how to run the tests).
pub fn privacy_settings() -> privacy::PrivacySettings {
    let mut settings = privacy::PrivacySettings::with_master_keys(TEST_MASTER_KEYS);
    settings.database_url = Some(key_database().url);
    settings
}

/// Where the data keys of the services a test starts live: the test server's database
/// (`FM_TEST_DATABASE_URL`), shared by every test (booking ids never repeat).
///
/// # Panics
/// When the test stack is not running (the message says how to run the tests).
pub fn key_database() -> platform::settings::DatabaseSettings {
    match required_env("FM_TEST_DATABASE_URL") {
        Ok(url) => platform::settings::DatabaseSettings {
            url: SecretString::from(url),
            ..platform::settings::DatabaseSettings::default()
        },
        Err(error) => panic!("{error:#}"),
    }
}

/// The environment that gives a service process the test's key store and master key
/// (`FM_PRIVACY__DATABASE_URL`, `FM_PRIVACY__MASTER_KEYS`), as [`privacy_settings`].
pub fn privacy_env() -> Vec<(&'static str, String)> {
    vec![
        (
            "FM_PRIVACY__DATABASE_URL",
            required_env("FM_TEST_DATABASE_URL").unwrap_or_default(),
        ),
        ("FM_PRIVACY__MASTER_KEYS", TEST_MASTER_KEYS.to_owned()),
    ]
}

/// Calls every operation of a service's OpenAPI `document` on `base` with a real token of each
/// role ([`token`]; path parameters a fresh UUID, a POST's body `{}`) and returns where the
/// answer and the document disagree: a 403 for a role the operation's `x-fm-roles` lists, or
/// anything else for a role it does not list, or an operation that lists no roles
/// (`platform::openapi::RouteRoles`; issue 16 item 7).
///
/// # Panics
/// When a request cannot be sent or the provider issues no token.
pub async fn route_role_mismatches(base: &str, document: &serde_json::Value) -> Vec<String> {
    let client = reqwest::Client::new();
    let mut mismatches = Vec::new();
    for ((method, template), declared) in platform::openapi::declared_roles(document) {
        // Routes that take no staff token (the family-session exchange, its refresh and keys:
        // their security names no `bearer` scheme) have no roles to declare; who they let in is
        // system-tests/tests/invitations.rs's to show.
        let staff_token = document["paths"][&template][&method]["security"]
            .as_array()
            .is_none_or(|requirements| {
                requirements
                    .iter()
                    .any(|requirement| requirement.get("bearer").is_some())
            });
        if !staff_token {
            continue;
        }
        if declared.is_empty() {
            mismatches.push(format!("{method} {template} declares no roles"));
            continue;
        }
        let path: Vec<String> = template
            .split('/')
            .map(|segment| {
                if segment.starts_with('{') {
                    Uuid::new_v4().to_string()
                } else {
                    segment.to_owned()
                }
            })
            .collect();
        let url = format!("{base}{}", path.join("/"));
        for role in [Role::Director, Role::Family, Role::Ops, Role::System] {
            let bearer = token(role, "route-roles").await;
            let request = match method.as_str() {
                "get" => client.get(&url),
                "post" => client.post(&url).json(&serde_json::json!({})),
                "put" => client.put(&url).json(&serde_json::json!({})),
                "patch" => client.patch(&url).json(&serde_json::json!({})),
                "delete" => client.delete(&url),
                other => panic!("no request for the method {other}"),
            };
            let status = match request.bearer_auth(&bearer).send().await {
                Ok(response) => response.status(),
                Err(error) => panic!("{method} {url}: {error}"),
            };
            let allowed = declared.iter().any(|name| name == role.as_str());
            if allowed == (status == reqwest::StatusCode::FORBIDDEN) {
                mismatches.push(format!(
                    "{method} {template}: {role} got {status}, the document says {declared:?}"
                ));
            }
        }
    }
    mismatches
}

/// The price list every test stack publishes for the local realm's homes
/// (`compose/price-list.json`, which the soak publishes too): every service type, every
/// facility kind by the hour, three add-ons. A one-hour burial in a chapel costs
/// [`ONE_HOUR_BURIAL_IN_A_CHAPEL`].
pub fn price_list() -> serde_json::Value {
    serde_json::from_str(PRICE_LIST).expect("compose/price-list.json is JSON (a test checks it)")
}

/// `compose/price-list.json`, as the test stacks and the soak publish it.
pub const PRICE_LIST: &str = include_str!("../../compose/price-list.json");

/// What [`price_list`] charges for a one-hour burial in a chapel: £1,250.00.
pub const ONE_HOUR_BURIAL_IN_A_CHAPEL: i64 = 125_000;

/// Publishes [`price_list`] for both homes of the local realm (`LOCAL_HOME_A`, the default home
/// of facilities registered without one, and `LOCAL_HOME_B`) on the command-service at
/// `command_url`, as the realm's group administrator: a stack cannot take bookings before its
/// homes have price lists (docs/pricing.md).
pub async fn publish_price_lists(command_url: &str) -> anyhow::Result<()> {
    use platform::settings::TenancySettings;
    let token = person_token("group-admin").await?;
    for home in [TenancySettings::LOCAL_HOME_A, TenancySettings::LOCAL_HOME_B] {
        publish_price_list_as(command_url, &token, home).await?;
    }
    Ok(())
}

/// Publishes [`price_list`] for `home` with `token` (a director of the home or a group
/// administrator: a stack checking another realm's tokens needs one of that realm).
pub async fn publish_price_list_as(
    command_url: &str,
    token: &str,
    home: uuid::Uuid,
) -> anyhow::Result<()> {
    let response = reqwest::Client::new()
        .put(format!("{command_url}/homes/{home}/price-list"))
        .bearer_auth(token)
        .json(&price_list())
        .send()
        .await?;
    let status = response.status();
    if !status.is_success() {
        let body = response.text().await.unwrap_or_default();
        anyhow::bail!("publishing the price list of home {home} answered {status}: {body}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_price_list_prices_a_one_hour_burial_in_a_chapel_as_the_tests_expect() {
        let list = price_list();
        let amount_of = |code: &str| {
            list["items"]
                .as_array()
                .and_then(|items| items.iter().find(|item| item["code"] == code))
                .and_then(|item| item["amount_minor"].as_i64())
                .unwrap_or_else(|| panic!("compose/price-list.json has no {code}"))
        };
        assert_eq!(
            amount_of("burial") + amount_of("chapel.hour"),
            ONE_HOUR_BURIAL_IN_A_CHAPEL
        );
    }
}
