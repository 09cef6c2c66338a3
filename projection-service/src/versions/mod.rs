//! Read-model versions and their builds: declaring a version, building it beside what answers,
//! switching atomically, and dropping what no query-api reads any more (docs/read-side.md).
//!
//! A version (the code's shape, [`crate::read_model`]) is filled by **builds**, one schema each
//! (`read_v<V>_b<B>`); the schema `read_v<V>` holds one view per table onto the version's live
//! build, and that is all a query-api of that version reads. `read_model_builds` names each
//! build's state:
//!
//! ```text
//! building ──(caught up, switch)──▶ live ──(next switch)──▶ retired ──(projector stopped)──▶ dropped
//! ```
//!
//! A projection-service declares its version at start ([`declare`]): a version without a live
//! or building build gets a building one, which its projector fills from offset 0 and switches
//! live once it has reached the end of the log ([`try_switch`]). `fmctl projections rebuild`
//! asks for another build of a version beside its live one ([`request_rebuild`]). A version is
//! dropped once a newer one is live, no running query-api reads it, and a grace period has
//! passed ([`plan_drops`], [`drop_version`]); query-apis register in `read_model_readers`.
//!
//! - `status`: what `fmctl projections status` shows.
//! - `legacy`: the layout of the releases before versions were declared, and its removal.

mod legacy;
mod status;
#[cfg(test)]
mod tests;

use std::{collections::BTreeMap, time::Duration};

use event_log::consumer::TopicPartition;
use sqlx::{Executor as _, PgConnection, PgPool, Postgres, Transaction};

use crate::read_model::ReadModel;

pub use legacy::{LegacyDropError, drop_legacy};
pub use status::{BuildStatus, ReaderStatus, VersionStatus, status};

/// `pg_advisory_lock(BUILD_LOCK, build)`: held by the replica projecting a build, on a
/// connection kept open while it does (`fmctl projections status` looks for it in `pg_locks`).
pub const BUILD_LOCK: i32 = 4244;
/// `pg_advisory_xact_lock(DDL_LOCK, build)`: two replicas creating one build's tables at once
/// would collide on the catalog.
const DDL_LOCK: i32 = 4245;
/// `pg_advisory_xact_lock(LIVE_LOCK, 0)`: one switch at a time repoints the `live` views.
const LIVE_LOCK: i32 = 4246;

/// The state of a build, as stored in `read_model_builds.state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildState {
    Building,
    Live,
    Retired,
    Dropped,
}

impl BuildState {
    fn parse(text: &str) -> Option<Self> {
        match text {
            "building" => Some(Self::Building),
            "live" => Some(Self::Live),
            "retired" => Some(Self::Retired),
            "dropped" => Some(Self::Dropped),
            _ => None,
        }
    }

    /// The stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Building => "building",
            Self::Live => "live",
            Self::Retired => "retired",
            Self::Dropped => "dropped",
        }
    }
}

/// One build of a version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Build {
    pub build: i32,
    pub version: i32,
    pub state: BuildState,
}

impl Build {
    /// The schema holding this build's tables.
    pub fn schema(&self) -> String {
        build_schema(self.version, self.build)
    }
}

/// The schema of the views onto version `version`'s live build: what its query-apis read.
/// Built from an integer, so it is always a safe identifier.
pub fn views_schema(version: i32) -> String {
    format!("read_v{version}")
}

/// The schema holding build `build` of version `version`.
pub fn build_schema(version: i32, build: i32) -> String {
    format!("read_v{version}_b{build}")
}

