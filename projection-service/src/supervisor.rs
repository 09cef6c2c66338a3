//! Runs one projector per `live` or `building` build of this release's read-model version,
//! following `read_model_builds`, and drops what may be dropped.
//!
//! Only its own version: it knows no other fold and no other DDL. Builds of other versions are
//! another release's projection-services' work; old versions are dropped by whichever
//! projection-service sees first that the rule allows it (`versions::plan_drops`).
//!
//! Replicas: each build is projected by the replica holding its PostgreSQL advisory lock
//! (`pg_try_advisory_lock(versions::BUILD_LOCK, build)` on a connection kept open while it
//! projects); the others stand by and take over at their next reconcile once the lock is free.
//! If the lock's connection is lost while the projector goes on, two replicas may briefly
//! project the same build: that is wasteful but safe (row versions refuse what is applied,
//! offsets never move back).
//!
//! Every `supervise_interval` it reads the version's builds: a running projector whose build is
//! no longer `live` or `building` is stopped (the batch in hand committed); a `live` or
//! `building` build without a running projector gets one (its schema created first); a
//! `retired` build's schema is dropped. A projector that ended on its own is restarted from its
//! stored offsets. Then it brings every version's `drop_after` up to date and drops the versions
//! whose time has come.

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
    read_model::ReadModel,
    versions::{self, Build, BuildState},
};

/// What the supervisor needs to start projectors.
#[derive(Debug, Clone)]
pub(crate) struct Supervisor {
    pub(crate) admin_pool: PgPool,
    pub(crate) database_url: String,
    pub(crate) acquire_timeout: Duration,
    pub(crate) registry: Arc<SchemaRegistry>,
    /// The data keys the personal columns are opened with (docs/privacy.md).
    pub(crate) keys: Arc<privacy::KeyStore>,
    pub(crate) config: ProjectorConfig,
    pub(crate) interval: Duration,
    /// The version this release builds.
    pub(crate) model: ReadModel,
    /// How long a version no query-api reads is kept.
    pub(crate) drop_grace: Duration,
}

struct Running {
    stop: CancellationToken,
    task: JoinHandle<()>,
    /// Holds this replica's advisory lock on the build; closing it releases the lock.
    _lock: PgConnection,
}

/// A projector ready to run, with the lock that makes this replica the one running it.
pub(crate) type Claimed = (Projector, PgConnection);

impl Supervisor {
    /// A projector for `build`, on connections whose `search_path` is its schema, if this
    /// replica wins the build's advisory lock; `None` if another replica holds it (this one
    /// then stands by and tries again at every reconcile, so it takes over within
    /// `supervise_interval` of the other one's death).
    pub(crate) async fn projector(&self, build: Build) -> anyhow::Result<Option<Claimed>> {
        let mut lock = PgConnection::connect(&self.database_url).await?;
        let won: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, $2)")
            .bind(versions::BUILD_LOCK)
            .bind(build.build)
            .fetch_one(&mut lock)
            .await?;
        if !won {
            return Ok(None);
        }
        versions::ensure_build_schema(&self.admin_pool, &self.model, build.build).await?;
        let options = PgConnectOptions::from_str(&self.database_url)?
            .options([("search_path", build.schema())]);
        let pool = PgPoolOptions::new()
            .max_connections(3)
            .acquire_timeout(self.acquire_timeout)
            .connect_with(options)
            .await?;
        let projector = Projector::start(
            self.model,
            build,
            pool,
            self.admin_pool.clone(),
            self.registry.clone(),
            self.keys.clone(),
            self.config.clone(),
        )
        .await?;
        Ok(Some((projector, lock)))
    }

    /// Runs until `shutdown`, then stops every projector after its batch in hand.
    pub(crate) async fn run(self, first: Option<(i32, Claimed)>, shutdown: CancellationToken) {
        let mut running: BTreeMap<i32, Running> = BTreeMap::new();
        if let Some((build, claimed)) = first {
            running.insert(build, spawn(claimed, &shutdown));
        }
        let mut dropped_reported = false;
        loop {
            match self.reconcile(&mut running, &shutdown).await {
                Ok(has_builds) => {
                    if !has_builds && !dropped_reported {
                        tracing::warn!(
                            version = self.model.version,
                            "this release's read-model version was dropped (no query-api reads it): \
                             nothing to project; stop this projection-service, or restart it to rebuild the version"
                        );
                    }
                    dropped_reported = !has_builds;
                }
                Err(error) => {
                    tracing::warn!(%error, "could not reconcile the read-model builds; retrying");
                }
            }
            if let Err(error) = self.drop_unread().await {
                tracing::warn!(%error, "could not check which read-model versions may be dropped; retrying");
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(self.interval) => {}
            }
        }
        for (build, projector) in running {
            projector.stop.cancel();
            if let Err(error) = projector.task.await {
                tracing::error!(%error, build, "projector panicked");
            }
        }
    }

    /// Follows the version's builds; returns whether it has any left (none: it was dropped).
    async fn reconcile(
        &self,
        running: &mut BTreeMap<i32, Running>,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<bool> {
        let version = self.model.version;
        let builds = versions::builds(&self.admin_pool, version).await?;
        // A projector whose build is no longer building or live stops first (after its batch
        // in hand), whoever retired or dropped the build.
        let wanted: Vec<i32> = builds
            .iter()
            .filter(|b| matches!(b.state, BuildState::Building | BuildState::Live))
            .map(|b| b.build)
            .collect();
        let unwanted: Vec<i32> = running
            .keys()
            .filter(|build| !wanted.contains(build))
            .copied()
            .collect();
        for build in unwanted {
            if let Some(projector) = running.remove(&build) {
                projector.stop.cancel();
                if let Err(error) = projector.task.await {
                    tracing::error!(%error, build, "projector panicked");
                }
            }
        }
        for build in &builds {
            match build.state {
                BuildState::Building | BuildState::Live => {
                    let alive = running
                        .get(&build.build)
                        .is_some_and(|p| !p.task.is_finished());
                    if !alive {
                        running.remove(&build.build);
                        if let Some(claimed) = self.projector(*build).await? {
                            tracing::info!(
                                version,
                                build = build.build,
                                "this replica now projects the build"
                            );
                            running.insert(build.build, spawn(claimed, shutdown));
                        }
                    }
                }
                BuildState::Retired => {
                    versions::drop_build(&self.admin_pool, version, build.build).await?;
                    tracing::info!(version, build = build.build, "retired build dropped");
                }
                BuildState::Dropped => {}
            }
        }
        Ok(!builds.is_empty())
    }

    /// Drops the versions no running query-api reads, once a newer one is live and the grace
    /// period has passed.
    async fn drop_unread(&self) -> anyhow::Result<()> {
        for version in versions::plan_drops(&self.admin_pool, self.drop_grace).await? {
            if versions::drop_version(&self.admin_pool, version).await? {
                tracing::info!(
                    version,
                    "read-model version dropped: no query-api has read it for the grace period"
                );
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
