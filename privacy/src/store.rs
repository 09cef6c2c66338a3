//! The data keys in PostgreSQL (schema `privacy`, table `data_keys`), and what readers do with
//! them: seal a new booking's personal data, open it, erase it, move keys to a new master key.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use domain::booking::{PersonalData, SealedPersonal};
use platform::settings::DatabaseSettings;
use secrecy::ExposeSecret;
use sqlx::{
    PgPool, Row,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use thiserror::Error;
use uuid::Uuid;

use crate::crypto::{self, CryptoError, DataKey, MasterKeys};
use crate::settings::PrivacySettings;

/// The privacy schema's migrations.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The schema that holds the data keys.
pub const SCHEMA: &str = "privacy";

/// The longest an unwrapped key may be cached: an erasure reaches every reader within it.
pub const MAX_KEY_CACHE: Duration = Duration::from_mins(1);

/// Why the key store could not answer.
#[derive(Debug, Error)]
pub enum PrivacyError {
    /// PostgreSQL failed.
    #[error("the key store failed: {0}")]
    Database(#[from] sqlx::Error),
    /// A box or a key does not open, or the master keys are malformed.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// A data key is wrapped by a master key the settings do not have.
    #[error(
        "data key {key_id} is wrapped by master key {master_key_id:?}, which the settings lack"
    )]
    UnknownMasterKey { key_id: Uuid, master_key_id: String },
    /// A sealed box, or the data key it needs, fails authentication: it was tampered with, moved
    /// from another booking, sealed under another key, or its key was wrapped by another master
    /// key of the same id. No retry can open it. The text names the key, never a value.
    #[error("the personal data under data key {key_id} does not open: {cause}")]
    Unopenable { key_id: Uuid, cause: CryptoError },
    /// The booking's personal data was erased: no new box may be sealed for it.
    #[error("the personal data of booking {0} has been erased")]
    Erased(Uuid),
}

impl PrivacyError {
    /// Whether this is a box that does not open with what this process holds (a master key the
    /// settings lack, or a box or key that fails authentication) rather than the key store
    /// failing: a reader parks the record, it does not retry it for ever (docs/privacy.md,
    /// "When personal data does not open").
    pub fn is_unopenable(&self) -> bool {
        matches!(
            self,
            Self::UnknownMasterKey { .. } | Self::Unopenable { .. }
        )
    }
}

/// A sealed box opened: the data, or the fact that it was erased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opened {
    /// The data in the clear.
    Personal(PersonalData),
    /// The booking's data key is destroyed: the data is gone for good.
    Erased,
}

impl Opened {
    /// The data, if it was not erased.
    pub fn personal(self) -> Option<PersonalData> {
        match self {
            Self::Personal(personal) => Some(personal),
            Self::Erased => None,
        }
    }
}

/// What a booking's key row says.
#[derive(Debug, Clone)]
enum KeyState {
    Live { key_id: Uuid, key: DataKey },
    Erased,
    Missing,
}

/// How many data keys there are, by master key (`fmctl privacy status`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KeyStatus {
    /// Live data keys by the id of the master key that wraps them.
    pub by_master_key: Vec<(String, i64)>,
    /// Bookings whose data key is erased.
    pub erased: i64,
    /// The master key that wraps new data keys.
    pub current_master_key: String,
}

/// The data keys, with a short cache of unwrapped keys.
#[derive(Debug)]
pub struct KeyStore {
    pool: PgPool,
    masters: MasterKeys,
    cache_for: Duration,
    cache: Mutex<KeyCache>,
}

/// Unwrapped keys by booking, each with when it was loaded, and when expired ones were last
/// swept out.
#[derive(Debug)]
struct KeyCache {
    entries: HashMap<Uuid, (Instant, KeyState)>,
    swept: Instant,
}

impl KeyStore {
    /// Creates the schema if needed, runs its migrations, and opens a pool of its own (sized by
    /// `database`), in `settings.database_url` if set, else in the service's `database`.
    pub async fn connect(
        database: &DatabaseSettings,
        settings: &PrivacySettings,
    ) -> Result<Self, PrivacyError> {
        let url = settings.database_url.as_ref().unwrap_or(&database.url);
        let options = PgConnectOptions::from_str(url.expose_secret())?;
        let pool = PgPoolOptions::new()
            .max_connections(database.max_connections)
            .acquire_timeout(database.acquire_timeout);
        Self::start(options, pool, settings).await
    }