/// Declares the version `model` at the start of a projection-service: the version's row is
/// created if missing, and if it has neither a live nor a building build (it is new, or it was
/// dropped and this release is back), a building build is created, to be filled from offset 0.
/// Returns the version's builds that are not dropped. Safe to run from several replicas.
pub async fn declare(
    pool: &PgPool,
    model: &ReadModel,
    requested_by: &str,
) -> Result<Vec<Build>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    lock_builds(&mut tx).await?;
    sqlx::query("INSERT INTO read_model_versions (version) VALUES ($1) ON CONFLICT DO NOTHING")
        .bind(model.version)
        .execute(&mut *tx)
        .await?;
    let active = builds_in(&mut tx, model.version).await?;
    if !active
        .iter()
        .any(|b| matches!(b.state, BuildState::Building | BuildState::Live))
    {
        // Back after a drop: it is live again only once rebuilt, and it gets a fresh grace.
        sqlx::query(
            "UPDATE read_model_versions SET dropped_at = NULL, drop_after = NULL, live_at = NULL \
             WHERE version = $1",
        )
        .bind(model.version)
        .execute(&mut *tx)
        .await?;
        let build = insert_building(&mut tx, model.version, requested_by).await?;
        tracing::info!(
            version = model.version,
            build,
            "read-model version has no build: building it from offset 0"
        );
    }
    let builds = builds_in(&mut tx, model.version).await?;
    tx.commit().await?;
    Ok(builds)
}

/// Declarations and rebuild requests take turns, so that two never both create a build.
async fn lock_builds(tx: &mut Transaction<'_, Postgres>) -> Result<(), sqlx::Error> {
    sqlx::query("LOCK TABLE read_model_builds IN SHARE ROW EXCLUSIVE MODE")
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn insert_building(
    tx: &mut Transaction<'_, Postgres>,
    version: i32,
    requested_by: &str,
) -> Result<i32, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO read_model_builds (version, state, requested_by) VALUES ($1, 'building', $2) \
         RETURNING build",
    )
    .bind(version)
    .bind(requested_by)
    .fetch_one(&mut **tx)
    .await
}

/// The builds of `version` that are not dropped, oldest first.
pub async fn builds(pool: &PgPool, version: i32) -> Result<Vec<Build>, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    builds_in(&mut conn, version).await
}

async fn builds_in(conn: &mut PgConnection, version: i32) -> Result<Vec<Build>, sqlx::Error> {
    let rows: Vec<(i32, String)> = sqlx::query_as(
        "SELECT build, state FROM read_model_builds WHERE version = $1 AND state <> 'dropped' \
         ORDER BY build",
    )
    .bind(version)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(build, state)| {
            BuildState::parse(&state).map(|state| Build {
                build,
                version,
                state,
            })
        })
        .collect())
}

/// Every build that is `live` or `building`, of every version: what `fmctl lag` follows.
pub async fn active_builds(pool: &PgPool) -> Result<Vec<Build>, sqlx::Error> {
    let rows: Vec<(i32, i32, String)> = sqlx::query_as(
        "SELECT build, version, state FROM read_model_builds WHERE state IN ('live', 'building') \
         ORDER BY version, build",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(build, version, state)| {
            BuildState::parse(&state).map(|state| Build {
                build,
                version,
                state,
            })
        })
        .collect())
}

/// Creates the tables of `build` (a build of `model`'s version) if they do not exist.
pub async fn ensure_build_schema(
    pool: &PgPool,
    model: &ReadModel,
    build: i32,
) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1, $2)")
        .bind(DDL_LOCK)
        .bind(build)
        .execute(&mut *tx)
        .await?;
    let schema = build_schema(model.version, build);
    let ddl = format!(
        "CREATE SCHEMA IF NOT EXISTS {schema};\n{}",
        model.ddl_for(&schema)
    );
    (&mut *tx).execute(ddl.as_str()).await?;
    tx.commit().await
}

/// The stored offsets of the build in `schema` (next offset to read per partition).
pub async fn stored_offsets(
    conn: &mut PgConnection,
    schema: &str,
) -> Result<BTreeMap<TopicPartition, i64>, sqlx::Error> {
    let sql = format!("SELECT topic, partition, next_offset FROM {schema}.projection_offsets");
    let rows: Vec<(String, i32, i64)> = sqlx::query_as(&sql).fetch_all(&mut *conn).await?;
    Ok(rows
        .into_iter()
        .map(|(topic, partition, offset)| ((topic, partition), offset))
        .collect())
}

/// What a rebuild request came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RebuildRequest {
    /// A new building build.
    Started { build: i32 },
    /// A build of that version is already under way; it is the one to wait for.
    AlreadyBuilding { build: i32 },
}

