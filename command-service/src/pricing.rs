//! The funeral homes' price lists (docs/pricing.md): the `pricing` schema, one row per published
//! version of a home's list.
//!
//! Kept in PostgreSQL, not in the log: a list is reference data read whole at request time,
//! never folded, and what the log must keep for ever (what each booking was charged) is in the
//! booking's own `BookingRequested` statement. Every replica reads the same rows, so a published
//! version prices the next request on any replica.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use domain::pricing::PriceList;
use platform::settings::DatabaseSettings;
use privacy::PrivacySettings;
use secrecy::ExposeSecret;
use sqlx::{
    PgConnection, PgPool, Row,
    postgres::{PgConnectOptions, PgPoolOptions},
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
    #[error("the price-list schema's migrations failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
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

/// The price lists.
#[derive(Debug)]
pub(crate) struct PriceLists {
    pool: PgPool,
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
        let pool = PgPoolOptions::new()
            .max_connections(database.max_connections.min(4))
            .acquire_timeout(database.acquire_timeout);
        let pool = platform::database::connect_schema(&options, SCHEMA, pool, &MIGRATOR).await?;
        Ok(Self { pool })
    }

    /// The home's current list, if it has published one.
    pub(crate) async fn current(&self, home: Uuid) -> Result<Option<ListVersion>, PricingError> {
        let mut conn = self.pool.acquire().await?;
        current(&mut conn, home).await
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
        let current = current(&mut tx, home).await?;
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
        let Some(row) = inserted else {
            // Another publish took this version first. Publishing the same list is still done
            // (two retries of one PUT, or replicas seeding alike): answer the version that holds
            // it; a different list lost the race and is told so.
            drop(tx);
            return Ok(match self.current(home).await? {
                Some(current) if current.list == *list => Publication::Unchanged(current),
                _ => Publication::Raced,
            });
        };
        tx.commit().await?;
        Ok(Publication::New(ListVersion {
            home,
            version,
            list: list.clone(),
            published_by: published_by.to_owned(),
            published_at: row.try_get("published_at")?,
        }))
    }
}

async fn current(conn: &mut PgConnection, home: Uuid) -> Result<Option<ListVersion>, PricingError> {
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
