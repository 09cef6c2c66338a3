//! Bearer tokens with roles.
//!
//! A service checks tokens with a [`Verifier`]: the OpenID Connect provider's published keys
//! ([`oidc`], `FM_AUTH__ISSUER`; docs/identity.md), or, until every caller has moved to the
//! provider, the deployment's shared HS256 secret ([`TokenKeys`], `FM_AUTH__SECRET`). The subject
//! is an opaque id: for a family it is what ties them to the bookings they made.

pub mod family;
pub mod oidc;

use std::{collections::BTreeSet, sync::Arc};

use axum::{
    extract::{FromRef, FromRequestParts},
    http::{HeaderValue, StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
};
use chrono::{Duration, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use schemas::{Actor, Role};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use uuid::Uuid;

use crate::{problem::Problem, settings::AuthSettings};

/// What a token says.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub role: Role,
    pub iat: i64,
    pub exp: i64,
}

/// The signing secret is too short to be safe.
#[derive(Debug, Error)]
#[error("the auth secret must be at least {MIN_SECRET_BYTES} bytes long")]
pub struct WeakSecret;

/// Shortest accepted secret: 256 bits, the size of the HS256 hash.
pub const MIN_SECRET_BYTES: usize = 32;

/// Mints and verifies tokens with one secret.
#[derive(Clone)]
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKeys(..)")
    }
}

impl TokenKeys {
    pub fn from_secret(secret: &SecretString) -> Result<Self, WeakSecret> {
        let bytes = secret.expose_secret().as_bytes();
        if bytes.len() < MIN_SECRET_BYTES {
            return Err(WeakSecret);
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 30;
        Ok(Self {
            encoding: EncodingKey::from_secret(bytes),
            decoding: DecodingKey::from_secret(bytes),
            validation,
        })
    }

    /// A token for `subject` with `role`, valid for `ttl`.
    pub fn mint(
        &self,
        subject: &str,
        role: Role,
        ttl: Duration,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let now = Utc::now();
        let claims = Claims {
            sub: subject.to_owned(),
            role,
            iat: now.timestamp(),
            exp: (now + ttl).timestamp(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
    }

    /// The claims of a token with a valid signature that has not expired.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthRejection> {
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|data| data.claims)
            .map_err(|_| AuthRejection::InvalidToken)
    }
}

/// How a service checks bearer tokens.
#[derive(Debug)]
pub enum Verifier {
    /// The OpenID Connect provider's keys: the service can check tokens, never make one.
    Oidc(oidc::OidcVerifier),
    /// The shared HS256 secret (the way before issue 16; it can mint as well as check).
    SharedSecret(TokenKeys),
}

/// The auth settings name neither an issuer nor a secret, or a secret too short.
#[derive(Debug, Error)]
pub enum AuthConfigError {
    #[error("set FM_AUTH__ISSUER (the OpenID Connect provider's issuer) or FM_AUTH__SECRET")]
    Missing,
    #[error(transparent)]
    WeakSecret(#[from] WeakSecret),
}

impl Verifier {
    /// The verifier the settings ask for: the provider when an issuer is set, else the secret.
    pub fn from_settings(settings: &AuthSettings) -> Result<Self, AuthConfigError> {
        if let Some(issuer) = &settings.issuer {
            let mut oidc = oidc::OidcSettings::new(issuer, &settings.audience);
            oidc.jwks_url.clone_from(&settings.jwks_url);
            oidc.leeway = settings.leeway;
            oidc.refresh = settings.jwks_refresh;
            oidc.min_refresh = settings.jwks_min_refresh;
            return Ok(Self::Oidc(oidc::OidcVerifier::new(oidc)));
        }
        let secret = settings.secret.as_ref().ok_or(AuthConfigError::Missing)?;
        Ok(Self::SharedSecret(TokenKeys::from_secret(secret)?))
    }

    /// The caller a valid token speaks for.
    pub async fn verify(&self, token: &str) -> Result<Caller, AuthRejection> {
        match self {
            Self::Oidc(verifier) => verifier.verify(token).await,
            // A shared-secret token names no homes: the deployments that still mint them (soak,
            // fuzz, benchmarks, `FM_KEYCLOAK=0`) have no tenants, so staff act for every home.
            Self::SharedSecret(keys) => keys
                .verify(token)
                .map(|claims| Caller::new(claims.sub, claims.role)),
        }
    }