impl RebuildRequest {
    /// The build to follow.
    pub fn build(self) -> i32 {
        match self {
            Self::Started { build } | Self::AlreadyBuilding { build } => build,
        }
    }
}

/// Why a rebuild cannot be asked for.
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    #[error("read-model version {0} has never been declared by a projection-service")]
    UnknownVersion(i32),
    #[error(
        "read-model version {0} was dropped; a projection-service of its release rebuilds it when it starts"
    )]
    Dropped(i32),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Asks for a new build of `version` beside its live one (a same-shape rebuild: a fold fixed,
/// data repaired). A projection-service of that version fills it and switches to it.
pub async fn request_rebuild(
    pool: &PgPool,
    version: i32,
    requested_by: &str,
) -> Result<RebuildRequest, RebuildError> {
    let mut tx = pool.begin().await?;
    lock_builds(&mut tx).await?;
    let dropped: Option<Option<chrono::DateTime<chrono::Utc>>> =
        sqlx::query_scalar("SELECT dropped_at FROM read_model_versions WHERE version = $1")
            .bind(version)
            .fetch_optional(&mut *tx)
            .await?;
    match dropped {
        None => return Err(RebuildError::UnknownVersion(version)),
        Some(Some(_)) => return Err(RebuildError::Dropped(version)),
        Some(None) => {}
    }
    let building = builds_in(&mut tx, version)
        .await?
        .into_iter()
        .find(|b| b.state == BuildState::Building);
    let request = match building {
        Some(b) => RebuildRequest::AlreadyBuilding { build: b.build },
        None => RebuildRequest::Started {
            build: insert_building(&mut tx, version, requested_by).await?,
        },
    };
    tx.commit().await?;
    Ok(request)
}

/// Why a building build did not switch yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SwitchOutcome {
    /// The build is live now.
    Switched { retired: Option<i32> },
    /// The live build has applied more of some partition; try again after the next batch.
    Behind,
    /// The build is no longer `building` (switched or dropped by someone else).
    NotBuilding,
}

/// Switches `build` (of `model`'s version) live if its offsets have reached the version's live
/// build's on every partition.
///
/// One transaction: lock the version's build rows, block the live projector's commits by
/// locking its offsets table in SHARE mode, compare, then flip the states and repoint the
/// version's views (`read_v<V>`, created at its first switch) and, if no newer version is live,
/// the `live` views. A query either runs before the commit (old build) or after it (new build,
/// at least as far along the log), never against a half-built one; and the consistency-token
/// wait reads the version's `projection_offsets` view, so it follows the switch too.
pub async fn try_switch(
    pool: &PgPool,
    model: &ReadModel,
    build: i32,
) -> Result<SwitchOutcome, sqlx::Error> {
    let version = model.version;
    let mut tx: Transaction<'_, Postgres> = pool.begin().await?;
    let rows: Vec<(i32, String)> = sqlx::query_as(
        "SELECT build, state FROM read_model_builds WHERE version = $1 AND state IN ('live', 'building') \
         ORDER BY build FOR UPDATE",
    )
    .bind(version)
    .fetch_all(&mut *tx)
    .await?;
    if !rows
        .iter()
        .any(|(b, state)| *b == build && state == "building")
    {
        return Ok(SwitchOutcome::NotBuilding);
    }
    let live = rows
        .iter()
        .find(|(_, state)| state == "live")
        .map(|(b, _)| *b);
    if let Some(live) = live {
        let theirs_schema = build_schema(version, live);
        let sql = format!("LOCK TABLE {theirs_schema}.projection_offsets IN SHARE MODE");
        sqlx::query(&sql).execute(&mut *tx).await?;
        let theirs = stored_offsets(&mut tx, &theirs_schema).await?;
        let ours = stored_offsets(&mut tx, &build_schema(version, build)).await?;
        let behind = theirs
            .iter()
            .any(|(tp, offset)| ours.get(tp).copied().unwrap_or(0) < *offset);
        if behind {
            return Ok(SwitchOutcome::Behind);
        }
        sqlx::query("UPDATE read_model_builds SET state = 'retired' WHERE build = $1")
            .bind(live)
            .execute(&mut *tx)
            .await?;
    }
    sqlx::query(
        "UPDATE read_model_builds SET state = 'live', switched_at = now() WHERE build = $1",
    )
    .bind(build)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE read_model_versions SET live_at = COALESCE(live_at, now()) WHERE version = $1",
    )
    .bind(version)
    .execute(&mut *tx)
    .await?;
    point_version_views(&mut tx, model, build).await?;
    point_live_views(&mut tx, model).await?;
    tx.commit().await?;
    Ok(SwitchOutcome::Switched { retired: live })
}

