//! Building and running the service.

use std::{str::FromStr, sync::Arc};

use anyhow::Context;
use platform::{
    auth::{Verifier, family::FamilySessions},
    rate_limit::RateLimiter,
    shutdown::CancellationToken,
    startup::Service,
};
use secrecy::ExposeSecret;
use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};

use crate::{
    read_model::{self, Registration},
    routes::{self, AppState},
    settings::Settings,
};

/// A built query-api, listening, not yet serving.
#[derive(Debug)]
pub struct Application {
    server: platform::http::HttpServer,
    registration: Registration,
    shutdown: CancellationToken,
}

impl Service for Application {
    type Settings = Settings;
    const NAME: &'static str = "query-api";
    const SETTINGS_HINT: &'static str = " (FM_AUTH__ISSUER or FM_AUTH__SECRET must be set)";

    fn log_settings(settings: &Settings) -> &platform::settings::LogSettings {
        &settings.log
    }

    /// Connects to Postgres (lazily, so the API starts and reports not-ready while it is down)
    /// with its read-model version's views as the only schema on the `search_path`, registers
    /// as that version's reader, and binds the listener.
    async fn build(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<Self> {
        let verifier = Verifier::from_settings(&settings.auth).context("Invalid auth settings")?;
        verifier.warm_up().await;
        let options = PgConnectOptions::from_str(settings.database.url.expose_secret())
            .context("Invalid database URL")?
            .options([("search_path", read_model::schema())]);
        let pool: PgPool = PgPoolOptions::new()
            .max_connections(settings.database.max_connections)
            .acquire_timeout(settings.database.acquire_timeout)
            .connect_lazy_with(options);
        tracing::info!(
            version = read_model::VERSION,
            "this release reads read-model version {}",
            read_model::VERSION
        );
        let registration = Registration::start(pool.clone(), &settings.read_model);
        let state = AppState {
            pool,
            verifier: Arc::new(verifier),
            family_sessions: Arc::new(FamilySessions::from_jwks_url(
                settings.family_sessions.jwks_url.as_deref(),
            )),
            consistency: settings.consistency.clone(),
            wait_limits: Arc::new(RateLimiter::new("consistency_waits", &settings.limits)),
            log_ends: crate::consistency::LogEnds::new(settings.kafka.as_ref()),
        };
        let server =
            platform::http::HttpServer::bind(routes::router(state), &settings.http).await?;
        Ok(Self {
            server,
            registration,
            shutdown,
        })
    }

    fn port(&self) -> u16 {
        self.server.port()
    }

    /// Serves until the shutdown token is cancelled, then drains requests and marks this reader
    /// stopped.
    async fn run_until_stopped(self) -> anyhow::Result<()> {
        let served = self
            .server
            .serve(self.shutdown)
            .await
            .context("HTTP server failed");
        self.registration.stop().await;
        served
    }
}
