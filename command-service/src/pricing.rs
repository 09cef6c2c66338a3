//! The funeral homes' price lists (docs/pricing.md): the `pricing` schema, one row per published
//! version of a home's list.
//!
//! Kept in PostgreSQL, not in the log: a list is reference data read whole at request time,
//! never folded, and what the log must keep for ever (what each booking was charged) is in the
//! booking's own `BookingRequested` statement. Every replica reads the same rows, so a published
//! version prices the next request on any replica.
//!
//! Each replica keeps the current version of each home it has read in memory ([`Cache`]): every
//! `POST /bookings` needs its home's list, and reading it from PostgreSQL each time was a third
//! of the database's work per booking (docs/pricing.md, "The cache"). A publish notifies every
//! replica (`NOTIFY fm_price_lists` in the publishing transaction, so only a committed version is
//! announced); a replica serves from memory only while its `LISTEN` connection is up, and drops
//! everything it holds whenever that connection is lost, because a notification sent meanwhile
//! is not delivered again.

use std::{
    collections::HashMap,
    str::FromStr,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use chrono::{DateTime, Utc};
use domain::pricing::PriceList;
use platform::{settings::DatabaseSettings, shutdown::CancellationToken};
use privacy::PrivacySettings;
use secrecy::ExposeSecret;
use sqlx::{
    PgConnection, PgPool, Row,
    postgres::{PgConnectOptions, PgListener, PgPoolOptions},
};
use uuid::Uuid;

/// The schema of the price lists.
const SCHEMA: &str = "pricing";
/// Its migrations.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./pricing-migrations");

/// Why the price-list store failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PricingError {
    #[error("the price-list database failed: {0}")]
    Database(#[from] sqlx::Error),
    /// A stored list no longer reads as a list (edited by hand): never quoted to callers.
    #[error("the stored price list of home {home} version {version} is not a valid list: {reason}")]
    Corrupt {
        home: Uuid,
        version: u32,
        reason: String,
    },
}

/// One published version of a home's list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ListVersion {
    pub(crate) home: Uuid,
    pub(crate) version: u32,
    pub(crate) list: PriceList,
    pub(crate) published_by: String,
    pub(crate) published_at: DateTime<Utc>,
}

/// What a publish did.
#[derive(Debug)]
pub(crate) enum Publication {
    /// A new version.
    New(ListVersion),
    /// The list is the current version's already: nothing was written (a retried `PUT`).
    Unchanged(ListVersion),
    /// `If-Match` named another version than the current one (none: `0`).
    VersionMismatch { current: u32 },
    /// Another publish of the same home won the race for the next version.
    Raced,
}

/// The channel a publish notifies, with the home's id as the payload.
const CHANNEL: &str = "fm_price_lists";
/// How long the listener waits before connecting again after losing its connection.
const RECONNECT_AFTER: Duration = Duration::from_secs(1);

/// The price lists.
#[derive(Debug)]
pub(crate) struct PriceLists {
    pool: PgPool,
    /// A pool of one connection for `LISTEN`, apart so that it never takes one of the reads'.
    listener_pool: PgPool,
    cache: Arc<Cache>,
}

/// The current version of each home this replica has read, valid while its listener is up.
///
/// A read that missed fills the cache only if nothing was invalidated while it read: a publish
/// that committed after the `SELECT` began may have been announced (and its entry removed)
/// before the read's answer arrives, and that answer must not then be kept as current.
#[derive(Debug, Default)]
struct Cache {
    state: Mutex<CacheState>,
}

#[derive(Debug, Default)]
struct CacheState {
    /// Whether the `LISTEN` connection is up: otherwise every read goes to PostgreSQL.
    listening: bool,
    /// Counts invalidations (a notification, a lost or regained listener).
    epoch: u64,
    lists: HashMap<Uuid, ListVersion>,
}

impl Cache {
    fn lock(&self) -> std::sync::MutexGuard<'_, CacheState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The home's cached version, or the epoch to fill it at after reading.
    fn get(&self, home: Uuid) -> Result<ListVersion, u64> {
        let state = self.lock();
        match state.lists.get(&home) {
            Some(list) => Ok(list.clone()),
            None => Err(state.epoch),
        }
    }

    /// Keeps what a read at `epoch` found, unless something was invalidated since. A home
    /// without a list is not kept: any caller may ask for any home id, and only published
    /// homes bound what the cache holds.
    fn fill(&self, epoch: u64, read: Option<&ListVersion>) {
        let mut state = self.lock();
        if let Some(read) = read
            && state.listening
            && state.epoch == epoch
        {
            state.lists.insert(read.home, read.clone());
        }
    }