/// Points every view of `read_v<V>` at `build`'s tables, inside the caller's transaction.
async fn point_version_views(
    conn: &mut PgConnection,
    model: &ReadModel,
    build: i32,
) -> Result<(), sqlx::Error> {
    let views = views_schema(model.version);
    let tables = build_schema(model.version, build);
    sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {views}"))
        .execute(&mut *conn)
        .await?;
    for table in model.tables {
        // `CREATE OR REPLACE` keeps the view's identity, so statements the query-api has
        // prepared against it stay valid and simply see the new build after the commit.
        let sql =
            format!("CREATE OR REPLACE VIEW {views}.{table} AS SELECT * FROM {tables}.{table}");
        sqlx::query(&sql).execute(&mut *conn).await?;
    }
    Ok(())
}

/// Points the `live` views (for people and tools, never a service) at `read_v<V>` if no newer
/// version is live; leaves them alone while the legacy layout owns them.
async fn point_live_views(conn: &mut PgConnection, model: &ReadModel) -> Result<(), sqlx::Error> {
    if legacy::present(conn).await? {
        return Ok(());
    }
    sqlx::query("SELECT pg_advisory_xact_lock($1, 0)")
        .bind(LIVE_LOCK)
        .execute(&mut *conn)
        .await?;
    let newer_live: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM read_model_builds WHERE version > $1 AND state = 'live')",
    )
    .bind(model.version)
    .fetch_one(&mut *conn)
    .await?;
    if newer_live {
        return Ok(());
    }
    repoint_live(conn, model.version).await
}

