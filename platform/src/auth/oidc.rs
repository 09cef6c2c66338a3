//! Verifying the tokens of an OpenID Connect provider by its published keys (JWKS).
//!
//! The verifier holds public keys only: it can check a token, never make one. Keys are cached
//! by `kid`; a token naming an unknown `kid` makes it fetch the JWKS again at once, and the
//! cache is refreshed anyway once it is older than [`OidcSettings::refresh`] (which is how a key
//! the provider removed stops being trusted). A failed fetch keeps the keys already known.
//! This is what makes a rotation at the provider invisible to callers: the provider publishes a
//! new key before it signs with it, so the first token of the new key finds it in a fresh JWKS.
//!
//! Only a fetch that did not help holds the next one back: after a fetch that failed, or that
//! did not hold the `kid` it was made for, the provider is not asked again for
//! [`OidcSettings::min_refresh`], so that a stream of garbage tokens cannot turn the verifier
//! into a load generator for the provider. A fetch that found its key (or a start-up or age
//! refresh) throttles nothing: two rotations in quick succession, or a rotation just after a
//! refresh, never turn a valid token away. (Throttling every fetch, as the first version did,
//! refused a new key's tokens for up to 10 s after any earlier fetch; the rotation test in
//! system-tests/tests/key_rotation.rs caught it.) The one window left: a valid token of a new
//! key arriving within `min_refresh` after a garbage `kid` is refused; a retry after the window
//! is let in (docs/identity.md, Rotation).
//!
//! Accepted algorithms are RS256 and ES256, and the algorithm is the key's, never the token
//! header's choice: a token that says HS256 (the "public key as HMAC secret" forgery) or `none`
//! is refused before any key is looked at. `iss`, `aud`, `exp` and `nbf` are checked with a
//! small leeway. See docs/identity.md.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use jsonwebtoken::{
    Algorithm, DecodingKey, Validation,
    jwk::{AlgorithmParameters, JwkSet},
};
use schemas::Role;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use thiserror::Error;
use tokio::sync::{Mutex, RwLock};

use uuid::Uuid;

use super::{AuthRejection, Caller, Homes};

/// Where the tokens come from and what they must say.
#[derive(Debug, Clone)]
pub struct OidcSettings {
    /// The provider's issuer, exactly as tokens carry it in `iss`.
    pub issuer: String,
    /// What `aud` must contain.
    pub audience: String,
    /// The JWKS address; by default the discovery document's `jwks_uri`.
    pub jwks_url: Option<String>,
    /// Tolerance on `exp` and `nbf` for clocks that disagree.
    pub leeway: Duration,
    /// How long a fetch that did not help (it failed, or lacked the key id it was made for)
    /// keeps the provider from being asked again.
    pub min_refresh: Duration,
    /// Age after which the cached keys are fetched again.
    pub refresh: Duration,
}

impl OidcSettings {
    /// The defaults of docs/identity.md for `issuer` and `audience`.
    pub fn new(issuer: impl Into<String>, audience: impl Into<String>) -> Self {
        Self {
            issuer: issuer.into().trim_end_matches('/').to_owned(),
            audience: audience.into(),
            jwks_url: None,
            leeway: Duration::from_secs(30),
            min_refresh: Duration::from_secs(10),
            refresh: Duration::from_mins(5),
        }
    }
}

/// The provider could not be reached, or refused.
#[derive(Debug, Error)]
pub enum JwksError {
    /// The provider (discovery document, JWKS or token endpoint) did not answer.
    #[error("Failed to fetch {url}: {source}")]
    Fetch {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url} answered {status}")]
    Status {
        url: String,
        status: reqwest::StatusCode,
    },
}

