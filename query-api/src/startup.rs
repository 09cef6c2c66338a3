//! Building and running the service.

use std::sync::Arc;

use anyhow::Context;
use axum::{Router, extract::FromRef, routing::get};
use platform::{auth::TokenKeys, shutdown::CancellationToken};
use secrecy::ExposeSecret;
use sqlx::{PgPool, postgres::PgPoolOptions};

use crate::{
    routes::{bookings, facilities, ops},
    settings::{ConsistencySettings, Settings},
};

/// What every handler can reach.
#[derive(Debug, Clone)]
pub(crate) struct AppState {
    pub(crate) pool: PgPool,
    pub(crate) keys: Arc<TokenKeys>,
    pub(crate) consistency: ConsistencySettings,
}

impl FromRef<AppState> for Arc<TokenKeys> {
    fn from_ref(state: &AppState) -> Self {
        state.keys.clone()
    }
}

/// A built query-api, listening, not yet serving.
#[derive(Debug)]
pub struct Application {
    server: platform::http::HttpServer,
    shutdown: CancellationToken,
}

impl Application {
    /// Connects to Postgres (lazily, so the API starts and reports not-ready while it is down)
    /// and binds the listener.
    pub async fn build(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<Self> {
        let keys = TokenKeys::from_secret(&settings.auth.secret).context("Invalid auth secret")?;
        let pool: PgPool = PgPoolOptions::new()
            .max_connections(settings.database.max_connections)
            .acquire_timeout(settings.database.acquire_timeout)
            .connect_lazy(settings.database.url.expose_secret())
            .context("Invalid database URL")?;
        let state = AppState {
            pool,
            keys: Arc::new(keys),
            consistency: settings.consistency.clone(),
        };
        let router = Router::new()
            .route("/bookings", get(bookings::list_bookings))
            .route("/bookings/{id}", get(bookings::get_booking))
            .route("/facilities", get(facilities::list_facilities))
            .route("/facilities/{id}", get(facilities::get_facility))
            .route("/facilities/{id}/calendar", get(facilities::get_calendar))
            .route("/ready", get(ops::ready))
            .route("/openapi.json", get(ops::openapi))
            .with_state(state);
        let server = platform::http::HttpServer::bind(router, &settings.http).await?;
        Ok(Self { server, shutdown })
    }

    pub fn port(&self) -> u16 {
        self.server.port()
    }

    /// Serves until the shutdown token is cancelled, then drains requests.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.server
            .serve(self.shutdown)
            .await
            .context("HTTP server failed")
    }
}