    /// Fetches the provider's keys ahead of the first request; logs, never fails, when the
    /// provider does not answer yet (the first token then fetches them).
    pub async fn warm_up(&self) {
        if let Self::Oidc(verifier) = self
            && let Err(error) = verifier.prefetch().await
        {
            tracing::warn!(%error, "the identity provider's keys are not available yet");
        }
    }
}

/// Where a service gets the token it sends to another service's internal routes.
#[derive(Debug)]
pub enum ServiceToken {
    /// The provider's client-credentials grant of the service's own confidential client.
    ClientCredentials(oidc::ClientCredentials),
    /// Minted with the shared secret (the way before issue 16).
    Minted {
        keys: TokenKeys,
        subject: String,
        role: Role,
    },
}

/// The settings do not say how the service gets its own token.
#[derive(Debug, Error)]
pub enum ServiceTokenConfigError {
    #[error(
        "with FM_AUTH__ISSUER set, FM_AUTH__CLIENT_ID and FM_AUTH__CLIENT_SECRET must be set too"
    )]
    MissingClient,
    #[error(transparent)]
    Config(#[from] AuthConfigError),
}

impl ServiceToken {
    /// The provider's client credentials when an issuer is set, else tokens minted for
    /// `subject` with `role`.
    pub fn from_settings(
        settings: &AuthSettings,
        subject: &str,
        role: Role,
    ) -> Result<Self, ServiceTokenConfigError> {
        if let Some(issuer) = &settings.issuer {
            let (Some(id), Some(secret)) = (&settings.client_id, &settings.client_secret) else {
                return Err(ServiceTokenConfigError::MissingClient);
            };
            let mut client = oidc::ClientCredentials::new(issuer, id.clone(), secret.clone());
            client.token_url.clone_from(&settings.token_url);
            return Ok(Self::ClientCredentials(client));
        }
        let secret = settings.secret.as_ref().ok_or(AuthConfigError::Missing)?;
        Ok(Self::Minted {
            keys: TokenKeys::from_secret(secret).map_err(AuthConfigError::from)?,
            subject: subject.to_owned(),
            role,
        })
    }

    /// A token to send now.
    pub async fn token(&self) -> Result<String, String> {
        match self {
            Self::ClientCredentials(client) => client.token().await.map_err(|e| e.to_string()),
            Self::Minted {
                keys,
                subject,
                role,
            } => keys
                .mint(subject, *role, Duration::minutes(5))
                .map_err(|e| e.to_string()),
        }
    }
}

/// The funeral homes a caller acts for (docs/identity.md, "Tenancy").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Homes {
    /// Every home: `ops` (personal data masked), `system`, and every staff token of a deployment
    /// without a provider (a shared-secret token names no homes).
    All,
    /// These homes only: a director's own, a group administrator's group's. Empty for a family,
    /// whose reach is the bookings it made, not a home.
    Only(BTreeSet<Uuid>),
}

impl Homes {
    /// Whether `home` is one of them.
    pub fn contains(&self, home: Uuid) -> bool {
        match self {
            Self::All => true,
            Self::Only(homes) => homes.contains(&home),
        }
    }

    /// The homes to filter a query by (`WHERE home = ANY($1)`), or `None` for every home.
    pub fn filter(&self) -> Option<Vec<Uuid>> {
        match self {
            Self::All => None,
            Self::Only(homes) => Some(homes.iter().copied().collect()),
        }
    }
}

/// The authenticated caller of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub subject: String,
    pub role: Role,
    /// The homes the caller acts for. A director acts only within them: another home's
    /// facility or booking answers 404 (docs/identity.md).
    pub homes: Homes,
    /// A group administrator (`group_admin` in the token): acts as a director in every home of
    /// the group, but is not one home's director (so must name the home of a new facility).
    pub group_admin: bool,
}

impl Caller {
    /// A caller with the homes its role has without a provider's `fm_homes` claim: every home for
    /// staff and services, none for a family.
    pub fn new(subject: impl Into<String>, role: Role) -> Self {
        let homes = match role {
            Role::Family => Homes::Only(BTreeSet::new()),
            Role::Director | Role::Ops | Role::System => Homes::All,
        };
        Self {
            subject: subject.into(),
            role,
            homes,
            group_admin: false,
        }
    }

    /// Whether the caller may see what belongs to `home` as staff: a director or group
    /// administrator of it, ops or the system. A family never reaches anything by home.
    pub fn acts_for(&self, home: Uuid) -> bool {
        self.role != Role::Family && self.homes.contains(home)
    }