/// What the verifier reads from an access token beyond the standard claims.
#[derive(Debug, Deserialize)]
struct AccessClaims {
    sub: String,
    #[serde(default)]
    roles: Vec<String>,
    /// The ids of the homes the person belongs to (the `fm_home` attribute of each home group
    /// they are a member of; docs/identity.md, "Tenancy").
    #[serde(default)]
    fm_homes: Vec<String>,
    /// The ids of every home of the group a group administrator administers (the group's
    /// `fm_group_homes` attribute). Read for `group_admin` only: a home's members inherit it
    /// from the parent group in the provider, and a director must not get the whole group.
    #[serde(default)]
    fm_group_homes: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct Discovery {
    jwks_uri: String,
}

struct Key {
    decoding: DecodingKey,
    algorithm: Algorithm,
}

#[derive(Default)]
struct KeyCache {
    keys: HashMap<String, Key>,
    /// When the keys were last fetched successfully.
    fetched_at: Option<Instant>,
    /// When a fetch last did not help: it failed, or lacked the key id it was made for.
    fruitless_at: Option<Instant>,
}

impl KeyCache {
    /// Whether a fetch that did not help happened within `window`.
    fn held_back(&self, window: Duration) -> bool {
        self.fruitless_at.is_some_and(|at| at.elapsed() < window)
    }
}

/// Why the keys are fetched, which decides whether the fetch is still needed once it may run.
enum Reason<'a> {
    /// At start-up: always.
    Prefetch,
    /// A token names this key id, which the cache lacks.
    UnknownKid(&'a str),
    /// The cache is older than [`OidcSettings::refresh`].
    Age,
}

/// Checks tokens against the provider's published keys.
pub struct OidcVerifier {
    settings: OidcSettings,
    http: reqwest::Client,
    cache: RwLock<KeyCache>,
    /// Serialises fetches; holds the resolved JWKS address once known.
    fetching: Mutex<Option<String>>,
    /// How many times the JWKS was asked for, successfully or not.
    fetches: AtomicU64,
}

impl std::fmt::Debug for OidcVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcVerifier")
            .field("issuer", &self.settings.issuer)
            .field("audience", &self.settings.audience)
            .finish_non_exhaustive()
    }
}

