//! Building and running the service: `Application::build(settings)`, `run_until_stopped()`.

use std::sync::Arc;

use anyhow::Context;
use event_log::EventProducer;
use platform::{auth::Verifier, shutdown::CancellationToken, startup::Service};
use schemas::SchemaRegistry;
use tokio::task::JoinHandle;

use crate::{
    commands::CommandHandler,
    lag::LagMonitor,
    routes::{self, AppState},
    settings::Settings,
    snapshot,
    store::{AggregateStore, LogHead, Tailer},
};

/// A built command-service, listening, not yet serving.
#[derive(Debug)]
pub struct Application {
    server: platform::http::HttpServer,
    /// The tailer, the lag monitor, the store's sweeper and the snapshot writer.
    background: Vec<JoinHandle<()>>,
    shutdown: CancellationToken,
    startup: StartupReport,
}

/// How the service started: from a snapshot or from the start of the log, and how many records
/// it had to read to catch up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartupReport {
    pub restored_from_snapshot: bool,
    /// Records between the store's starting point and the end of the log at start-up.
    pub backlog: i64,
}

impl Application {
    /// How the service started.
    pub fn startup(&self) -> StartupReport {
        self.startup
    }
}

impl Service for Application {
    type Settings = Settings;
    const NAME: &'static str = "command-service";
    const SETTINGS_HINT: &'static str =
        " (FM_AUTH__ISSUER or FM_AUTH__SECRET, and FM_PRIVACY__MASTER_KEYS, must be set)";

    fn log_settings(settings: &Settings) -> &platform::settings::LogSettings {
        &settings.log
    }

    /// Connects to the broker, starts reading the log into the aggregate store, and binds the
    /// HTTP listener. `/ready` turns true once the store has caught up.
    async fn build(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<Self> {
        let verifier = Verifier::from_settings(&settings.auth).context("Invalid auth settings")?;
        let (keys, invitations, mailer, price_lists) = open_stores(&settings).await?;
        verifier.warm_up().await;
        let registry =
            Arc::new(SchemaRegistry::load().context("Failed to compile the event schemas")?);
        let producer =
            EventProducer::new(&settings.kafka).context("Failed to create the producer")?;
        event_log::topics::verify_partitions(&settings.kafka)
            .await
            .context("Refusing to start on the event topics")?;
        let kafka = settings.kafka.clone();
        let head = tokio::task::spawn_blocking(move || LogHead::read(&kafka, "command-service"))
            .await
            .context("Reading the log's head panicked")?
            .context(
                "Failed to read the event topics (do they exist? run `fmctl topics ensure`)",
            )?;
        let cluster_id = head.cluster_id.clone();
        let snapshot_path = settings.commands.snapshot_path.clone();
        let restored = snapshot_path
            .as_deref()
            .and_then(|path| snapshot::load(path, &settings.kafka.topic_prefix, &head));
        let restored_from_snapshot = restored.is_some();
        let store = Arc::new(AggregateStore::new(
            registry.clone(),
            event_log::Topics::new(&settings.kafka.topic_prefix),
            settings.commands.idempotency_retention,
            restored.unwrap_or_default(),
        ));
        #[allow(unused_mut)] // Only debug builds set the test hook.
        let mut tailer = Tailer::start(head, &store).context(
            "Failed to read the event topics (do they exist? run `fmctl topics ensure`)",
        )?;
        #[cfg(debug_assertions)]
        {
            tailer.pause.clone_from(&settings.commands.pause_tailer);
        }
        let lag_monitor = LagMonitor::new(&settings.kafka, tailer.partitions())
            .context("Failed to create the lag monitor's Kafka client")?;
        let startup = StartupReport {
            restored_from_snapshot,
            backlog: tailer.backlog(),
        };
        tracing::info!(
            restored_from_snapshot,
            backlog = startup.backlog,
            "reading the log into the aggregate store"
        );
        let mut background = vec![
            tokio::spawn(tailer.run(store.clone(), shutdown.clone())),
            tokio::spawn(crate::store::run_sweeper(store.clone(), shutdown.clone())),
            tokio::spawn(lag_monitor.run(
                store.clone(),
                settings.commands.lag_check_interval,
                shutdown.clone(),
            )),
            tokio::spawn(price_lists.clone().listen(shutdown.clone())),
        ];
        if let Some(path) = snapshot_path {
            background.push(tokio::spawn(snapshot::run_writer(
                store.clone(),
                path,
                settings.kafka.topic_prefix.clone(),
                cluster_id,
                settings.commands.snapshot_interval,
                shutdown.clone(),
            )));
        }
        let commands = CommandHandler::new(
            store,
            producer.clone(),
            registry,
            settings.commands.outcome_timeout,
        );
        let state = AppState {
            commands,
            producer,
            verifier: Arc::new(verifier),
            limits: Arc::new(routes::Limits::new(&settings.limits)),
            keys,
            tenancy: settings.tenancy,
            family_sessions: Arc::new(invitations.verifier()),
            invitations,
            exchange_limits: Arc::new(routes::ExchangeLimits::new(&settings.invitations)),
            invitation_settings: Arc::new(settings.invitations.clone()),
            mailer,
            price_lists,
            max_tailer_lag: settings.commands.max_tailer_lag,
        };
        let server =
            platform::http::HttpServer::bind(routes::router(state), &settings.http).await?;
        Ok(Self {
            server,
            background,
            shutdown,
            startup,
        })
    }

    /// The port the service listens on.
    fn port(&self) -> u16 {
        self.server.port()
    }

    /// Serves until the shutdown token is cancelled, then drains requests and stops reading.
    async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.server
            .serve(self.shutdown.clone())
            .await
            .context("HTTP server failed")?;
        self.shutdown.cancel();
        for task in self.background {
            task.await
                .context("A background task (tailer, sweeper, snapshot writer) panicked")?;
        }
        Ok(())
    }
}

/// The data keys, the invitations (both in PostgreSQL, under the privacy master keys), the
/// mailer of invitation letters and the homes' price lists.
async fn open_stores(
    settings: &Settings,
) -> anyhow::Result<(
    Arc<privacy::KeyStore>,
    Arc<crate::invitations::Invitations>,
    notifications::Mailer,
    Arc<crate::pricing::PriceLists>,
)> {
    let keys = Arc::new(
        privacy::KeyStore::connect(&settings.database, &settings.privacy)
            .await
            .context("Failed to open the data keys (FM_DATABASE__URL, FM_PRIVACY__MASTER_KEYS)")?,
    );
    let invitations = Arc::new(
        crate::invitations::Invitations::connect(
            &settings.database,
            &settings.privacy,
            settings.invitations.session_ttl,
        )
        .await
        .context("Failed to open the invitations (FM_DATABASE__URL, FM_PRIVACY__MASTER_KEYS)")?,
    );
    let mailer = notifications::Mailer::new(&settings.smtp)
        .map_err(|error| anyhow::anyhow!("Invalid SMTP settings (FM_SMTP__*): {error}"))?;
    let price_lists = Arc::new(
        crate::pricing::PriceLists::connect(&settings.database, &settings.privacy)
            .await
            .context("Failed to open the price lists (FM_DATABASE__URL)")?,
    );
    Ok((keys, invitations, mailer, price_lists))
}
