//! Building and running the service: `Application::build(settings)`, `run_until_stopped()`.

use std::sync::Arc;

use anyhow::Context;
use axum::{
    Router,
    extract::FromRef,
    routing::{get, post, put},
};
use event_log::EventProducer;
use platform::{auth::TokenKeys, shutdown::CancellationToken};
use schemas::SchemaRegistry;
use tokio::{net::TcpListener, task::JoinHandle};

use crate::{
    commands::CommandHandler,
    routes::{bookings, facilities, ops, payments},
    settings::Settings,
    store::{AggregateStore, Tailer},
};

/// What every handler can reach.
#[derive(Debug, Clone)]
pub(crate) struct AppState {
    pub(crate) commands: CommandHandler,
    pub(crate) producer: EventProducer,
    pub(crate) keys: Arc<TokenKeys>,
}

impl FromRef<AppState> for Arc<TokenKeys> {
    fn from_ref(state: &AppState) -> Self {
        state.keys.clone()
    }
}

/// A built command-service, listening, not yet serving.
#[derive(Debug)]
pub struct Application {
    port: u16,
    listener: TcpListener,
    router: Router,
    tailer: JoinHandle<()>,
    shutdown: CancellationToken,
}

impl Application {
    /// Connects to the broker, starts reading the log into the aggregate store, and binds the
    /// HTTP listener. `/ready` turns true once the store has caught up.
    pub async fn build(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<Self> {
        let keys = TokenKeys::from_secret(&settings.auth.secret).context("Invalid auth secret")?;
        let registry = SchemaRegistry::load().context("Failed to compile the event schemas")?;
        let producer =
            EventProducer::new(&settings.kafka).context("Failed to create the producer")?;
        let kafka = settings.kafka.clone();
        let tailer = tokio::task::spawn_blocking(move || Tailer::start(&kafka, "command-service"))
            .await
            .context("Tailer start-up panicked")?
            .context(
                "Failed to read the event topics (do they exist? run `fmctl topics ensure`)",
            )?;
        let store = Arc::new(AggregateStore::new(
            registry,
            settings.commands.idempotency_retention,
        ));
        let tailer = tokio::spawn(tailer.run(store.clone(), shutdown.clone()));
        let commands =
            CommandHandler::new(store, producer.clone(), settings.commands.outcome_timeout);
        let state = AppState {
            commands,
            producer,
            keys: Arc::new(keys),
        };
        let router = Router::new()
            .route("/facilities", post(facilities::register))
            .route(
                "/facilities/{id}/opening-hours",
                put(facilities::change_opening_hours),
            )
            .route(
                "/facilities/{id}/reservations",
                post(facilities::reserve_slot),
            )
            .route(
                "/facilities/{id}/reservations/{booking_id}/release",
                post(facilities::release_slot),
            )
            .route("/bookings", post(bookings::request))
            .route("/bookings/{id}/cancel", post(bookings::cancel))
            .route("/bookings/{id}/slot-held", post(bookings::mark_slot_held))
            .route("/bookings/{id}/confirm", post(bookings::confirm))
            .route("/bookings/{id}/reject", post(bookings::reject))
            .route("/bookings/{id}/fail", post(bookings::fail))
            .route("/bookings/{id}/payment/captured", post(payments::captured))
            .route("/bookings/{id}/payment/declined", post(payments::declined))
            .route("/bookings/{id}/payment/refunded", post(payments::refunded))
            .route("/ready", get(ops::ready))
            .route("/openapi.json", get(ops::openapi))
            .with_state(state);
        let router = platform::http::standard_layers(router, &settings.http);
        let listener = platform::http::bind(&settings.http)
            .await
            .with_context(|| {
                format!(
                    "Failed to bind {}:{}",
                    settings.http.host, settings.http.port
                )
            })?;
        let port = listener.local_addr()?.port();
        Ok(Self {
            port,
            listener,
            router,
            tailer,
            shutdown,
        })
    }

    /// The port the service listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until the shutdown token is cancelled, then drains requests and stops reading.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        platform::http::serve(self.listener, self.router, self.shutdown.clone())
            .await
            .context("HTTP server failed")?;
        self.shutdown.cancel();
        self.tailer.await.context("Log tailer panicked")?;
        Ok(())
    }
}
