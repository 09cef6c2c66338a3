//! Building and running the service.

use anyhow::Context;
use platform::{shutdown::CancellationToken, startup::Service};
use schemas::SchemaRegistry;
use secrecy::ExposeSecret;
use sqlx::{PgPool, postgres::PgPoolOptions};
use std::sync::Arc;
use tokio::task::JoinHandle;

use crate::{
    projector::ProjectorConfig,
    read_model::READ_MODEL,
    routes::{self, AppState},
    settings::Settings,
    supervisor::Supervisor,
    versions::{self, BuildState},
};

/// The read-model migrations, owned by this service.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

async fn connect(settings: &Settings) -> anyhow::Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(settings.database.max_connections)
        .acquire_timeout(settings.database.acquire_timeout)
        .connect(settings.database.url.expose_secret())
        .await
        .context("Failed to connect to PostgreSQL")
}

/// Runs the read-model migrations.
pub async fn migrate(settings: &Settings) -> anyhow::Result<()> {
    let pool = connect(settings).await?;
    MIGRATOR
        .run(&pool)
        .await
        .context("Failed to run the read-model migrations")
}

/// A built projection-service.
#[derive(Debug)]
pub struct Application {
    server: platform::http::HttpServer,
    projector: JoinHandle<()>,
    shutdown: CancellationToken,
}

impl Service for Application {
    type Settings = Settings;
    const NAME: &'static str = "projection-service";

    fn log_settings(settings: &Settings) -> &platform::settings::LogSettings {
        &settings.log
    }

    /// Migrates, declares this release's read-model version (creating a build of it if it has
    /// none), starts the projector of its live build (else of its building one) at its stored
    /// offsets and the supervisor that follows the version's builds, binds the health/metrics
    /// listener.
    async fn build(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<Self> {
        let pool = connect(&settings).await?;
        MIGRATOR
            .run(&pool)
            .await
            .context("Failed to run the read-model migrations")?;
        let registry = SchemaRegistry::load().context("Failed to compile the event schemas")?;
        let privacy = settings
            .privacy
            .as_ref()
            .context("FM_PRIVACY__MASTER_KEYS must be set: the projector opens personal data")?;
        let keys = Arc::new(
            privacy::KeyStore::connect(&settings.database, privacy)
                .await
                .context("Failed to open the data keys")?,
        );
        event_log::topics::verify_partitions(&settings.kafka)
            .await
            .context("Refusing to start on the event topics")?;
        let builds = versions::declare(&pool, &READ_MODEL, Self::NAME)
            .await
            .context("Failed to declare the read-model version")?;
        tracing::info!(
            version = READ_MODEL.version,
            builds = ?builds,
            "this release builds and keeps current read-model version {}",
            READ_MODEL.version
        );
        // The live build answers queries now: it comes first. Else the one being built.
        let first = builds
            .iter()
            .find(|b| b.state == BuildState::Live)
            .or_else(|| builds.iter().find(|b| b.state == BuildState::Building))
            .copied()
            .context("the read-model version was declared without a build")?;
        let supervisor = Supervisor {
            admin_pool: pool.clone(),
            database_url: settings.database.url.expose_secret().to_owned(),
            acquire_timeout: settings.database.acquire_timeout,
            registry: Arc::new(registry),
            keys,
            config: ProjectorConfig {
                kafka: settings.kafka.clone(),
                batch_size: settings.projector.batch_size.max(1),
                switch_check_interval: settings.projector.switch_check_interval,
                lag_interval: settings.projector.lag_interval,
            },
            interval: settings.projector.supervise_interval,
            model: READ_MODEL,
            drop_grace: settings.projector.drop_grace,
        };
        let claimed = supervisor.projector(first).await.context(
            "Failed to start the projector (do the topics exist? run `fmctl topics ensure`)",
        )?;
        if claimed.is_none() {
            tracing::info!(
                version = first.version,
                build = first.build,
                "another replica projects the build; standing by"
            );
        }
        let first = claimed.map(|claimed| (first.build, claimed));
        let projector = tokio::spawn(supervisor.run(first, shutdown.clone()));
        let producer = event_log::EventProducer::new(&settings.kafka)?;
        let router = routes::router(AppState {
            pool,
            producer,
            version: READ_MODEL.version,
        });
        let server = platform::http::HttpServer::bind(router, &settings.http).await?;
        Ok(Self {
            server,
            projector,
            shutdown,
        })
    }

    fn port(&self) -> u16 {
        self.server.port()
    }

    /// Serves health and metrics until shutdown, then waits for the projector to finish its
    /// record in hand.
    async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.server.serve(self.shutdown.clone()).await?;
        self.shutdown.cancel();
        self.projector.await.context("Projector panicked")?;
        Ok(())
    }
}
