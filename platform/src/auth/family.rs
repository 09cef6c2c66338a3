//! Family sessions: the short-lived tokens a family gets for an invitation's code
//! (docs/identity.md, "Families by invitation").
//!
//! The command-service signs them with its own family-session key (ES256, `kid` starting with
//! [`KID_PREFIX`]) and publishes the public half as a JWKS. They are a second issuer, trusted
//! only where a route asks for it: a route that takes [`Caller`] knows only the provider (or the
//! shared secret), so a family session there is 401; a route that takes [`Principal`] accepts
//! both and must then check that the booking it serves is one the session names
//! ([`FamilySession::may_see`]).

use std::{collections::HashMap, sync::Arc};

use axum::{
    extract::{FromRef, FromRequestParts},
    http::{header, request::Parts},
};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use schemas::Role;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{AuthRejection, Caller, Verifier, oidc};

/// The `iss` of every family session.
pub const ISSUER: &str = "funeral-manager/family-sessions";
/// The `aud` of every family session: no provider token names it, and no family session names
/// the provider's audience.
pub const AUDIENCE: &str = "funeral-manager-family";
/// How a family-session key's `kid` starts: what sends a token to the family verifier.
pub const KID_PREFIX: &str = "family-";
/// Tolerance on `exp` and `nbf` for clocks that disagree.
const LEEWAY_SECONDS: u64 = 30;

/// What a family session says.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionClaims {
    pub iss: String,
    pub aud: String,
    /// The invitation the session was bought with (an opaque id: the actor of the family's
    /// commands).
    pub sub: String,
    /// The bookings the session opens.
    pub bookings: Vec<Uuid>,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
}

/// A verified family session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FamilySession {
    pub invitation_id: Uuid,
    pub bookings: Vec<Uuid>,
}

impl FamilySession {
    /// Whether the session opens `booking`.
    pub fn may_see(&self, booking: Uuid) -> bool {
        self.bookings.contains(&booking)
    }

    /// The session as the actor of the commands it causes: role `family`, subject the
    /// invitation's id.
    pub fn caller(&self) -> Caller {
        Caller::new(self.invitation_id.to_string(), Role::Family)
    }
}

/// How a service checks family sessions.
pub enum FamilySessions {
    /// The service accepts none (the query-api without `FM_FAMILY_SESSIONS__JWKS_URL`).
    Disabled,
    /// The signer's own public keys, by `kid` (the command-service).
    Keys(HashMap<String, DecodingKey>),
    /// The signer's published JWKS, fetched and cached like the provider's (the query-api).
    Jwks(Box<oidc::OidcVerifier>),
}

impl std::fmt::Debug for FamilySessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Disabled => f.write_str("FamilySessions::Disabled"),
            Self::Keys(keys) => write!(f, "FamilySessions::Keys({} keys)", keys.len()),
            Self::Jwks(verifier) => write!(f, "FamilySessions::Jwks({verifier:?})"),
        }
    }
}

impl FamilySessions {
    /// Sessions checked against the JWKS at `url`, or none when `url` is `None`.
    pub fn from_jwks_url(url: Option<&str>) -> Self {
        match url {
            None => Self::Disabled,
            Some(url) => {
                let mut settings = oidc::OidcSettings::new(ISSUER, AUDIENCE);
                settings.jwks_url = Some(url.to_owned());
                settings.leeway = std::time::Duration::from_secs(LEEWAY_SECONDS);
                Self::Jwks(Box::new(oidc::OidcVerifier::new(settings)))
            }
        }
    }

