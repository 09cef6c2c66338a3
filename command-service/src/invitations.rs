//! Families by invitation (docs/identity.md): the `invitations` schema (invitations by the hash
//! of their code, and the family-session signing keys), making codes, exchanging one for a
//! session, revoking, and the JWKS the other services verify sessions with.
//!
//! Kept in PostgreSQL, not in the log: an exchange must succeed once across every replica (one
//! conditional `UPDATE`), a revocation must be seen by every replica at once, and a credential
//! that lives a week has no place in a log kept forever. Nothing here logs a code or an
//! address: ids and positions only.

use std::{collections::HashMap, str::FromStr, time::Duration};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use platform::{
    auth::family::{self, FamilySessions, SessionClaims},
    settings::DatabaseSettings,
};
use privacy::{MasterKeys, PrivacySettings};
use ring::{
    rand::{SecureRandom, SystemRandom},
    signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair},
};
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};
use sqlx::{
    PgPool, Row,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use uuid::Uuid;

/// The schema of this module's tables.
const SCHEMA: &str = "invitations";
/// The schema's migrations.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");
/// Bytes of randomness in a code: 256 bits.
const CODE_BYTES: usize = 32;

/// Why the invitation store failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum InvitationError {
    #[error("the invitations database failed: {0}")]
    Database(#[from] sqlx::Error),
    #[error("the master keys are unusable: {0}")]
    MasterKeys(#[from] privacy::CryptoError),
    /// The key could not be made, opened or used (never quotes key material).
    #[error("the family-session key: {0}")]
    Key(String),
}

/// A new invitation's code, in the clear: only ever in the request that made it and its letter.
pub(crate) struct NewCode {
    pub(crate) code: String,
    hash: [u8; 32],
}

impl std::fmt::Debug for NewCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NewCode(..)")
    }
}

/// A family session as the exchange answers it.
#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) token: String,
    pub(crate) expires_in: Duration,
    pub(crate) invitation_id: Uuid,
    pub(crate) booking_id: Uuid,
}

/// The family-session key that signs, and every published key.
struct SigningKey {
    kid: String,
    encoding: EncodingKey,
}

/// The invitations, and the key that signs family sessions.
pub(crate) struct Invitations {
    pool: PgPool,
    random: SystemRandom,
    signing: SigningKey,
    /// Every key's public half, as the JWKS publishes it.
    jwks: serde_json::Value,
    /// The same keys, for this service's own verifier.
    decoding: HashMap<String, DecodingKey>,
    session_ttl: Duration,
}

impl std::fmt::Debug for Invitations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Invitations")
            .field("kid", &self.signing.kid)
            .finish_non_exhaustive()
    }
}

/// The SHA-256 of a code, as stored.
fn hash(code: &str) -> [u8; 32] {
    Sha256::digest(code.as_bytes()).into()
}

impl Invitations {
    /// Creates the schema if needed, runs its migrations, and loads (or, the first replica to
    /// start, makes) the family-session key.
    pub(crate) async fn connect(
        database: &DatabaseSettings,
        privacy: &PrivacySettings,
        session_ttl: Duration,
    ) -> Result<Self, InvitationError> {
        let url = privacy.database_url.as_ref().unwrap_or(&database.url);
        let options = PgConnectOptions::from_str(url.expose_secret())?;
        let pool = PgPoolOptions::new()
            .max_connections(database.max_connections.min(4))
            .acquire_timeout(database.acquire_timeout);
        let pool = platform::database::connect_schema(&options, SCHEMA, pool, &MIGRATOR).await?;
        let masters = MasterKeys::parse(privacy.master_keys.expose_secret())?;
        let random = SystemRandom::new();
        let (signing, jwks, decoding) = load_or_make_key(&pool, &masters, &random).await?;
        Ok(Self {
            pool,
            random,
            signing,
            jwks,
            decoding,
            session_ttl,
        })
    }

    /// The verifier of this service's own sessions.
    pub(crate) fn verifier(&self) -> FamilySessions {
        FamilySessions::Keys(self.decoding.clone())
    }

    /// The JWKS of the family-session keys.
    pub(crate) fn jwks(&self) -> &serde_json::Value {
        &self.jwks
    }

    /// A new code: 256 bits from the operating system's CSPRNG, base64url.
    pub(crate) fn new_code(&self) -> Result<NewCode, InvitationError> {
        let mut bytes = [0_u8; CODE_BYTES];
        self.random
            .fill(&mut bytes)
            .map_err(|_| InvitationError::Key("the system's random generator failed".to_owned()))?;
        let code = URL_SAFE_NO_PAD.encode(bytes);
        let hash = hash(&code);
        Ok(NewCode { code, hash })
    }