    /// A home published a version (or a notification named no home: then all).
    fn invalidate(&self, home: Option<Uuid>) {
        let mut state = self.lock();
        state.epoch += 1;
        match home {
            Some(home) => {
                state.lists.remove(&home);
            }
            None => state.lists.clear(),
        }
    }

    /// The listener is up (`true`) or lost (`false`); either way nothing held can be trusted.
    fn set_listening(&self, listening: bool) {
        let mut state = self.lock();
        state.epoch += 1;
        state.listening = listening;
        state.lists.clear();
    }
}

impl PriceLists {
    /// Opens (and migrates) the `pricing` schema, in the database of the command-service's other
    /// tables (the invitations' and the data keys': `FM_PRIVACY__DATABASE_URL` when set, else
    /// `FM_DATABASE__URL`), so that a deployment names one database for all of them.
    pub(crate) async fn connect(
        database: &DatabaseSettings,
        privacy: &PrivacySettings,
    ) -> Result<Self, PricingError> {
        let url = privacy.database_url.as_ref().unwrap_or(&database.url);
        let options = PgConnectOptions::from_str(url.expose_secret())?;
        let listener_pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(database.acquire_timeout)
            .connect_lazy_with(
                options
                    .clone()
                    .application_name("fm-command-service-price-lists"),
            );
        let pool = PgPoolOptions::new()
            .max_connections(database.max_connections.min(4))
            .acquire_timeout(database.acquire_timeout);
        let pool = platform::database::connect_schema(&options, SCHEMA, pool, &MIGRATOR).await?;
        Ok(Self {
            pool,
            listener_pool,
            cache: Arc::default(),
        })
    }

    /// The home's current list, if it has published one: from the cache while the listener
    /// is up, else (and on a miss) from PostgreSQL.
    pub(crate) async fn current(&self, home: Uuid) -> Result<Option<ListVersion>, PricingError> {
        let epoch = match self.cache.get(home) {
            Ok(cached) => {
                metrics::counter!("price_list_reads_total", "source" => "cache").increment(1);
                return Ok(Some(cached));
            }
            Err(epoch) => epoch,
        };
        metrics::counter!("price_list_reads_total", "source" => "database").increment(1);
        let mut conn = self.pool.acquire().await?;
        let read = read_current(&mut conn, home).await?;
        self.cache.fill(epoch, read.as_ref());
        Ok(read)
    }

    /// Listens for published versions until `shutdown`, connecting again (after
    /// [`RECONNECT_AFTER`]) whenever the connection is lost; the cache is used only while it
    /// listens.
    pub(crate) async fn listen(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            let listened = tokio::select! {
                () = shutdown.cancelled() => return,
                listened = self.listen_once() => listened,
            };
            self.cache.set_listening(false);
            if let Err(error) = listened {
                tracing::warn!(%error, "lost the price lists' notifications; reading every list from the database until they are back");
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(RECONNECT_AFTER) => {}
            }
        }
    }

    /// One `LISTEN` connection's life: invalidates the cache for each notification, and
    /// returns when the connection is lost.
    async fn listen_once(&self) -> Result<(), sqlx::Error> {
        let mut listener = PgListener::connect_with(&self.listener_pool).await?;
        // A lost connection ends this life (and so drops the cache) instead of being mended
        // quietly inside `try_recv`, which would lose what was notified meanwhile.
        listener.eager_reconnect(false);
        listener.listen(CHANNEL).await?;
        self.cache.set_listening(true);
        tracing::debug!("listening for published price lists");
        while let Some(notification) = listener.try_recv().await? {
            self.cache
                .invalidate(notification.payload().parse::<Uuid>().ok());
        }
        Err(sqlx::Error::Protocol(
            "the notification connection was closed".into(),
        ))
    }

    /// Publishes `list` as the home's next version, unless it is the current one already; with
    /// `if_match`, only if the current version is that one (0: none published).
    pub(crate) async fn publish(
        &self,
        home: Uuid,
        list: &PriceList,
        if_match: Option<u32>,
        published_by: &str,
    ) -> Result<Publication, PricingError> {
        let mut tx = self.pool.begin().await?;
        let current = read_current(&mut tx, home).await?;
        let current_version = current.as_ref().map_or(0, |published| published.version);
        if let Some(expected) = if_match
            && expected != current_version
        {
            return Ok(Publication::VersionMismatch {
                current: current_version,
            });
        }
        if let Some(current) = current
            && current.list == *list
        {
            return Ok(Publication::Unchanged(current));
        }
        let version = current_version + 1;
        let inserted = sqlx::query(
            "INSERT INTO price_lists (home, version, list, published_by) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (home, version) DO NOTHING RETURNING published_at",
        )
        .bind(home)
        .bind(i32::try_from(version).unwrap_or(i32::MAX))
        .bind(sqlx::types::Json(list))
        .bind(published_by)
        .fetch_optional(&mut *tx)
        .await?;
        if inserted.is_some() {
            // Delivered to every listening replica when (and only if) the version commits.
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CHANNEL)
                .bind(home.to_string())
                .execute(&mut *tx)
                .await?;
        }
        let Some(row) = inserted else {
            // Another publish took this version first. Publishing the same list is still done
            // (two retries of one PUT, or replicas seeding alike): answer the version that holds
            // it; a different list lost the race and is told so.
            // Read from the table, not the cache: the winner's notification may not be here yet.
            drop(tx);
            let mut conn = self.pool.acquire().await?;
            return Ok(match read_current(&mut conn, home).await? {
                Some(current) if current.list == *list => Publication::Unchanged(current),
                _ => Publication::Raced,
            });
        };
        tx.commit().await?;
        // This replica's next request sees the version at once, whenever its own notification
        // arrives.
        self.cache.invalidate(Some(home));
        Ok(Publication::New(ListVersion {
            home,
            version,
            list: list.clone(),
            published_by: published_by.to_owned(),
            published_at: row.try_get("published_at")?,
        }))
    }
}

