//! Building and running the runner: `Application::build(settings)`, `run_until_stopped()`.

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use notifications::Mailer;
use payment_gateway::{BreakingGateway, HttpGateway};
use platform::{
    auth::{ServiceToken, Verifier},
    shutdown::CancellationToken,
    startup::Service,
};
use schemas::{Role, SchemaRegistry};
use tokio::task::JoinHandle;

use crate::{
    actions::{self, CommandClient, Effects},
    consumer,
    reconcile::Reconciler,
    routes::{self, AppState},
    settings::Settings,
    store,
    worker::{self, Worker, WorkerConfig},
};

/// A built saga runner: migrated, listening, not yet serving.
#[derive(Debug)]
pub struct Application {
    server: platform::http::HttpServer,
    background: Vec<JoinHandle<()>>,
    shutdown: CancellationToken,
}

impl Service for Application {
    type Settings = Settings;
    const NAME: &'static str = "saga runner";
    const SETTINGS_HINT: &'static str = " (FM_AUTH__ISSUER or FM_AUTH__SECRET must be set)";

    fn log_settings(settings: &Settings) -> &platform::settings::LogSettings {
        &settings.log
    }

    /// Migrates the `saga` schema, starts the consumer (or stands by if another replica has
    /// it), the worker, the gauges and the payment reconciliation, and binds the HTTP listener.
    #[allow(clippy::too_many_lines)] // One start-up, in the order its parts depend on each other.
    async fn build(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<Self> {
        let verifier =
            Arc::new(Verifier::from_settings(&settings.auth).context("Invalid auth settings")?);
        verifier.warm_up().await;
        let service_token = Arc::new(
            ServiceToken::from_settings(&settings.auth, actions::SUBJECT, Role::System)
                .context("Invalid auth settings for the saga runner's own token")?,
        );
        if settings.saga.settle_window <= settings.gateway.request_timeout {
            anyhow::bail!(
                "FM_SAGA__SETTLE_WINDOW ({:?}) must be longer than FM_GATEWAY__REQUEST_TIMEOUT ({:?}): \
                 a lookup that finds nothing is only believed once no capture request can still be \
                 in flight (docs/payments.md)",
                settings.saga.settle_window,
                settings.gateway.request_timeout
            );
        }
        let registry =
            Arc::new(SchemaRegistry::load().context("Failed to compile the event schemas")?);
        // The saga's consumer waits for an unreachable broker, but a topic with another
        // partition count is a deployment error that waiting cannot mend.
        match event_log::topics::verify_partitions(&settings.kafka).await {
            Err(error @ event_log::LogError::PartitionCount { .. }) => {
                return Err(error).context("Refusing to start on the event topics");
            }
            Err(error) => tracing::warn!(
                %error,
                "could not check the event topics at start; the consumer retries until it can read them"
            ),
            Ok(()) => {}
        }
        let mut database = settings.database.clone();
        let size = pool_size(database.max_connections, settings.saga.concurrency);
        if size != database.max_connections {
            tracing::info!(
                configured = database.max_connections,
                size,
                "the saga's PostgreSQL pool is sized to its concurrency"
            );
            database.max_connections = size;
        }
        let pool = store::connect_and_migrate(&database)
            .await
            .context("Failed to prepare the saga's schema in PostgreSQL")?;
        let privacy = settings
            .privacy
            .as_ref()
            .context("FM_PRIVACY__MASTER_KEYS must be set: letters open personal data")?;
        let keys = Arc::new(
            privacy::KeyStore::connect(&settings.database, privacy)
                .await
                .context("Failed to open the data keys")?,
        );
        let gateway = Arc::new(BreakingGateway::new(
            HttpGateway::new(&settings.gateway).context("Failed to build the gateway client")?,
            settings.breaker,
        ));
        let mailer = Arc::new(Mailer::new(&settings.smtp).context("Invalid SMTP settings")?);
        let commands = CommandClient::new(
            &settings.saga.command_url,
            service_token,
            settings.saga.command_timeout,
        )?;
        let privacy_job = crate::retention::PrivacyJob {
            pool: pool.clone(),
            keys: keys.clone(),
            commands: commands.clone(),
            erase_after: privacy.erase_after,
            orphan_keys_after: privacy.orphan_keys_after,
        };
        let privacy_job = tokio::spawn(privacy_job.run(privacy.sweep_interval, shutdown.clone()));
        let producer = event_log::EventProducer::new(&settings.kafka)
            .context("Failed to create a Kafka client")?;

        let consumer = tokio::spawn(consumer::run(
            pool.clone(),
            settings.database.clone(),
            registry,
            producer.clone(),
            consumer::config(&settings.kafka, settings.saga.batch_size),
            shutdown.clone(),
        ));
        let worker = Worker {
            pool: pool.clone(),
            effects: Effects {
                commands,
                gateway: gateway.clone(),
                mailer,
                pool: pool.clone(),
                keys,
            },
            config: WorkerConfig {
                concurrency: settings.saga.concurrency,
                await_event: settings.saga.await_event,
                poll_interval: settings.saga.poll_interval,
                backoff: settings.backoff,
                crash_after: settings.saga.crash_after.clone(),
                deadlines: settings.saga.deadlines(),
                instance: settings.saga.instance(),
            },
        };
        let worker = tokio::spawn(worker.run(shutdown.clone()));
        let gauges = tokio::spawn(worker::publish_gauges(
            pool.clone(),
            Duration::from_secs(2),
            shutdown.clone(),
        ));

        let reconciler = Reconciler {
            pool: pool.clone(),
            gateway: gateway.clone(),
            horizon: settings.saga.reconcile_horizon,
        };
        let reconciliation = tokio::spawn(
            reconciler
                .clone()
                .run(settings.saga.reconcile_interval, shutdown.clone()),
        );
        let router = routes::router(AppState {
            pool,
            producer,
            verifier,
            gateway,
            reconciler,
            commands: routes::Forwarder::new(
                &settings.saga.command_url,
                settings.saga.command_timeout,
            )?,
        });
        let server = platform::http::HttpServer::bind(router, &settings.http).await?;
        Ok(Self {
            server,
            background: vec![consumer, worker, gauges, reconciliation, privacy_job],
            shutdown,
        })
    }

    fn port(&self) -> u16 {
        self.server.port()
    }

    /// Serves until shutdown, then lets the consumer finish its batch and the worker its steps.
    async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.server.serve(self.shutdown.clone()).await?;
        self.shutdown.cancel();
        for task in self.background {
            task.await.context("A saga task panicked")?;
        }
        Ok(())
    }
}