impl OidcVerifier {
    /// A verifier with an empty cache: the first token fetches the keys.
    pub fn new(settings: OidcSettings) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_default();
        Self {
            fetching: Mutex::new(settings.jwks_url.clone()),
            settings,
            http,
            cache: RwLock::new(KeyCache::default()),
            fetches: AtomicU64::new(0),
        }
    }

    /// How many times this verifier has asked the provider for its keys (a gauge of the
    /// rate limit: tests and metrics read it).
    pub fn jwks_fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// Fetches the keys now (at start-up, so that the first request does not wait).
    pub async fn prefetch(&self) -> Result<usize, JwksError> {
        self.fetch(Reason::Prefetch).await
    }

    /// The caller a valid token speaks for.
    pub async fn verify(&self, token: &str) -> Result<Caller, AuthRejection> {
        let claims: AccessClaims = self.verify_claims(token).await?;
        let role = role_of(&claims.roles).ok_or(AuthRejection::NoRole)?;
        Ok(caller_of(claims, role))
    }

    /// The claims of a token signed by one of the published keys, with issuer, audience,
    /// expiry and not-before checked: what [`verify`](Self::verify) reads for the provider,
    /// and the family sessions' verifier (`super::family`) for its own claims.
    pub async fn verify_claims<T: serde::de::DeserializeOwned>(
        &self,
        token: &str,
    ) -> Result<T, AuthRejection> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthRejection::InvalidToken)?;
        if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256) {
            return Err(AuthRejection::InvalidToken);
        }
        let kid = header.kid.ok_or(AuthRejection::InvalidToken)?;
        let reason = {
            let cache = self.cache.read().await;
            if !cache.keys.contains_key(&kid) {
                Some(Reason::UnknownKid(&kid))
            } else if cache
                .fetched_at
                .is_none_or(|at| at.elapsed() >= self.settings.refresh)
            {
                Some(Reason::Age)
            } else {
                None
            }
        };
        if let Some(reason) = reason {
            // A failed fetch keeps the keys known; the lookup below decides.
            if let Err(error) = self.fetch(reason).await {
                tracing::warn!(%error, "could not refresh the identity provider's keys");
            }
        }
        let cache = self.cache.read().await;
        let key = cache.keys.get(&kid).ok_or(AuthRejection::InvalidToken)?;
        if key.algorithm != header.alg {
            return Err(AuthRejection::InvalidToken);
        }
        let mut validation = Validation::new(key.algorithm);
        validation.leeway = self.settings.leeway.as_secs();
        validation.validate_nbf = true;
        validation.set_issuer(&[&self.settings.issuer]);
        validation.set_audience(&[&self.settings.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        jsonwebtoken::decode::<T>(token, &key.decoding, &validation)
            .map(|data| data.claims)
            .map_err(|_| AuthRejection::InvalidToken)
    }

    /// Fetches the JWKS for `reason`, unless a fetch that did not help happened within
    /// [`OidcSettings::min_refresh`] or another caller's fetch already did the work while this
    /// one waited; returns how many usable keys the cache holds.
    async fn fetch(&self, reason: Reason<'_>) -> Result<usize, JwksError> {
        let mut jwks_url = self.fetching.lock().await;
        {
            let cache = self.cache.read().await;
            let done = match reason {
                Reason::Prefetch => false,
                Reason::UnknownKid(kid) => {
                    cache.keys.contains_key(kid) || cache.held_back(self.settings.min_refresh)
                }
                Reason::Age => {
                    cache
                        .fetched_at
                        .is_some_and(|at| at.elapsed() < self.settings.refresh)
                        || cache.held_back(self.settings.min_refresh)
                }
            };
            if done {
                return Ok(cache.keys.len());
            }
        }
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let set = match self.fetch_set(&mut jwks_url).await {
            Ok(set) => set,
            Err(error) => {
                // A failing provider is not asked again before the window has passed.
                self.cache.write().await.fruitless_at = Some(Instant::now());
                return Err(error);
            }
        };
        let keys: HashMap<String, Key> = set
            .keys
            .iter()
            .filter_map(|jwk| {
                let kid = jwk.common.key_id.clone()?;
                let algorithm = match &jwk.algorithm {
                    AlgorithmParameters::RSA(_) => Algorithm::RS256,
                    AlgorithmParameters::EllipticCurve(_) => Algorithm::ES256,
                    _ => return None,
                };
                // A key published for encryption (use=enc) signs nothing.
                if jwk.common.public_key_use == Some(jsonwebtoken::jwk::PublicKeyUse::Encryption) {
                    return None;
                }
                let decoding = DecodingKey::from_jwk(jwk).ok()?;
                Some((
                    kid,
                    Key {
                        decoding,
                        algorithm,
                    },
                ))
            })
            .collect();
        let count = keys.len();
        let now = Instant::now();
        let helped = match reason {
            Reason::UnknownKid(kid) => keys.contains_key(kid),
            Reason::Prefetch | Reason::Age => true,
        };
        let mut cache = self.cache.write().await;
        cache.keys = keys;
        cache.fetched_at = Some(now);
        if !helped {
            cache.fruitless_at = Some(now);
        }
        drop(cache);
        tracing::info!(keys = count, helped, "fetched the identity provider's keys");
        Ok(count)
    }

    /// The JWKS, found through the discovery document the first time.
    async fn fetch_set(&self, jwks_url: &mut Option<String>) -> Result<JwkSet, JwksError> {
        let url = if let Some(url) = jwks_url.as_ref() {
            url.clone()
        } else {
            let url = format!("{}/.well-known/openid-configuration", self.settings.issuer);
            let discovery: Discovery = get_json(&self.http, &url).await?;
            jwks_url.insert(discovery.jwks_uri).clone()
        };
        get_json(&self.http, &url).await
    }
}