async fn read_current(
    conn: &mut PgConnection,
    home: Uuid,
) -> Result<Option<ListVersion>, PricingError> {
    let row = sqlx::query(
        "SELECT version, list, published_by, published_at FROM price_lists \
         WHERE home = $1 ORDER BY version DESC LIMIT 1",
    )
    .bind(home)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let version = u32::try_from(row.try_get::<i32, _>("version")?).unwrap_or_default();
    let list: serde_json::Value = row.try_get("list")?;
    let list = serde_json::from_value(list).map_err(|error| PricingError::Corrupt {
        home,
        version,
        reason: error.to_string(),
    })?;
    Ok(Some(ListVersion {
        home,
        version,
        list,
        published_by: row.try_get("published_by")?,
        published_at: row.try_get("published_at")?,
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn version(home: Uuid, version: u32) -> ListVersion {
        ListVersion {
            home,
            version,
            list: serde_json::from_value(test_support::price_list()).unwrap(),
            published_by: "director-a".into(),
            published_at: Utc::now(),
        }
    }

    fn cached(cache: &Cache, home: Uuid) -> Option<u32> {
        cache.get(home).ok().map(|list| list.version)
    }

    #[test]
    fn nothing_is_kept_while_the_listener_is_down() {
        let (cache, home) = (Cache::default(), Uuid::new_v4());
        let Err(epoch) = cache.get(home) else {
            panic!("an empty cache answered")
        };
        cache.fill(epoch, Some(&version(home, 1)));
        assert_eq!(cached(&cache, home), None);

        cache.set_listening(true);
        let Err(epoch) = cache.get(home) else {
            panic!("an empty cache answered")
        };
        cache.fill(epoch, Some(&version(home, 1)));
        assert_eq!(cached(&cache, home), Some(1));
        // Lost: what was notified meanwhile is never delivered, so nothing held is trusted.
        cache.set_listening(false);
        assert_eq!(cached(&cache, home), None);
    }

    #[test]
    fn a_read_that_a_publish_overtook_is_not_kept() {
        let (cache, home, other) = (Cache::default(), Uuid::new_v4(), Uuid::new_v4());
        cache.set_listening(true);
        let Err(before) = cache.get(home) else {
            panic!("an empty cache answered")
        };
        // Version 2 is announced while the read (which found version 1) is on its way.
        cache.invalidate(Some(home));
        cache.fill(before, Some(&version(home, 1)));
        assert_eq!(cached(&cache, home), None);
        // A listener that came back while a read was on its way: the same.
        let Err(before) = cache.get(home) else {
            panic!("an empty cache answered")
        };
        cache.set_listening(true);
        cache.fill(before, Some(&version(home, 1)));
        assert_eq!(cached(&cache, home), None);

        let Err(now) = cache.get(home) else {
            panic!("an empty cache answered")
        };
        cache.fill(now, Some(&version(home, 2)));
        cache.fill(now, Some(&version(other, 1)));
        cache.invalidate(Some(home));
        assert_eq!(
            (cached(&cache, home), cached(&cache, other)),
            (None, Some(1))
        );
        // A notification that names no home forgets every home.
        cache.invalidate(None);
        assert_eq!(cached(&cache, other), None);
    }

    #[test]
    fn a_home_without_a_list_is_not_kept() {
        let (cache, home) = (Cache::default(), Uuid::new_v4());
        cache.set_listening(true);
        let Err(epoch) = cache.get(home) else {
            panic!("an empty cache answered")
        };
        cache.fill(epoch, None);
        assert!(cache.lock().lists.is_empty());
    }
}