    /// The session a token is, if it is a valid one.
    pub async fn verify(&self, token: &str) -> Result<FamilySession, AuthRejection> {
        let claims: SessionClaims = match self {
            Self::Disabled => return Err(AuthRejection::InvalidToken),
            Self::Jwks(verifier) => verifier.verify_claims(token).await?,
            Self::Keys(keys) => {
                let header =
                    jsonwebtoken::decode_header(token).map_err(|_| AuthRejection::InvalidToken)?;
                // The algorithm is the key's (ES256), never the header's choice.
                if header.alg != Algorithm::ES256 {
                    return Err(AuthRejection::InvalidToken);
                }
                let key = header
                    .kid
                    .as_ref()
                    .and_then(|kid| keys.get(kid))
                    .ok_or(AuthRejection::InvalidToken)?;
                jsonwebtoken::decode::<SessionClaims>(token, key, &validation())
                    .map_err(|_| AuthRejection::InvalidToken)?
                    .claims
            }
        };
        let invitation_id =
            Uuid::parse_str(&claims.sub).map_err(|_| AuthRejection::InvalidToken)?;
        if claims.bookings.is_empty() {
            return Err(AuthRejection::InvalidToken);
        }
        Ok(FamilySession {
            invitation_id,
            bookings: claims.bookings,
        })
    }
}

/// What a family session must satisfy besides its signature.
pub fn validation() -> Validation {
    let mut validation = Validation::new(Algorithm::ES256);
    validation.leeway = LEEWAY_SECONDS;
    validation.validate_nbf = true;
    validation.set_issuer(&[ISSUER]);
    validation.set_audience(&[AUDIENCE]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    validation
}

/// Whether a token is meant for the family verifier: its `kid` names a family-session key.
/// (Only a routing decision: the verifier then checks everything.)
pub fn is_family_session(token: &str) -> bool {
    jsonwebtoken::decode_header(token)
        .ok()
        .and_then(|header| header.kid)
        .is_some_and(|kid| kid.starts_with(KID_PREFIX))
}

/// Who calls a route that families with a session may use too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A token of the provider (or the shared secret): staff, services, a family account.
    Staff(Caller),
    /// A family session, scoped to its bookings.
    Family(FamilySession),
}

impl Principal {
    /// The caller as the rest of the code sees it (a session: role `family`, subject the
    /// invitation).
    pub fn caller(&self) -> Caller {
        match self {
            Self::Staff(caller) => caller.clone(),
            Self::Family(session) => session.caller(),
        }
    }

    /// The session, if the caller is one.
    pub fn session(&self) -> Option<&FamilySession> {
        match self {
            Self::Staff(_) => None,
            Self::Family(session) => Some(session),
        }
    }
}

/// The bearer token of a request.
pub fn bearer(parts: &Parts) -> Result<&str, AuthRejection> {
    let value = parts
        .headers
        .get(header::AUTHORIZATION)
        .ok_or(AuthRejection::MissingToken)?
        .to_str()
        .map_err(|_| AuthRejection::InvalidToken)?;
    value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .map(str::trim)
        .ok_or(AuthRejection::InvalidToken)
}

impl<S> FromRequestParts<S> for Principal
where
    Arc<Verifier>: FromRef<S>,
    Arc<FamilySessions>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = AuthRejection;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let token = bearer(parts)?;
        if is_family_session(token) {
            let sessions = Arc::<FamilySessions>::from_ref(state);
            sessions.verify(token).await.map(Self::Family)
        } else {
            let verifier = Arc::<Verifier>::from_ref(state);
            verifier.verify(token).await.map(Self::Staff)
        }
    }
}

/// The `family_session` security scheme of the API documents: the session
/// `POST /family-sessions` answers, for the routes that accept one.
#[derive(Debug)]
pub struct FamilySessionAuth;

impl utoipa::Modify for FamilySessionAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                "family_session",
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .bearer_format("JWT")
                        .description(Some(
                            "A family session (ES256, issuer funeral-manager/family-sessions, \
                             audience funeral-manager-family) from the command-service's \
                             POST /family-sessions; valid only for the booking it names",
                        ))
                        .build(),
                ),
            );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_sees_only_its_bookings_and_acts_as_its_invitation() {
        let (invitation_id, booking) = (Uuid::new_v4(), Uuid::new_v4());
        let session = FamilySession {
            invitation_id,
            bookings: vec![booking],
        };
        assert!(session.may_see(booking));
        assert!(!session.may_see(Uuid::new_v4()));
        let caller = session.caller();
        assert_eq!(caller.role, Role::Family);
        assert_eq!(caller.subject, invitation_id.to_string());
    }

    #[test]
    fn garbage_is_not_routed_to_the_family_verifier() {
        assert!(!is_family_session("not a token"));
    }
}
