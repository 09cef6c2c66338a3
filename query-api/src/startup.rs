//! Building and running the service.

use std::{str::FromStr, sync::Arc, time::Duration};

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
    consistency::{Consistency, Progress},
    read_model::{self, Registration},
    routes::{self, AppState},
    settings::{ConsistencySettings, Settings},
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
        let consistency = Consistency {
            settings: bounded_by_request_timeout(
                settings.consistency.clone(),
                settings.http.request_timeout,
            ),
            progress: Progress::listen(pool.clone(), shutdown.clone()),
        };
        let state = AppState {
            pool,
            verifier: Arc::new(verifier),
            family_sessions: Arc::new(FamilySessions::from_jwks_url(
                settings.family_sessions.jwks_url.as_deref(),
            )),
            consistency,
            wait_limits: Arc::new(RateLimiter::new("consistency_waits", &settings.limits)),
            log_ends: crate::consistency::LogEnds::new(settings.kafka.as_ref()),
            tenancy: settings.tenancy,
            saga_progress: Arc::default(),
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

/// A wait that outlasts the request's own timeout would end as the platform's generic 503 instead
/// of the consistency problem that says what happened: a wait is held a second below the timeout.
fn bounded_by_request_timeout(
    mut settings: ConsistencySettings,
    request_timeout: Duration,
) -> ConsistencySettings {
    let bound = request_timeout.saturating_sub(Duration::from_secs(1));
    if settings.max_wait > bound {
        tracing::warn!(
            max_wait_ms = settings.max_wait.as_millis(),
            request_timeout_ms = request_timeout.as_millis(),
            "FM_CONSISTENCY__MAX_WAIT is not below the request timeout; waits end at {} ms",
            bound.as_millis()
        );
        settings.max_wait = bound;
    }
    settings
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_ends_a_second_before_the_request_times_out() {
        let long = ConsistencySettings {
            max_wait: Duration::from_secs(20),
            ..ConsistencySettings::default()
        };
        let bounded = bounded_by_request_timeout(long, Duration::from_secs(15));
        assert_eq!(bounded.max_wait, Duration::from_secs(14));
        let short = ConsistencySettings::default();
        let kept = bounded_by_request_timeout(short.clone(), Duration::from_secs(15));
        assert_eq!(kept.max_wait, short.max_wait);
    }
}