    /// [`KeyStore::connect`] from connection options (tests use the database `sqlx::test` made).
    pub async fn connect_with(
        options: PgConnectOptions,
        settings: &PrivacySettings,
    ) -> Result<Self, PrivacyError> {
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(5));
        Self::start(options, pool, settings).await
    }

    async fn start(
        options: PgConnectOptions,
        pool: PgPoolOptions,
        settings: &PrivacySettings,
    ) -> Result<Self, PrivacyError> {
        let masters = MasterKeys::parse(settings.master_keys.expose_secret())?;
        let pool = platform::database::connect_schema(&options, SCHEMA, pool, &MIGRATOR).await?;
        Ok(Self {
            pool,
            masters,
            cache_for: settings.key_cache.min(MAX_KEY_CACHE),
            cache: Mutex::new(KeyCache {
                entries: HashMap::new(),
                swept: Instant::now(),
            }),
        })
    }

    /// The booking's data key, made (and stored, wrapped) on first use. A retried request
    /// (same booking id) gets the same key. Refused once the booking's data is erased.
    pub async fn key_for_new_booking(
        &self,
        booking_id: Uuid,
    ) -> Result<(Uuid, DataKey), PrivacyError> {
        let key_id = Uuid::new_v4();
        let key = DataKey::generate();
        let master = self.masters.current();
        // One round trip: the new key if this request made it, else the row a retry (or a
        // concurrent twin) made first, which may be an erasure's tombstone.
        let row = sqlx::query(
            "WITH inserted AS ( \
                 INSERT INTO data_keys (booking_id, key_id, wrapped_key, master_key_id) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (booking_id) DO NOTHING RETURNING key_id) \
             SELECT true AS made, key_id, NULL::bytea AS wrapped_key, NULL::text AS master_key_id \
             FROM inserted \
             UNION ALL \
             SELECT false, key_id, wrapped_key, master_key_id FROM data_keys \
             WHERE booking_id = $1 AND NOT EXISTS (SELECT 1 FROM inserted)",
        )
        .bind(booking_id)
        .bind(key_id)
        .bind(crypto::wrap(master, key_id, booking_id, &key))
        .bind(master.id())
        .fetch_optional(&self.pool)
        .await?;
        let state = match row {
            Some(row) => {
                if row.try_get::<bool, _>("made")? {
                    return Ok((key_id, key));
                }
                self.key_state(booking_id, &row)?
            }
            // The statement's snapshot misses a row a concurrent twin committed while this
            // insert waited on it: read it again, in a new snapshot.
            None => self.load(booking_id).await?,
        };
        match state {
            KeyState::Live { key_id, key } => Ok((key_id, key)),
            KeyState::Erased | KeyState::Missing => Err(PrivacyError::Erased(booking_id)),
        }
    }

    /// `personal` sealed under the booking's data key (made if it has none yet).
    pub async fn seal(
        &self,
        booking_id: Uuid,
        personal: &PersonalData,
    ) -> Result<SealedPersonal, PrivacyError> {
        let (key_id, key) = self.key_for_new_booking(booking_id).await?;
        Ok(SealedPersonal::Encrypted(crypto::seal(
            &key, key_id, booking_id, personal,
        )))
    }

    /// The booking's personal data, or [`Opened::Erased`] once its key is destroyed. A v1
    /// record's plaintext (upcast into [`SealedPersonal::Legacy`]) is erased the same way: its
    /// booking's row is an erasure tombstone.
    pub async fn open(
        &self,
        booking_id: Uuid,
        sealed: &SealedPersonal,
    ) -> Result<Opened, PrivacyError> {
        let state = self.cached(booking_id).await?;
        match (sealed, state) {
            (SealedPersonal::Legacy { plaintext }, KeyState::Live { .. } | KeyState::Missing) => {
                Ok(Opened::Personal(plaintext.clone()))
            }
            (SealedPersonal::Encrypted(sealed), KeyState::Live { key_id, key })
                if key_id == sealed.key_id =>
            {
                crypto::open(&key, booking_id, sealed)
                    .map(Opened::Personal)
                    .map_err(|cause| PrivacyError::Unopenable { key_id, cause })
            }
            (SealedPersonal::Encrypted(sealed), KeyState::Live { .. }) => {
                Err(PrivacyError::Unopenable {
                    key_id: sealed.key_id,
                    cause: CryptoError::Undecryptable,
                })
            }
            (_, KeyState::Erased) | (SealedPersonal::Encrypted(_), KeyState::Missing) => {
                Ok(Opened::Erased)
            }
        }
    }

    /// Destroys the booking's data key (the erasure itself), keeping its row as a tombstone.
    /// Idempotent; returns when it was first erased.
    pub async fn erase(&self, booking_id: Uuid) -> Result<DateTime<Utc>, PrivacyError> {
        let erased_at: DateTime<Utc> = sqlx::query_scalar(
            "INSERT INTO data_keys (booking_id, key_id, erased_at) VALUES ($1, $2, now()) \
             ON CONFLICT (booking_id) DO UPDATE SET wrapped_key = NULL, master_key_id = NULL, \
                 erased_at = COALESCE(data_keys.erased_at, now()) \
             RETURNING erased_at",
        )
        .bind(booking_id)
        .bind(Uuid::new_v4())
        .fetch_one(&self.pool)
        .await?;
        self.forget(booking_id);
        Ok(erased_at)
    }

    /// Whether the booking's data key is erased (never cached).
    pub async fn is_erased(&self, booking_id: Uuid) -> Result<bool, PrivacyError> {
        Ok(matches!(self.load(booking_id).await?, KeyState::Erased))
    }

    /// Every booking whose key is erased, oldest erasure first (the sweep that completes an
    /// erasure whose event was not appended).
    pub async fn erased_bookings(&self) -> Result<Vec<Uuid>, PrivacyError> {
        Ok(sqlx::query_scalar(
            "SELECT booking_id FROM data_keys WHERE erased_at IS NOT NULL ORDER BY erased_at",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// Bookings with a live data key made more than `older_than` ago, oldest first, at most
    /// `limit`: the candidates of the orphan sweep (a key made for a request the domain then
    /// refused). Whether a booking reached the log is for the caller to say.
    pub async fn live_keys_older_than(
        &self,
        older_than: Duration,
        limit: i64,
    ) -> Result<Vec<Uuid>, PrivacyError> {
        Ok(sqlx::query_scalar(
            "SELECT booking_id FROM data_keys \
             WHERE erased_at IS NULL AND created_at < now() - make_interval(secs => $1) \
             ORDER BY created_at LIMIT $2",
        )
        .bind(older_than.as_secs_f64())
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Removes the booking's data key if it is live and older than `older_than` (an orphan:
    /// its request never reached the log). Returns whether it removed it. A tombstone is never
    /// removed: it is what says the booking's data is erased.
    pub async fn remove_orphan(
        &self,
        booking_id: Uuid,
        older_than: Duration,
    ) -> Result<bool, PrivacyError> {
        let done = sqlx::query(
            "DELETE FROM data_keys WHERE booking_id = $1 AND erased_at IS NULL \
             AND created_at < now() - make_interval(secs => $2)",
        )
        .bind(booking_id)
        .bind(older_than.as_secs_f64())
        .execute(&self.pool)
        .await?;
        self.forget(booking_id);
        Ok(done.rows_affected() > 0)
    }

    /// Re-wraps every live data key not wrapped by the current master key, one row at a time
    /// (idempotent; safe beside running services). Returns how many it moved.
    pub async fn rewrap(&self) -> Result<u64, PrivacyError> {
        let current = self.masters.current();
        let rows = sqlx::query(
            "SELECT booking_id, key_id, wrapped_key, master_key_id FROM data_keys \
             WHERE wrapped_key IS NOT NULL AND master_key_id <> $1",
        )
        .bind(current.id())
        .fetch_all(&self.pool)
        .await?;
        let mut moved = 0;
        for row in rows {
            let booking_id: Uuid = row.try_get("booking_id")?;
            let key_id: Uuid = row.try_get("key_id")?;
            let wrapped: Vec<u8> = row.try_get("wrapped_key")?;
            let master_key_id: String = row.try_get("master_key_id")?;
            let key = self.unwrap_row(booking_id, key_id, &wrapped, &master_key_id)?;
            let done = sqlx::query(
                "UPDATE data_keys SET wrapped_key = $3, master_key_id = $4 \
                 WHERE booking_id = $1 AND master_key_id = $2",
            )
            .bind(booking_id)
            .bind(&master_key_id)
            .bind(crypto::wrap(current, key_id, booking_id, &key))
            .bind(current.id())
            .execute(&self.pool)
            .await?;
            moved += done.rows_affected();
        }
        Ok(moved)
    }

    /// How many keys each master key wraps, and how many are erased.
    pub async fn status(&self) -> Result<KeyStatus, PrivacyError> {
        let by_master_key: Vec<(String, i64)> = sqlx::query_as(
            "SELECT master_key_id, count(*) FROM data_keys WHERE master_key_id IS NOT NULL \
             GROUP BY master_key_id ORDER BY master_key_id",
        )
        .fetch_all(&self.pool)
        .await?;
        let erased: i64 =
            sqlx::query_scalar("SELECT count(*) FROM data_keys WHERE erased_at IS NOT NULL")
                .fetch_one(&self.pool)
                .await?;
        Ok(KeyStatus {
            by_master_key,
            erased,
            current_master_key: self.masters.current().id().to_owned(),
        })
    }

    fn forget(&self, booking_id: Uuid) {
        self.cache
            .lock()
            .expect("the key cache's lock is never poisoned")
            .entries
            .remove(&booking_id);
    }

    async fn cached(&self, booking_id: Uuid) -> Result<KeyState, PrivacyError> {
        if let Some((at, state)) = self
            .cache
            .lock()
            .expect("the key cache's lock is never poisoned")
            .entries
            .get(&booking_id)
            && at.elapsed() < self.cache_for
        {
            return Ok(state.clone());
        }
        let state = self.load(booking_id).await?;
        self.remember([(booking_id, state.clone())]);
        Ok(state)
    }

    /// Caches freshly loaded keys.
    fn remember(&self, loaded: impl IntoIterator<Item = (Uuid, KeyState)>) {
        let now = Instant::now();
        let mut cache = self
            .cache
            .lock()
            .expect("the key cache's lock is never poisoned");
        // Expired entries are swept once per cache period, not on every miss: a rebuild misses
        // once per booking, and a sweep per miss made it quadratic in the bookings cached (a
        // third of a replay's CPU was reading the clock for it). An expired entry is never
        // served (the check in `cached`), so sweeping later only keeps it in memory a little
        // longer.
        if now.duration_since(cache.swept) >= self.cache_for {
            cache
                .entries
                .retain(|_, (at, _)| now.duration_since(*at) < self.cache_for);
            cache.swept = now;
        }
        cache
            .entries
            .extend(loaded.into_iter().map(|(id, state)| (id, (now, state))));
    }

    /// Loads into the cache, with one query, the keys of those of `booking_ids` it does not
    /// hold: a batch of records (a replay) then opens each booking's data without a round trip
    /// of its own. A key that cannot be unwrapped is left out, so that opening it fails on its
    /// own record, as without the prefetch.
    pub async fn prefetch(&self, booking_ids: &[Uuid]) -> Result<(), PrivacyError> {
        if self.cache_for.is_zero() {
            return Ok(());
        }
        let missing: Vec<Uuid> = {
            let cache = self
                .cache
                .lock()
                .expect("the key cache's lock is never poisoned");
            booking_ids
                .iter()
                .filter(|id| {
                    cache
                        .entries
                        .get(id)
                        .is_none_or(|(at, _)| at.elapsed() >= self.cache_for)
                })
                .copied()
                .collect()
        };
        if missing.is_empty() {
            return Ok(());
        }
        let rows = sqlx::query(
            "SELECT booking_id, key_id, wrapped_key, master_key_id FROM data_keys \
             WHERE booking_id = ANY($1)",
        )
        .bind(&missing)
        .fetch_all(&self.pool)
        .await?;
        let mut states: HashMap<Uuid, KeyState> =
            missing.iter().map(|id| (*id, KeyState::Missing)).collect();
        for row in &rows {
            let booking_id: Uuid = row.try_get("booking_id")?;
            match self.key_state(booking_id, row) {
                Ok(state) => {
                    states.insert(booking_id, state);
                }
                Err(_) => {
                    states.remove(&booking_id);
                }
            }
        }
        self.remember(states);
        Ok(())
    }

    async fn load(&self, booking_id: Uuid) -> Result<KeyState, PrivacyError> {
        let row = sqlx::query(
            "SELECT key_id, wrapped_key, master_key_id FROM data_keys WHERE booking_id = $1",
        )
        .bind(booking_id)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(KeyState::Missing);
        };
        self.key_state(booking_id, &row)
    }

    /// What a `data_keys` row (`key_id`, `wrapped_key`, `master_key_id`) holds.
    fn key_state(
        &self,
        booking_id: Uuid,
        row: &sqlx::postgres::PgRow,
    ) -> Result<KeyState, PrivacyError> {
        let key_id: Uuid = row.try_get("key_id")?;
        let wrapped: Option<Vec<u8>> = row.try_get("wrapped_key")?;
        let master_key_id: Option<String> = row.try_get("master_key_id")?;
        match (wrapped, master_key_id) {
            (Some(wrapped), Some(master_key_id)) => Ok(KeyState::Live {
                key_id,
                key: self.unwrap_row(booking_id, key_id, &wrapped, &master_key_id)?,
            }),
            _ => Ok(KeyState::Erased),
        }
    }

    fn unwrap_row(
        &self,
        booking_id: Uuid,
        key_id: Uuid,
        wrapped: &[u8],
        master_key_id: &str,
    ) -> Result<DataKey, PrivacyError> {
        let master =
            self.masters
                .get(master_key_id)
                .ok_or_else(|| PrivacyError::UnknownMasterKey {
                    key_id,
                    master_key_id: master_key_id.to_owned(),
                })?;
        crypto::unwrap(master, key_id, booking_id, wrapped)
            .map_err(|cause| PrivacyError::Unopenable { key_id, cause })
    }
}
