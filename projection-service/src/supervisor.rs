//! Runs one projector per active read-model version, following `projection_versions`.
//!
//! Replicas: each version is projected by the replica holding its PostgreSQL advisory lock
//! (`pg_try_advisory_lock(4243, version)` on a connection kept open while it projects); the
//! others stand by and take over at their next reconcile once the lock is free. If the lock's
//! connection is lost while the projector goes on, two replicas may briefly project the same
//! version: that is wasteful but safe (row versions refuse what is applied, offsets never move
//! back).
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
    Connection, PgConnection, PgPool,
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
    /// Holds this replica's advisory lock on the version; closing it releases the lock.
    _lock: PgConnection,
}

/// A projector ready to run, with the lock that makes this replica the one running it.
pub(crate) type Claimed = (Projector, PgConnection);

impl Supervisor {
    /// A projector for `version`, on connections whose `search_path` is its schema, if this
    /// replica wins the version's advisory lock; `None` if another replica holds it (this one
    /// then stands by and tries again at every reconcile, so it takes over within
    /// `supervise_interval` of the other one's death).
    pub(crate) async fn projector(
        &self,
        version: i32,
        building: bool,
    ) -> anyhow::Result<Option<Claimed>> {
        let mut lock = PgConnection::connect(&self.database_url).await?;
        let won: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(4243, $1)")
            .bind(version)
            .fetch_one(&mut lock)
            .await?;
        if !won {
            return Ok(None);
        }
        versions::ensure_schema(&self.admin_pool, version).await?;
        let options = PgConnectOptions::from_str(&self.database_url)?
            .options([("search_path", versions::schema_name(version))]);
        let pool = PgPoolOptions::new()
            .max_connections(3)
            .acquire_timeout(self.acquire_timeout)
            .connect_with(options)
            .await?;
        let projector = Projector::start(
            version,
            building,
            pool,
            self.admin_pool.clone(),
            self.registry.clone(),
            self.config.clone(),
        )
        .await?;
        Ok(Some((projector, lock)))
    }

    /// Runs until `shutdown`, then stops every projector after its batch in hand.
    pub(crate) async fn run(self, first: Option<(i32, Claimed)>, shutdown: CancellationToken) {
        let mut running: BTreeMap<i32, Running> = BTreeMap::new();
        if let Some((version, claimed)) = first {
            running.insert(version, spawn(claimed, &shutdown));
        }
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
                        running.remove(&version);
                        if let Some(claimed) = self
                            .projector(version, state == VersionState::Building)
                            .await?
                        {
                            tracing::info!(version, "this replica now projects the version");
                            running.insert(version, spawn(claimed, shutdown));
                        }
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

fn spawn((projector, lock): Claimed, shutdown: &CancellationToken) -> Running {
    let stop = shutdown.child_token();
    let task = tokio::spawn(projector.run(stop.clone()));
    Running {
        stop,
        task,
        _lock: lock,
    }
}
