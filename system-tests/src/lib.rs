//! The harness for tests that span services: it starts the command-service, the
//! projection-service and the query-api in-process on free ports, against the real broker and
//! PostgreSQL that the test command (`compose/test`) started, each test with its own topics
//! and its own database so tests never see each other's data.
//!
//! The broker and database come from `FM_TEST_KAFKA_BROKERS` and `FM_TEST_DATABASE_URL`
//! (`test_support`, re-exported here: `fresh_kafka`, `fresh_database`); a test run without them
//! fails at once with a sentence saying how to run it.
//!
//! - [`TestStack`]: the three services in this process.
//! - [`process`]: a service binary as a child process (another build, a signal, a crash).
//! - [`private`]: a PostgreSQL and a Kafka node of the test's own, to stop, stall or restart.
//! - [`saga_stack`], [`simulator`], [`smtp_sink`]: the booking flow with the saga runner, the
//!   payment gateway simulator and an SMTP sink.

use std::time::Duration;

use anyhow::bail;
use event_log::KafkaSettings;
use platform::{
    settings::{AuthSettings, DatabaseSettings, HttpSettings},
    shutdown::CancellationToken,
};
use schemas::Role;
use secrecy::SecretString;
use test_support::spawn_app;

pub mod private;
pub mod process;
pub mod saga_stack;
pub mod simulator;
pub mod smtp_sink;

pub use test_support::{fresh_database, fresh_kafka, fresh_kafka_on, required_env};

/// The three services, running in this process.
#[derive(Debug)]
pub struct TestStack {
    pub command_url: String,
    pub query_url: String,
    pub projection_url: String,
    pub kafka: KafkaSettings,
    pub database_url: String,
    pub http: reqwest::Client,
    shutdown: CancellationToken,
}

impl TestStack {
    /// Starts every service on fresh topics and a fresh database and waits until all are ready.
    pub async fn spawn() -> anyhow::Result<Self> {
        Self::spawn_on(fresh_kafka().await?).await
    }

    /// Starts every service on `kafka` (e.g. a broker of the test's own, [`private`]) and a
    /// fresh database, and waits until all are ready.
    pub async fn spawn_on(kafka: KafkaSettings) -> anyhow::Result<Self> {
        Self::spawn_with(kafka, test_support::auth_settings(), |_| {}).await
    }

    /// [`TestStack::spawn_on`] with the command-service's settings changed by `configure` first
    /// (its SMTP server, its invitation settings).
    pub async fn spawn_configured(
        kafka: KafkaSettings,
        configure: impl FnOnce(&mut command_service::Settings),
    ) -> anyhow::Result<Self> {
        Self::spawn_with(kafka, test_support::auth_settings(), configure).await
    }

    /// Starts every service on `kafka` and a fresh database, the command-service and the
    /// query-api checking tokens by `auth` (e.g. a realm of the test's own), and waits until
    /// all are ready. No home has a price list: the test publishes what it needs with a token
    /// its realm issues (`test_support::publish_price_list_as`).
    pub async fn spawn_with_auth(kafka: KafkaSettings, auth: AuthSettings) -> anyhow::Result<Self> {
        Self::spawn_with(kafka, auth, |_| {}).await
    }

