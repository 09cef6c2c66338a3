//! The layout of the releases before read-model versions were declared (version 1): builds in
//! `rm_v<N>`, the table `projection_versions`, and the `live` views their query-apis read.
//!
//! Those releases keep it current for as long as they run; nothing here writes to it. Its
//! query-apis do not register as readers, so it is never dropped on its own: an operator runs
//! `fmctl projections drop-legacy` ([`drop_legacy`]) once none of them runs, and the `live`
//! views then show the newest version of the new layout.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};

/// Whether the legacy layout is still there.
pub(super) async fn present(conn: &mut PgConnection) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT to_regclass('public.projection_versions') IS NOT NULL")
        .fetch_one(&mut *conn)
        .await
}

/// The legacy builds that are not dropped: (`rm_v<N>` number, state).
pub(super) async fn builds(conn: &mut PgConnection) -> Result<Vec<(i32, String)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT version, state FROM projection_versions WHERE state <> 'dropped' ORDER BY version",
    )
    .fetch_all(&mut *conn)
    .await
}

/// Why the legacy layout was not dropped.
#[derive(Debug, thiserror::Error)]
pub enum LegacyDropError {
    #[error("there is no legacy layout (projection_versions) in this database")]
    NotPresent,
    #[error(
        "no read-model version of the new layout is live yet, so the legacy one still answers; start a projection-service of this release and wait until `fmctl projections status` shows its version live"
    )]
    NoLiveVersion,
    #[error(
        "the legacy build rm_v{build} was written to at {at} (less than a minute ago): a projection-service of the old release still runs; stop it (and its query-apis) first"
    )]
    StillWritten { build: i32, at: DateTime<Utc> },
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Drops the legacy layout (every `rm_v<N>` build, the `live` views, `projection_versions`) and
/// points `live` at the newest live version of the new layout, in one transaction. Refuses
/// while no new version is live, or while a legacy build was written to in the last minute.
/// Returns the schemas dropped.
pub async fn drop_legacy(pool: &PgPool) -> Result<Vec<String>, LegacyDropError> {
    let mut tx = pool.begin().await?;
    if !present(&mut tx).await? {
        return Err(LegacyDropError::NotPresent);
    }
    sqlx::query("LOCK TABLE projection_versions IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await?;
    let newest: Option<i32> =
        sqlx::query_scalar("SELECT max(version) FROM read_model_builds WHERE state = 'live'")
            .fetch_one(&mut *tx)
            .await?;
    let newest = newest.ok_or(LegacyDropError::NoLiveVersion)?;
    let mut dropped = Vec::new();
    for (build, _) in builds(&mut tx).await? {
        let schema = format!("rm_v{build}");
        let exists: bool = sqlx::query_scalar("SELECT to_regnamespace($1) IS NOT NULL")
            .bind(&schema)
            .fetch_one(&mut *tx)
            .await?;
        if !exists {
            continue;
        }
        let written: Option<DateTime<Utc>> = sqlx::query_scalar(&format!(
            "SELECT max(updated_at) FROM {schema}.projection_offsets"
        ))
        .fetch_one(&mut *tx)
        .await?;
        if let Some(at) = written
            && Utc::now() - at < chrono::Duration::minutes(1)
        {
            return Err(LegacyDropError::StillWritten { build, at });
        }
        sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
            .execute(&mut *tx)
            .await?;
        dropped.push(schema);
    }
    sqlx::query("DROP SCHEMA IF EXISTS live CASCADE")
        .execute(&mut *tx)
        .await?;
    sqlx::query("DROP TABLE projection_versions")
        .execute(&mut *tx)
        .await?;
    super::repoint_live(&mut tx, newest).await?;
    tx.commit().await?;
    Ok(dropped)
}