/// A service's own access token, by the client-credentials grant of its confidential client:
/// how the saga runner gets its `system` token without holding a key that could sign one.
/// The token is cached and renewed a minute before it expires.
pub struct ClientCredentials {
    issuer: String,
    /// The token endpoint; by default the discovery document's `token_endpoint`.
    pub token_url: Option<String>,
    client_id: String,
    client_secret: SecretString,
    http: reqwest::Client,
    state: Mutex<ClientState>,
}

/// The token endpoint once discovered, and the current token with its renewal time.
#[derive(Default)]
struct ClientState {
    endpoint: Option<String>,
    current: Option<(String, Instant)>,
}

impl std::fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCredentials")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Deserialize)]
struct TokenEndpoint {
    token_endpoint: String,
}

#[derive(Debug, Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

impl ClientCredentials {
    /// The client `client_id` with its secret at the provider of `issuer`.
    pub fn new(issuer: &str, client_id: String, client_secret: SecretString) -> Self {
        Self {
            issuer: issuer.trim_end_matches('/').to_owned(),
            token_url: None,
            client_id,
            client_secret,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
            state: Mutex::new(ClientState::default()),
        }
    }

    /// A valid access token: the cached one, or a new one from the provider.
    pub async fn token(&self) -> Result<String, JwksError> {
        let mut state = self.state.lock().await;
        if let Some((token, renew_at)) = &state.current
            && Instant::now() < *renew_at
        {
            return Ok(token.clone());
        }
        let endpoint = if let Some(endpoint) = self.token_url.as_ref().or(state.endpoint.as_ref()) {
            endpoint.clone()
        } else {
            let url = format!("{}/.well-known/openid-configuration", self.issuer);
            let discovery: TokenEndpoint = get_json(&self.http, &url).await?;
            state.endpoint.insert(discovery.token_endpoint).clone()
        };
        let fetch = |source| JwksError::Fetch {
            url: endpoint.clone(),
            source,
        };
        let response = self
            .http
            .post(&endpoint)
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", self.client_id.as_str()),
                ("client_secret", self.client_secret.expose_secret()),
            ])
            .send()
            .await
            .map_err(fetch)?;
        if !response.status().is_success() {
            return Err(JwksError::Status {
                url: endpoint.clone(),
                status: response.status(),
            });
        }
        let answer: TokenResponse = response.json().await.map_err(fetch)?;
        state.current = Some((answer.access_token.clone(), renew_at(answer.expires_in)));
        Ok(answer.access_token)
    }
}

/// When to ask for a new token: a minute before a token of `expires_in` seconds expires, or at
/// half its life when it lives less than two minutes (a provider that says nothing: a minute).
fn renew_at(expires_in: Option<u64>) -> Instant {
    let lifetime = Duration::from_secs(expires_in.unwrap_or(60));
    Instant::now()
        + lifetime
            .saturating_sub(Duration::from_mins(1))
            .max(lifetime / 2)
}

async fn get_json<T: serde::de::DeserializeOwned>(
    http: &reqwest::Client,
    url: &str,
) -> Result<T, JwksError> {
    let fetch = |source| JwksError::Fetch {
        url: url.to_owned(),
        source,
    };
    let response = http.get(url).send().await.map_err(fetch)?;
    if !response.status().is_success() {
        return Err(JwksError::Status {
            url: url.to_owned(),
            status: response.status(),
        });
    }
    response.json().await.map_err(fetch)
}

