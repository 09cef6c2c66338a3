//! The read-model version this query-api reads, and its registration as that version's reader.
//!
//! The version is the code's: the queries of this release are written for one shape of the read
//! models, and that shape's number is declared here (the projection-service of the same release
//! declares the same number with its DDL, `projection-service/src/read_model.rs`; a test holds
//! them equal). Every connection's `search_path` is that version's schema of views,
//! `read_v<V>`, and nothing else, so no query can read another shape; until a projection-service
//! has built the version and switched it live the schema does not exist, `/ready` says so and
//! queries answer 503 (docs/read-side.md).
//!
//! A running query-api is what keeps its version from being dropped: [`Registration`] records it
//! in `read_model_readers` at start and at every heartbeat, and marks it stopped once it has
//! drained at shutdown.

use std::time::Duration;

use platform::shutdown::CancellationToken;
use sqlx::PgPool;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::settings::ReadModelSettings;

/// The read-model version this release's queries are written for.
#[cfg(not(feature = "next-read-model"))]
pub const VERSION: i32 = 4;

/// Test-only (`next-read-model`): version 5, which adds `facilities.name_key`.
#[cfg(feature = "next-read-model")]
pub const VERSION: i32 = 5;

/// The schema of views onto [`VERSION`]'s live build: the only one this service reads.
pub fn schema() -> String {
    format!("read_v{VERSION}")
}

/// This process as a reader of [`VERSION`], kept alive by a heartbeat until [`Registration::stop`].
#[derive(Debug)]
pub(crate) struct Registration {
    instance: Uuid,
    pool: PgPool,
    heartbeat: JoinHandle<()>,
    stop: CancellationToken,
}

impl Registration {
    /// Starts the heartbeat (the first one at once). PostgreSQL being down is not an error here:
    /// the heartbeat retries at every interval, and queries fail meanwhile anyway.
    pub(crate) fn start(pool: PgPool, settings: &ReadModelSettings) -> Self {
        let instance = Uuid::new_v4();
        let host = format!("{} pid {}", host_name(), std::process::id());
        let stop = CancellationToken::new();
        let heartbeat = tokio::spawn(heartbeat(
            pool.clone(),
            instance,
            host,
            settings.clone(),
            stop.clone(),
        ));
        Self {
            instance,
            pool,
            heartbeat,
            stop,
        }
    }

    /// Stops the heartbeat and marks this reader stopped, so that the grace period before its
    /// version may be dropped starts now. Call it once requests have drained.
    pub(crate) async fn stop(self) {
        self.stop.cancel();
        let _ = self.heartbeat.await;
        let stopped = sqlx::query(
            "UPDATE public.read_model_readers SET stopped_at = now(), expires_at = now() \
             WHERE instance = $1",
        )
        .bind(self.instance)
        .execute(&self.pool)
        .await;
        if let Err(error) = stopped {
            tracing::warn!(%error, "could not mark this reader stopped; it expires on its own");
        }
    }
}

async fn heartbeat(
    pool: PgPool,
    instance: Uuid,
    host: String,
    settings: ReadModelSettings,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(settings.heartbeat_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(error) = beat(&pool, instance, &host, settings.reader_expiry).await {
            tracing::warn!(%error, version = VERSION, "could not record this query-api as a reader of its read-model version; retrying");
        }
    }
}

/// One heartbeat. The version's row is taken `FOR SHARE`, the lock a drop takes `FOR UPDATE`:
/// either the drop sees this reader running and keeps the version, or this reader finds the
/// version gone (and `/ready` says so).
async fn beat(
    pool: &PgPool,
    instance: Uuid,
    host: &str,
    expiry: Duration,
) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT 1 FROM public.read_model_versions WHERE version = $1 FOR SHARE")
        .bind(VERSION)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO public.read_model_readers (instance, version, host, expires_at) \
         VALUES ($1, $2, $3, now() + make_interval(secs => $4)) \
         ON CONFLICT (instance) DO UPDATE SET seen_at = now(), expires_at = EXCLUDED.expires_at",
    )
    .bind(instance)
    .bind(VERSION)
    .bind(host)
    .bind(expiry.as_secs_f64())
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// The pod's or machine's name, for `fmctl projections status`.
fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "unknown host".to_owned())
}