/// Connections the pool needs beside those of the sagas in flight: the worker's listener (it
/// keeps one for good), the consumer's batch, the claim that finds nothing due, the gauges, the reconciliation,
/// and the privacy job (its lock's transaction and a query beside it).
const POOL_OVERHEAD: u32 = 7;

/// The pool size the runner uses: at least two connections per saga in flight plus
/// [`POOL_OVERHEAD`]. A pass's transaction holds one while the step runs (it holds the
/// booking's lock), and a capture commits its write-ahead mark on a second one before the
/// request goes out (`store::mark_capture_attempt`), so every saga in flight may hold two at
/// once. A smaller pool makes steps and the consumer queue for connections until the acquire
/// timeout and back off instead of running (soak finding 4 in docs/reliability.md; the
/// 500-booking test failed a pass on a pool of one per saga when 32 captures met).
fn pool_size(configured: u32, concurrency: usize) -> u32 {
    let needed = u32::try_from(concurrency)
        .unwrap_or(u32::MAX)
        .saturating_mul(2)
        .saturating_add(POOL_OVERHEAD);
    configured.max(needed)
}

#[cfg(test)]
mod tests {
    use super::pool_size;

    #[test]
    fn the_pool_holds_every_saga_in_flight_and_the_consumer() {
        assert_eq!(pool_size(10, 16), 39);
        assert_eq!(pool_size(10, 1), 10);
        assert_eq!(pool_size(50, 16), 50);
        assert_eq!(pool_size(0, usize::MAX), u32::MAX);
    }
}