    /// The one home a new facility goes to when the request names none: a director's only home.
    pub fn only_home(&self) -> Option<Uuid> {
        match &self.homes {
            Homes::Only(homes) if homes.len() == 1 && !self.group_admin => {
                homes.iter().next().copied()
            }
            _ => None,
        }
    }

    /// Refuses the request unless the caller has one of `roles`.
    pub fn require(&self, roles: &[Role]) -> Result<(), AuthRejection> {
        if roles.contains(&self.role) {
            Ok(())
        } else {
            Err(AuthRejection::Forbidden { role: self.role })
        }
    }

    /// The caller as the actor recorded on the events it causes.
    pub fn actor(&self) -> Actor {
        Actor {
            subject: self.subject.clone(),
            role: self.role,
        }
    }
}

/// Why a request was not let in.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum AuthRejection {
    /// 401: no `Authorization: Bearer` header.
    #[error("no bearer token was presented")]
    MissingToken,
    /// 401: a token that is malformed, badly signed or expired.
    #[error("the bearer token is invalid or expired")]
    InvalidToken,
    /// 403: a valid token that grants none of Funeral Manager's roles.
    #[error("the token grants no Funeral Manager role")]
    NoRole,
    /// 403: a valid token whose role may not do this.
    #[error("the role {role} may not do this")]
    Forbidden { role: Role },
}

impl IntoResponse for AuthRejection {
    fn into_response(self) -> Response {
        let detail = self.to_string();
        let mut response = match self {
            Self::MissingToken | Self::InvalidToken => Problem::new(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "Unauthenticated",
            ),
            Self::Forbidden { .. } | Self::NoRole => {
                Problem::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden")
            }
        }
        .with_detail(detail)
        .into_response();
        if response.status() == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl<S> FromRequestParts<S> for Caller
where
    Arc<Verifier>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = AuthRejection;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let verifier = Arc::<Verifier>::from_ref(state);
        let value = parts
            .headers
            .get(header::AUTHORIZATION)
            .ok_or(AuthRejection::MissingToken)?
            .to_str()
            .map_err(|_| AuthRejection::InvalidToken)?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or(AuthRejection::InvalidToken)?;
        verifier.verify(token.trim()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(secret: &str) -> TokenKeys {
        TokenKeys::from_secret(&SecretString::from(secret)).expect("long enough")
    }

    #[test]
    fn a_minted_token_verifies_with_its_claims() {
        let keys = keys("0123456789abcdef0123456789abcdef");
        let token = keys
            .mint("family-7", Role::Family, Duration::hours(1))
            .expect("mints");
        let claims = keys.verify(&token).expect("verifies");
        assert_eq!(
            (claims.sub.as_str(), claims.role),
            ("family-7", Role::Family)
        );
    }

    #[test]
    fn a_token_signed_with_another_secret_is_invalid() {
        let token = keys("0123456789abcdef0123456789abcdef")
            .mint("d", Role::Director, Duration::hours(1))
            .expect("mints");
        let other = keys("fedcba9876543210fedcba9876543210");
        assert_eq!(
            other.verify(&token).err(),
            Some(AuthRejection::InvalidToken)
        );
    }

    #[test]
    fn an_expired_token_is_invalid() {
        let keys = keys("0123456789abcdef0123456789abcdef");
        let token = keys
            .mint("d", Role::Director, Duration::hours(-1))
            .expect("mints");
        assert_eq!(keys.verify(&token).err(), Some(AuthRejection::InvalidToken));
    }

    #[test]
    fn a_shared_secret_director_acts_for_every_home_and_a_family_for_none() {
        let home = Uuid::new_v4();
        assert!(Caller::new("d", Role::Director).acts_for(home));
        assert!(Caller::new("o", Role::Ops).acts_for(home));
        assert!(!Caller::new("f", Role::Family).acts_for(home));
    }

    #[test]
    fn only_a_director_of_one_home_has_an_only_home() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let mut director = Caller::new("d", Role::Director);
        director.homes = Homes::Only([a].into());
        assert_eq!(director.only_home(), Some(a));
        assert!(director.acts_for(a) && !director.acts_for(b));
        director.homes = Homes::Only([a, b].into());
        assert_eq!(director.only_home(), None);
        let mut admin = Caller::new("g", Role::Director);
        admin.homes = Homes::Only([a].into());
        admin.group_admin = true;
        assert_eq!(admin.only_home(), None);
        assert_eq!(Caller::new("o", Role::Ops).only_home(), None);
    }

    #[test]
    fn a_short_secret_is_refused() {
        assert!(TokenKeys::from_secret(&SecretString::from("short")).is_err());
    }
}
