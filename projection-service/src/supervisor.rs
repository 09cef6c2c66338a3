//! Runs one projector per active read-model version, following `projection_versions`.
//!
//! Every `supervise_interval` it reads the versions table: a running projector whose version is
//! no longer `live` or `building` is stopped (the batch in hand committed); a `live` or
//! `building` version without a running projector gets one (its schema created first); a
//! `retired` version's schema is dropped. A projector that ended on its own is restarted from
//! its stored offsets.

use std::{collections::BTreeMap, str::FromStr, sync::Arc, time::Duration};

use platform::shutdown::CancellationToken;
use schemas::SchemaRegistry;
use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use tokio::task::JoinHandle;

use crate::{
    projector::{Projector, ProjectorConfig},
    versions::{self, VersionState},
};

/// What the supervisor needs to start projectors.
#[derive(Debug, Clone)]
pub(crate) struct Supervisor {
    pub(crate) admin_pool: PgPool,
    pub(crate) database_url: String,
    pub(crate) acquire_timeout: Duration,
    pub(crate) registry: Arc<SchemaRegistry>,
    pub(crate) config: ProjectorConfig,
    pub(crate) interval: Duration,
}

struct Running {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Supervisor {
    /// A projector for `version`, on connections whose `search_path` is its schema.
    pub(crate) async fn projector(
        &self,
        version: i32,
        building: bool,
    ) -> anyhow::Result<Projector> {
        versions::ensure_schema(&self.admin_pool, version).await?;
        let options = PgConnectOptions::from_str(&self.database_url)?
            .options([("search_path", versions::schema_name(version))]);
        let pool = PgPoolOptions::new()
            .max_connections(3)
            .acquire_timeout(self.acquire_timeout)
            .connect_with(options)
            .await?;
        Projector::start(
            version,
            building,
            pool,
            self.admin_pool.clone(),
            self.registry.clone(),
            self.config.clone(),
        )
        .await
    }

    /// Runs until `shutdown`, then stops every projector after its batch in hand.
    pub(crate) async fn run(self, first: (i32, Projector), shutdown: CancellationToken) {
        let mut running: BTreeMap<i32, Running> = BTreeMap::new();
        let (version, projector) = first;
        running.insert(version, spawn(projector, &shutdown));
        loop {
            if let Err(error) = self.reconcile(&mut running, &shutdown).await {
                tracing::warn!(%error, "could not reconcile the read-model versions; retrying");
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(self.interval) => {}
            }
        }
        for (version, projector) in running {
            projector.stop.cancel();
            if let Err(error) = projector.task.await {
                tracing::error!(%error, version, "projector panicked");
            }
        }
    }

    async fn reconcile(
        &self,
        running: &mut BTreeMap<i32, Running>,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        let active = versions::active_versions(&self.admin_pool).await?;
        // A projector whose version is no longer building or live stops first (after its batch
        // in hand), whoever retired or dropped the version.
        let wanted: Vec<i32> = active
            .iter()
            .filter(|(_, state)| matches!(state, VersionState::Building | VersionState::Live))
            .map(|(version, _)| *version)
            .collect();
        let unwanted: Vec<i32> = running
            .keys()
            .filter(|version| !wanted.contains(version))
            .copied()
            .collect();
        for version in unwanted {
            if let Some(projector) = running.remove(&version) {
                projector.stop.cancel();
                if let Err(error) = projector.task.await {
                    tracing::error!(%error, version, "projector panicked");
                }
            }
        }
        for (version, state) in active {
            match state {
                VersionState::Building | VersionState::Live => {
                    let alive = running.get(&version).is_some_and(|p| !p.task.is_finished());
                    if !alive {
                        let projector = self
                            .projector(version, state == VersionState::Building)
                            .await?;
                        running.insert(version, spawn(projector, shutdown));
                    }
                }
                VersionState::Retired => {
                    versions::drop_version(&self.admin_pool, version).await?;
                    tracing::info!(version, "retired read-model version dropped");
                }
                VersionState::Dropped => {}
            }
        }
        Ok(())
    }
}

fn spawn(projector: Projector, shutdown: &CancellationToken) -> Running {
    let stop = shutdown.child_token();
    let task = tokio::spawn(projector.run(stop.clone()));
    Running { stop, task }
}