    /// The services on `kafka` and a fresh database, checking tokens by `auth`, the
    /// command-service's settings changed by `configure`; the query-api trusts the
    /// command-service's family sessions (`FM_FAMILY_SESSIONS__JWKS_URL`).
    async fn spawn_with(
        kafka: KafkaSettings,
        auth: AuthSettings,
        configure: impl FnOnce(&mut command_service::Settings),
    ) -> anyhow::Result<Self> {
        let publish_lists = auth.issuer == test_support::auth_settings().issuer;
        let database_url = fresh_database().await?;
        let shutdown = CancellationToken::new();
        let http_settings = HttpSettings::on_port(0);
        let database = DatabaseSettings {
            url: SecretString::from(database_url.clone()),
            ..DatabaseSettings::default()
        };

        let projection_settings = projection_service::Settings {
            http: http_settings.clone(),
            kafka: kafka.clone(),
            database: database.clone(),
            privacy: Some(test_support::privacy_settings()),
            ..projection_service::Settings::default()
        };
        let projection_url =
            spawn_app::<projection_service::Application>(projection_settings, &shutdown).await?;

        let mut command_settings = command_service::Settings::with_auth(
            auth.clone(),
            test_support::key_database(),
            test_support::privacy_settings(),
        );
        command_settings.http = http_settings.clone();
        command_settings.kafka = kafka.clone();
        configure(&mut command_settings);
        let command_url =
            spawn_app::<command_service::Application>(command_settings, &shutdown).await?;

        let mut query_settings = query_api::Settings::new(auth, database);
        query_settings.http = http_settings;
        query_settings.family_sessions.jwks_url =
            Some(format!("{command_url}/family-sessions/jwks.json"));
        let query_url = spawn_app::<query_api::Application>(query_settings, &shutdown).await?;

        let stack = Self {
            command_url,
            query_url,
            projection_url,
            kafka,
            database_url,
            http: reqwest::Client::new(),
            shutdown,
        };
        for url in [&stack.command_url, &stack.query_url, &stack.projection_url] {
            stack.wait_ready(url).await?;
        }
        // The homes' price lists, which every booking is priced by; with the test provider's
        // tokens only (a stack of another realm's publishes its own).
        if publish_lists {
            test_support::publish_price_lists(&stack.command_url).await?;
        }
        Ok(stack)
    }

    async fn wait_ready(&self, base: &str) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let response = self.http.get(format!("{base}/ready")).send().await;
            if response.as_ref().is_ok_and(|r| r.status().is_success()) {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                let body = match response {
                    Ok(response) => response.text().await.unwrap_or_default(),
                    Err(error) => error.to_string(),
                };
                bail!("{base} did not become ready within 30 s: {body}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A bearer token of the test provider for the person or client standing for `subject` with
    /// `role` (`test_support::token`).
    pub async fn token(&self, role: Role, subject: &str) -> String {
        test_support::token(role, subject).await
    }
}

impl Drop for TestStack {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Bodies for the contract's requests, valid unless a test changes them.
pub mod bodies {
    use chrono::{Datelike, Duration, NaiveTime, TimeZone, Utc};
    use serde_json::{Value, json};

    /// The price list the test stacks publish for their homes (`test_support::price_list`).
    pub fn price_list() -> Value {
        test_support::price_list()
    }

    /// A chapel in London open 08:00–20:00 every day, with a 30-minute turnaround.
    pub fn facility() -> Value {
        let hours: Vec<Value> = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
            .iter()
            .map(|day| json!({"weekday": day, "opens": "08:00", "closes": "20:00"}))
            .collect();
        json!({
            "name": "St Mary's Chapel",
            "kind": "chapel",
            "capacity": 120,
            "time_zone": "Europe/London",
            "opening_hours": hours,
            "turnaround_minutes": 30,
        })
    }

    /// A one-hour burial at 10:00 London time `days_ahead` days from now: priced by the home's
    /// list at `test_support::ONE_HOUR_BURIAL_IN_A_CHAPEL` in a chapel.
    pub fn booking(facility_id: &str, days_ahead: i64) -> Value {
        let day = (Utc::now() + Duration::days(days_ahead)).date_naive();
        let start = chrono_tz::Europe::London
            .from_local_datetime(
                &day.and_time(NaiveTime::from_hms_opt(10, 0, 0).expect("valid time")),
            )
            .single()
            .expect("10:00 exists on every London day");
        let end = start + Duration::hours(1);
        let death = Utc::now().date_naive() - Duration::days(2);
        json!({
            "facility_id": facility_id,
            "service_type": "burial",
            "slot": {"start": start.to_rfc3339(), "end": end.to_rfc3339()},
            "deceased": {"full_name": "Ada Lovelace", "date_of_death": format!("{:04}-{:02}-{:02}", death.year(), death.month(), death.day())},
            "family_contacts": [{"name": "Byron King", "relationship": "son", "email": "byron@example.org", "phone": "+447700900123"}],
        })
    }
}