/// Replaces the `live` views with one view onto each view of `read_v<version>` (its tables may
/// differ from the version `live` showed before, so they are dropped and created, not replaced).
/// The schema's comment names the version it shows, so a same-version switch changes nothing.
async fn repoint_live(conn: &mut PgConnection, version: i32) -> Result<(), sqlx::Error> {
    let views = views_schema(version);
    sqlx::query("CREATE SCHEMA IF NOT EXISTS live")
        .execute(&mut *conn)
        .await?;
    let shown: Option<String> =
        sqlx::query_scalar("SELECT obj_description('live'::regnamespace, 'pg_namespace')")
            .fetch_one(&mut *conn)
            .await?;
    if shown.as_deref() == Some(views.as_str()) {
        return Ok(());
    }
    let old: Vec<String> =
        sqlx::query_scalar("SELECT viewname::TEXT FROM pg_views WHERE schemaname = 'live'")
            .fetch_all(&mut *conn)
            .await?;
    for view in old {
        sqlx::query(&format!("DROP VIEW IF EXISTS live.\"{view}\""))
            .execute(&mut *conn)
            .await?;
    }
    let tables: Vec<String> =
        sqlx::query_scalar("SELECT viewname::TEXT FROM pg_views WHERE schemaname = $1")
            .bind(&views)
            .fetch_all(&mut *conn)
            .await?;
    for table in tables {
        sqlx::query(&format!(
            "CREATE VIEW live.\"{table}\" AS SELECT * FROM {views}.\"{table}\""
        ))
        .execute(&mut *conn)
        .await?;
    }
    sqlx::query(&format!("COMMENT ON SCHEMA live IS '{views}'"))
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Drops a retired build's schema once its projector has stopped.
pub async fn drop_build(pool: &PgPool, version: i32, build: i32) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    let sql = format!(
        "DROP SCHEMA IF EXISTS {} CASCADE",
        build_schema(version, build)
    );
    sqlx::query(&sql).execute(&mut *tx).await?;
    sqlx::query(
        "UPDATE read_model_builds SET state = 'dropped', dropped_at = now() WHERE build = $1 AND state = 'retired'",
    )
    .bind(build)
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// A version no running query-api reads: a newer version is live, no reader of it is running,
/// and `grace` has passed since the latest of its last reader's last heartbeat (or stop), the
/// newer version going live, and its own newest build being created.
const DROP_PLAN: &str = r"
WITH running AS (
    SELECT DISTINCT version FROM read_model_readers WHERE stopped_at IS NULL AND expires_at > now()
), last_read AS (
    SELECT version, max(COALESCE(stopped_at, seen_at)) AS at FROM read_model_readers GROUP BY version
), plan AS (
    SELECT v.version,
           CASE WHEN r.version IS NULL AND newer.live_at IS NOT NULL
                THEN GREATEST(newer.live_at, last_read.at, builds.newest) + make_interval(secs => $1)
           END AS drop_after
    FROM read_model_versions v
    LEFT JOIN running r ON r.version = v.version
    LEFT JOIN last_read ON last_read.version = v.version
    LEFT JOIN LATERAL (
        SELECT max(created_at) AS newest FROM read_model_builds b WHERE b.version = v.version
    ) builds ON true
    LEFT JOIN LATERAL (
        SELECT min(w.live_at) AS live_at FROM read_model_versions w
        WHERE w.version > v.version
          AND EXISTS (SELECT 1 FROM read_model_builds b WHERE b.version = w.version AND b.state = 'live')
    ) newer ON true
    WHERE v.dropped_at IS NULL
)
UPDATE read_model_versions v SET drop_after = plan.drop_after
FROM plan
WHERE v.version = plan.version AND v.drop_after IS DISTINCT FROM plan.drop_after
";

/// Brings every version's `drop_after` up to date (what `fmctl projections status` shows) and
/// returns the versions it has passed for, oldest first: those to [`drop_version`].
pub async fn plan_drops(pool: &PgPool, grace: Duration) -> Result<Vec<i32>, sqlx::Error> {
    sqlx::query(DROP_PLAN)
        .bind(grace.as_secs_f64())
        .execute(pool)
        .await?;
    sqlx::query_scalar(
        "SELECT version FROM read_model_versions WHERE dropped_at IS NULL AND drop_after <= now() \
         ORDER BY version",
    )
    .fetch_all(pool)
    .await
}

/// Drops `version` (its views and every build) if it still may be: under its row's lock, which
/// a query-api's heartbeat takes too (`FOR SHARE`), no reader may be running and its
/// `drop_after` must have passed. Returns whether it was dropped. Waits for queries still
/// reading its schemas.
pub async fn drop_version(pool: &PgPool, version: i32) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let due: Option<bool> = sqlx::query_scalar(
        "SELECT dropped_at IS NULL AND drop_after <= now() FROM read_model_versions \
         WHERE version = $1 FOR UPDATE",
    )
    .bind(version)
    .fetch_optional(&mut *tx)
    .await?;
    if due != Some(true) {
        return Ok(false);
    }
    let read: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM read_model_readers WHERE version = $1 AND stopped_at IS NULL \
         AND expires_at > now())",
    )
    .bind(version)
    .fetch_one(&mut *tx)
    .await?;
    if read {
        return Ok(false);
    }
    let builds: Vec<i32> = sqlx::query_scalar(
        "SELECT build FROM read_model_builds WHERE version = $1 AND state <> 'dropped'",
    )
    .bind(version)
    .fetch_all(&mut *tx)
    .await?;
    sqlx::query(&format!(
        "DROP SCHEMA IF EXISTS {} CASCADE",
        views_schema(version)
    ))
    .execute(&mut *tx)
    .await?;
    for build in builds {
        sqlx::query(&format!(
            "DROP SCHEMA IF EXISTS {} CASCADE",
            build_schema(version, build)
        ))
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query(
        "UPDATE read_model_builds SET state = 'dropped', dropped_at = now() \
         WHERE version = $1 AND state <> 'dropped'",
    )
    .bind(version)
    .execute(&mut *tx)
    .await?;
    sqlx::query("UPDATE read_model_versions SET dropped_at = now() WHERE version = $1")
        .bind(version)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(true)
}
