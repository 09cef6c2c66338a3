//! Every read-model version with its builds and readers: what `fmctl projections status` shows.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use super::{BUILD_LOCK, build_schema, legacy};

/// One version as the bookkeeping tables hold it.
#[derive(Debug, Clone, Serialize)]
pub struct VersionStatus {
    pub version: i32,
    /// The legacy layout of the releases before versions were declared (version 1).
    pub legacy: bool,
    pub declared_at: Option<DateTime<Utc>>,
    /// When its first build went live: its query-apis answer from then on.
    pub live_at: Option<DateTime<Utc>>,
    /// When it may be dropped, as the projection-services last computed it; `None` while a
    /// query-api reads it or no newer version is live.
    pub drop_after: Option<DateTime<Utc>>,
    pub dropped_at: Option<DateTime<Utc>>,
    /// Its builds that are not dropped, oldest first.
    pub builds: Vec<BuildStatus>,
    /// Its query-apis running now.
    pub readers: Vec<ReaderStatus>,
    /// The last time any query-api of it was seen (or stopped).
    pub last_read_at: Option<DateTime<Utc>>,
}

/// One build.
#[derive(Debug, Clone, Serialize)]
pub struct BuildStatus {
    pub build: i32,
    pub state: String,
    pub schema: String,
    pub created_at: Option<DateTime<Utc>>,
    pub switched_at: Option<DateTime<Utc>>,
    /// Whether a projection-service holds the build's lock, i.e. is projecting it now.
    pub projected: bool,
}

/// One running query-api.
#[derive(Debug, Clone, Serialize)]
pub struct ReaderStatus {
    pub instance: Uuid,
    pub host: String,
    pub started_at: DateTime<Utc>,
    pub seen_at: DateTime<Utc>,
}

type VersionRow = (
    i32,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
);
type BuildRow = (i32, String, DateTime<Utc>, Option<DateTime<Utc>>, bool);

/// Every version, newest first, the legacy layout (if present) last.
pub async fn status(pool: &PgPool) -> Result<Vec<VersionStatus>, sqlx::Error> {
    let versions: Vec<VersionRow> = sqlx::query_as(
        "SELECT v.version, v.declared_at, v.live_at, v.drop_after, v.dropped_at, \
         (SELECT max(COALESCE(r.stopped_at, r.seen_at)) FROM read_model_readers r WHERE r.version = v.version) \
         FROM read_model_versions v ORDER BY v.version DESC",
    )
    .fetch_all(pool)
    .await?;
    let mut all = Vec::new();
    for (version, declared_at, live_at, drop_after, dropped_at, last_read_at) in versions {
        let builds: Vec<BuildRow> = sqlx::query_as(
            "SELECT b.build, b.state, b.created_at, b.switched_at, \
             EXISTS (SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted \
                     AND l.classid = $2::oid AND l.objid = b.build::oid AND l.objsubid = 2 \
                     AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())) \
             FROM read_model_builds b WHERE b.version = $1 AND b.state <> 'dropped' ORDER BY b.build",
        )
        .bind(version)
        .bind(BUILD_LOCK)
        .fetch_all(pool)
        .await?;
        let readers: Vec<(Uuid, String, DateTime<Utc>, DateTime<Utc>)> = sqlx::query_as(
            "SELECT instance, host, started_at, seen_at FROM read_model_readers \
             WHERE version = $1 AND stopped_at IS NULL AND expires_at > now() ORDER BY started_at",
        )
        .bind(version)
        .fetch_all(pool)
        .await?;
        all.push(VersionStatus {
            version,
            legacy: false,
            declared_at: Some(declared_at),
            live_at,
            drop_after,
            dropped_at,
            builds: builds
                .into_iter()
                .map(
                    |(build, state, created_at, switched_at, projected)| BuildStatus {
                        schema: build_schema(version, build),
                        build,
                        state,
                        created_at: Some(created_at),
                        switched_at,
                        projected,
                    },
                )
                .collect(),
            readers: readers
                .into_iter()
                .map(|(instance, host, started_at, seen_at)| ReaderStatus {
                    instance,
                    host,
                    started_at,
                    seen_at,
                })
                .collect(),
            last_read_at,
        });
    }
    let mut conn = pool.acquire().await?;
    if legacy::present(&mut conn).await? {
        let mut builds = Vec::new();
        for (build, state) in legacy::builds(&mut conn).await? {
            // The legacy projector's lock: `pg_try_advisory_lock(4243, version)`.
            let projected: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted \
                 AND classid = 4243 AND objid = $1::oid AND objsubid = 2 \
                 AND database = (SELECT oid FROM pg_database WHERE datname = current_database()))",
            )
            .bind(build)
            .fetch_one(&mut *conn)
            .await?;
            builds.push(BuildStatus {
                build,
                state,
                schema: format!("rm_v{build}"),
                created_at: None,
                switched_at: None,
                projected,
            });
        }
        all.push(VersionStatus {
            version: 1,
            legacy: true,
            declared_at: None,
            live_at: None,
            drop_after: None,
            dropped_at: None,
            builds,
            readers: Vec::new(),
            last_read_at: None,
        });
    }
    Ok(all)
}