/// The caller a verified token speaks for, with its homes (docs/identity.md, "Tenancy"): a
/// director's homes are `fm_homes`; a group administrator's are `fm_group_homes` (and any home
/// they are also a member of); ops and services act for every home; a family for none.
/// Home ids that are not UUIDs are dropped: a misconfigured home is reached by nobody.
fn caller_of(claims: AccessClaims, role: Role) -> Caller {
    let group_admin = role == Role::Director && claims.roles.iter().any(|r| r == "group_admin");
    let ids = |values: &[String]| -> BTreeSet<Uuid> {
        values
            .iter()
            .filter_map(|value| Uuid::parse_str(value.trim()).ok())
            .collect()
    };
    let homes = match role {
        Role::Director if group_admin => Homes::Only(
            ids(&claims.fm_group_homes)
                .union(&ids(&claims.fm_homes))
                .copied()
                .collect(),
        ),
        Role::Director => Homes::Only(ids(&claims.fm_homes)),
        Role::Family => Homes::Only(BTreeSet::new()),
        Role::Ops | Role::System => Homes::All,
    };
    Caller {
        subject: claims.sub,
        role,
        homes,
        group_admin,
    }
}

/// The one Funeral Manager role among a token's `roles`: `system` for a service account, else
/// the widest staff role. `group_admin` is a `director` in every home of the group; the caller
/// says which it is ([`Caller::group_admin`]).
fn role_of(roles: &[String]) -> Option<Role> {
    let has = |name: &str| roles.iter().any(|role| role == name);
    if has("system") {
        Some(Role::System)
    } else if has("group_admin") || has("director") {
        Some(Role::Director)
    } else if has("ops") {
        Some(Role::Ops)
    } else if has("family") {
        Some(Role::Family)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roles(names: &[&str]) -> Vec<String> {
        names.iter().map(|&name| name.to_owned()).collect()
    }

    #[test]
    fn a_service_account_is_system_whatever_else_it_has() {
        assert_eq!(role_of(&roles(&["ops", "system"])), Some(Role::System));
    }

    fn claims(roles_: &[&str], homes: &[&str], group_homes: &[&str]) -> AccessClaims {
        AccessClaims {
            sub: "someone".to_owned(),
            roles: roles(roles_),
            fm_homes: roles(homes),
            fm_group_homes: roles(group_homes),
        }
    }

    const A: &str = "6f0c5c1e-54a2-4f43-9a42-2a2b3b5e0a01";
    const B: &str = "6f0c5c1e-54a2-4f43-9a42-2a2b3b5e0b02";

    fn home(id: &str) -> Uuid {
        Uuid::parse_str(id).unwrap_or_default()
    }

    #[test]
    fn a_director_acts_for_their_homes_only_not_the_group_they_inherit() {
        let caller = caller_of(claims(&["director"], &[A], &[A, B]), Role::Director);
        assert_eq!(caller.homes, Homes::Only([home(A)].into()));
        assert!(!caller.group_admin);
    }

    #[test]
    fn a_group_administrator_acts_for_every_home_of_the_group() {
        let caller = caller_of(claims(&["group_admin"], &[], &[A, B]), Role::Director);
        assert_eq!(caller.homes, Homes::Only([home(A), home(B)].into()));
        assert!(caller.group_admin);
    }

    #[test]
    fn ops_and_services_act_for_every_home_a_family_for_none() {
        assert_eq!(
            caller_of(claims(&["ops"], &[A], &[]), Role::Ops).homes,
            Homes::All
        );
        assert_eq!(
            caller_of(claims(&["system"], &[], &[]), Role::System).homes,
            Homes::All
        );
        assert_eq!(
            caller_of(claims(&["family"], &[A], &[A]), Role::Family).homes,
            Homes::Only(BTreeSet::new())
        );
    }

    #[test]
    fn a_home_id_that_is_not_a_uuid_reaches_nothing() {
        let caller = caller_of(claims(&["director"], &["home-a"], &[]), Role::Director);
        assert_eq!(caller.homes, Homes::Only(BTreeSet::new()));
    }

    #[test]
    fn a_group_administrator_is_a_director() {
        assert_eq!(role_of(&roles(&["group_admin"])), Some(Role::Director));
        assert_eq!(role_of(&roles(&["ops", "director"])), Some(Role::Director));
    }

    #[test]
    fn a_token_with_no_funeral_manager_role_has_none() {
        assert_eq!(
            role_of(&roles(&["offline_access", "uma_authorization"])),
            None
        );
    }
}