    /// Records an invitation of contact `contact` of `booking_id` with `code`.
    pub(crate) async fn record(
        &self,
        invitation_id: Uuid,
        booking_id: Uuid,
        contact: usize,
        code: &NewCode,
        invited_by: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<(), InvitationError> {
        sqlx::query(
            "INSERT INTO invitations (invitation_id, booking_id, contact, code_hash, invited_by, \
             expires_at) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(invitation_id)
        .bind(booking_id)
        .bind(i16::try_from(contact).unwrap_or(i16::MAX))
        .bind(code.hash.as_slice())
        .bind(invited_by)
        .bind(expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Revokes the invitation if it is one of `booking_id`'s; when it was revoked (now or
    /// before), or `None` when there is no such invitation of that booking.
    pub(crate) async fn revoke(
        &self,
        booking_id: Uuid,
        invitation_id: Uuid,
    ) -> Result<Option<DateTime<Utc>>, InvitationError> {
        Ok(sqlx::query_scalar(
            "UPDATE invitations SET revoked_at = coalesce(revoked_at, now()) \
             WHERE invitation_id = $1 AND booking_id = $2 RETURNING revoked_at",
        )
        .bind(invitation_id)
        .bind(booking_id)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Exchanges a code for a session, once: `None` when the code is unknown, expired, used or
    /// revoked (the caller must not learn which).
    pub(crate) async fn exchange(&self, code: &str) -> Result<Option<Session>, InvitationError> {
        let row = sqlx::query(
            "UPDATE invitations SET used_at = now() WHERE code_hash = $1 AND used_at IS NULL \
             AND revoked_at IS NULL AND expires_at > now() RETURNING invitation_id, booking_id",
        )
        .bind(hash(code).as_slice())
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let invitation_id: Uuid = row.try_get("invitation_id")?;
        let booking_id: Uuid = row.try_get("booking_id")?;
        self.mint(invitation_id, booking_id).map(Some)
    }

    /// A new session for a session's invitation while it is live (exchanged, not revoked, not
    /// past its expiry): `None` otherwise.
    pub(crate) async fn refresh(
        &self,
        invitation_id: Uuid,
    ) -> Result<Option<Session>, InvitationError> {
        match self.live_booking(invitation_id).await? {
            Some(booking_id) => self.mint(invitation_id, booking_id).map(Some),
            None => Ok(None),
        }
    }

    /// Whether the invitation is live and for `booking_id`: what a family's write checks, so a
    /// revocation stops it at once.
    pub(crate) async fn is_live(
        &self,
        invitation_id: Uuid,
        booking_id: Uuid,
    ) -> Result<bool, InvitationError> {
        Ok(self.live_booking(invitation_id).await? == Some(booking_id))
    }

    async fn live_booking(&self, invitation_id: Uuid) -> Result<Option<Uuid>, InvitationError> {
        Ok(sqlx::query_scalar(
            "SELECT booking_id FROM invitations WHERE invitation_id = $1 \
             AND used_at IS NOT NULL AND revoked_at IS NULL AND expires_at > now()",
        )
        .bind(invitation_id)
        .fetch_optional(&self.pool)
        .await?)
    }

    fn mint(&self, invitation_id: Uuid, booking_id: Uuid) -> Result<Session, InvitationError> {
        let now = Utc::now().timestamp();
        let ttl = i64::try_from(self.session_ttl.as_secs()).unwrap_or(600);
        let claims = SessionClaims {
            iss: family::ISSUER.to_owned(),
            aud: family::AUDIENCE.to_owned(),
            sub: invitation_id.to_string(),
            bookings: vec![booking_id],
            iat: now,
            nbf: now,
            exp: now + ttl,
        };
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.signing.kid.clone());
        let token = jsonwebtoken::encode(&header, &claims, &self.signing.encoding)
            .map_err(|error| InvitationError::Key(format!("signing failed: {error}")))?;
        Ok(Session {
            token,
            expires_in: self.session_ttl,
            invitation_id,
            booking_id,
        })
    }
}

/// The newest family-session key whose master key the settings have, made and stored if there
/// is none; with the JWKS and verifying keys of every stored key (sessions signed by an older
/// key verify until they expire).
async fn load_or_make_key(
    pool: &PgPool,
    masters: &MasterKeys,
    random: &SystemRandom,
) -> Result<(SigningKey, serde_json::Value, HashMap<String, DecodingKey>), InvitationError> {
    let mut signing = open_newest(pool, masters).await?;
    if signing.is_none() {
        let mut transaction = pool.begin().await?;
        // One replica makes the key; the others wait here and then find it.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('invitations.session_keys'))")
            .execute(&mut *transaction)
            .await?;
        signing = open_newest(&mut *transaction, masters).await?;
        if signing.is_none() {
            let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, random)
                .map_err(|_| InvitationError::Key("P-256 key generation failed".to_owned()))?;
            let pair =
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), random)
                    .map_err(|_| InvitationError::Key("the new key does not parse".to_owned()))?;
            let (x, y) = public_point(pair.public_key().as_ref())?;
            let kid = format!("{}{}", family::KID_PREFIX, Uuid::new_v4().simple());
            let master = masters.current();
            sqlx::query(
                "INSERT INTO session_keys (kid, master_key_id, sealed, public_x, public_y) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(&kid)
            .bind(master.id())
            .bind(privacy::crypto::seal_secret(master, &kid, pkcs8.as_ref()))
            .bind(&x)
            .bind(&y)
            .execute(&mut *transaction)
            .await?;
            tracing::info!(%kid, "made the family-session signing key");
            signing = Some(SigningKey {
                encoding: EncodingKey::from_ec_der(pkcs8.as_ref()),
                kid,
            });
        }
        transaction.commit().await?;
    }
    let signing = signing.ok_or_else(|| InvitationError::Key("no key".to_owned()))?;
    let rows = sqlx::query("SELECT kid, public_x, public_y FROM session_keys")
        .fetch_all(pool)
        .await?;
    let mut keys = Vec::new();
    let mut decoding = HashMap::new();
    for row in rows {
        let (kid, x, y): (String, String, String) = (
            row.try_get("kid")?,
            row.try_get("public_x")?,
            row.try_get("public_y")?,
        );
        let key = DecodingKey::from_ec_components(&x, &y)
            .map_err(|_| InvitationError::Key(format!("the public key {kid} does not parse")))?;
        decoding.insert(kid.clone(), key);
        keys.push(serde_json::json!({
            "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig",
            "kid": kid, "x": x, "y": y,
        }));
    }
    Ok((signing, serde_json::json!({ "keys": keys }), decoding))
}

/// The newest stored key that opens under the settings' master keys.
async fn open_newest<'e, E>(
    executor: E,
    masters: &MasterKeys,
) -> Result<Option<SigningKey>, InvitationError>
where
    E: sqlx::Executor<'e, Database = sqlx::Postgres>,
{
    let rows = sqlx::query(
        "SELECT kid, master_key_id, sealed FROM session_keys ORDER BY created_at DESC, kid",
    )
    .fetch_all(executor)
    .await?;
    for row in rows {
        let kid: String = row.try_get("kid")?;
        let master_key_id: String = row.try_get("master_key_id")?;
        let sealed: Vec<u8> = row.try_get("sealed")?;
        let Some(master) = masters.get(&master_key_id) else {
            continue;
        };
        match privacy::crypto::open_secret(master, &kid, &sealed) {
            Ok(pkcs8) => {
                return Ok(Some(SigningKey {
                    encoding: EncodingKey::from_ec_der(&pkcs8),
                    kid,
                }));
            }
            Err(error) => {
                tracing::warn!(%kid, %error, "a family-session key does not open; skipped");
            }
        }
    }
    Ok(None)
}

/// The base64url `x` and `y` of an uncompressed P-256 point (`04 || x || y`).
fn public_point(point: &[u8]) -> Result<(String, String), InvitationError> {
    match point {
        [4, rest @ ..] if rest.len() == 64 => {
            let (x, y) = rest.split_at(32);
            Ok((URL_SAFE_NO_PAD.encode(x), URL_SAFE_NO_PAD.encode(y)))
        }
        _ => Err(InvitationError::Key(
            "the public key is not an uncompressed P-256 point".to_owned(),
        )),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // A test fails loudly on any unexpected error; that is the point.
mod tests {
    use super::*;

    #[test]
    fn a_code_hash_is_its_sha256() {
        assert_eq!(
            URL_SAFE_NO_PAD.encode(hash("abc")),
            // SHA-256("abc"), FIPS 180-2 appendix B.1, in base64url.
            "ungWv48Bz-pBQUDeXa4iI7ADYaOWF3qctBD_YfIAFa0"
        );
    }

    #[test]
    fn a_p256_point_splits_into_its_coordinates() {
        let mut point = vec![4_u8];
        point.extend([1_u8; 32]);
        point.extend([2_u8; 32]);
        let (x, y) = public_point(&point).unwrap();
        assert_eq!(URL_SAFE_NO_PAD.decode(x).unwrap(), [1_u8; 32]);
        assert_eq!(URL_SAFE_NO_PAD.decode(y).unwrap(), [2_u8; 32]);
        assert!(
            public_point(&point[1..]).is_err(),
            "compressed or truncated"
        );
    }
}
