//! Families by invitation (docs/identity.md): a director invites a booking's contacts
//! (`POST /bookings/{id}/invitations`) and revokes an invitation; a family exchanges its code for
//! a session (`POST /family-sessions`), refreshes it, and the other services fetch the keys that
//! verify sessions (`GET /family-sessions/jwks.json`).
//!
//! Nothing here logs, stores in the log or answers a code or an address: the code goes only into
//! the letter, the address only to the SMTP server.

use axum::{
    Json,
    extract::{Request, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Utc};
use domain::{
    booking::{Booking, BookingState},
    values::BookingId,
};
use platform::{
    auth::{AuthRejection, Caller, family::Principal},
    json,
    path::ValidPath,
    problem::Problem,
    rate_limit,
};
use schemas::Role;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::{AppState, Directors, Empty, Violations, WriteRequest, check_flow_headers};
use crate::{error::ApiError, invitations::InvitationError, store::Stream};

/// Whether `caller` may invite to, and revoke invitations of, the booking `stream`: a
/// director (or group administrator) of the home of the booking's facility, and the booking
/// exists. The one place this is decided; a booking the caller may not direct answers 404,
/// like one that does not exist.
pub(crate) fn may_direct(
    state: &AppState,
    caller: &Caller,
    stream: &Stream<BookingState>,
    id: Uuid,
) -> Result<(), ApiError> {
    if caller.role == Role::Director && stream.state.details().is_some() {
        super::require_booking(state, caller, id)
    } else {
        Err(ApiError::NotFound { field: "id", id })
    }
}

impl From<InvitationError> for ApiError {
    fn from(error: InvitationError) -> Self {
        tracing::error!(%error, "the invitations store failed");
        Self::Problem(Problem::unavailable())
    }
}

/// Whom to invite: positions in the booking's `family_contacts` (0 is the first); absent: all.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Invite {
    #[serde(default)]
    #[schema(example = json!([0]), min_items = 1, max_items = 10)]
    contacts: Option<Vec<usize>>,
}

/// One invitation made.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct InvitationMade {
    invitation_id: Uuid,
    /// The contact's position in the booking's `family_contacts`.
    contact: usize,
    expires_at: DateTime<Utc>,
    /// Whether the SMTP server accepted the letter; an invitation whose letter it did not
    /// accept is revoked at once (invite that contact again later).
    sent: bool,
}

/// The invitations made.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct InvitationsMade {
    booking_id: Uuid,
    invitations: Vec<InvitationMade>,
}

/// Invite the booking's family contacts (all, or the positions named) to follow it without an
/// account: each gets a letter with a single-use code (256 bits, valid for
/// `FM_INVITATIONS__TTL`, a week by default) that `POST /family-sessions` exchanges for a family
/// session scoped to this booking. Only a hash of the code is kept. For the booking's directors.
#[utoipa::path(
    post,
    path = "/bookings/{id}/invitations",
    tag = "invitations",
    request_body(content = Invite, description = "Optional: without it every contact is invited"),
    params(("id" = Uuid, Path, description = "The booking id")),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Invited; one entry per contact", body = InvitationsMade),
        (status = 404, description = "No such booking, or not one the caller directs", body = platform::problem::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The booking's personal data is erased: there is no one to invite", body = platform::problem::Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn invite(
    State(state): State<AppState>,
    ValidPath(id): ValidPath<Uuid>,
    request: WriteRequest<Invite, Directors>,
) -> Result<Response, ApiError> {
    let stream = state.commands.store().read::<Booking>(id);
    may_direct(&state, &request.caller, &stream, id)?;
    let details = stream
        .state
        .details()
        .ok_or(ApiError::NotFound { field: "id", id })?;
    let erased = || {
        ApiError::Problem(
            Problem::new(
                StatusCode::CONFLICT,
                "personal-data-erased",
                "Nobody to invite",
            )
            .with_detail("the booking's personal data is erased: it has no contacts"),
        )
    };
    if stream.state.personal_data_erased() {
        return Err(erased());
    }
    let personal = state
        .keys
        .open(id, &details.personal)
        .await?
        .personal()
        .ok_or_else(erased)?;
    let chosen = chosen_contacts(request.body.contacts, personal.family_contacts.len())?;
    let expires_at = Utc::now()
        + chrono::Duration::from_std(state.invitation_settings.ttl)
            .unwrap_or(chrono::Duration::days(7));
    let mut made = Vec::with_capacity(chosen.len());
    for position in chosen {
        let contact = &personal.family_contacts[position];
        let invitation_id = Uuid::new_v4();
        let code = state.invitations.new_code()?;
        state
            .invitations
            .record(
                invitation_id,
                id,
                position,
                &code,
                &request.caller.subject,
                expires_at,
            )
            .await?;
        let letter = notifications::Invitation {
            invitation_id,
            booking_id: BookingId::from_uuid(id),
            recipient: contact.email.clone(),
            contact_name: contact.name.as_str().to_owned(),
            deceased_name: personal.deceased_full_name.as_str().to_owned(),
            code: code.code,
            link_base: state.invitation_settings.link_base.clone(),
            expires_at,
        };
        let sent = match state.mailer.send_invitation(&letter).await {
            Ok(_) => true,
            Err(error) => {
                // A code nobody received must not stay exchangeable.
                tracing::warn!(%invitation_id, booking_id = %id, %error, "invitation letter not accepted; revoked");
                state.invitations.revoke(id, invitation_id).await?;
                false
            }
        };
        tracing::info!(%invitation_id, booking_id = %id, contact = position, sent, "invited a family contact");
        made.push(InvitationMade {
            invitation_id,
            contact: position,
            expires_at,
            sent,
        });
    }
    Ok((
        StatusCode::CREATED,
        Json(InvitationsMade {
            booking_id: id,
            invitations: made,
        }),
    )
        .into_response())
}

/// The positions to invite: the ones named (each once, each one the booking has), or all.
fn chosen_contacts(named: Option<Vec<usize>>, count: usize) -> Result<Vec<usize>, ApiError> {
    let Some(chosen) = named else {
        return Ok((0..count).collect());
    };
    let mut violations = Violations::default();
    if chosen.is_empty() {
        violations.add(
            "contacts",
            "contacts.non_empty",
            "name at least one contact",
        );
    }
    for (index, &position) in chosen.iter().enumerate() {
        if position >= count {
            violations.add(
                format!("contacts[{index}]"),
                "contacts.position",
                format!(
                    "the booking has {count} contacts: 0 to {}",
                    count.saturating_sub(1)
                ),
            );
        } else if chosen[..index].contains(&position) {
            violations.add(
                format!("contacts[{index}]"),
                "contacts.unique",
                "each contact once",
            );
        }
    }
    if violations.is_empty() {
        Ok(chosen)
    } else {
        Err(violations.into_error())
    }
}

/// A revocation's answer.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Revoked {
    invitation_id: Uuid,
    revoked_at: DateTime<Utc>,
}

/// Revoke an invitation: its code no longer exchanges, its sessions can no longer cancel or be
/// refreshed, and its sessions' reads at the query-api end when they expire, at most
/// `FM_INVITATIONS__SESSION_TTL` (10 minutes) later. Revoking again answers 200. For the
/// booking's directors.
#[utoipa::path(
    post,
    path = "/bookings/{id}/invitations/{invitation_id}/revoke",
    tag = "invitations",
    params(
        ("id" = Uuid, Path, description = "The booking id"),
        ("invitation_id" = Uuid, Path, description = "The invitation id"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Revoked (or already so)", body = Revoked),
        (status = 404, description = "No such booking or invitation of it", body = platform::problem::Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn revoke(
    State(state): State<AppState>,
    ValidPath((id, invitation_id)): ValidPath<(Uuid, Uuid)>,
    request: WriteRequest<Empty, Directors>,
) -> Result<Response, ApiError> {
    let stream = state.commands.store().read::<Booking>(id);
    may_direct(&state, &request.caller, &stream, id)?;
    let revoked_at =
        state
            .invitations
            .revoke(id, invitation_id)
            .await?
            .ok_or(ApiError::NotFound {
                field: "invitation_id",
                id: invitation_id,
            })?;
    tracing::info!(%invitation_id, booking_id = %id, "revoked an invitation");
    Ok(Json(Revoked {
        invitation_id,
        revoked_at,
    })
    .into_response())
}

/// The code from the letter.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Exchange {
    #[schema(
        example = "q3Vw9m0dXx1rJ2m4Z0b5oA7lQ9u8P6yT1c3e5g7i9kM",
        max_length = 200
    )]
    code: String,
}

/// A family session.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct FamilySessionIssued {
    /// Send as `Authorization: Bearer …` to `GET /bookings/{id}` (query-api) and
    /// `POST /bookings/{id}/cancel`, for this booking only.
    session_token: String,
    #[schema(example = "Bearer")]
    token_type: &'static str,
    /// Seconds until it expires; refresh before (`POST /family-sessions/refresh`).
    expires_in: u64,
    booking_id: Uuid,
    invitation_id: Uuid,
}

impl From<crate::invitations::Session> for FamilySessionIssued {
    fn from(session: crate::invitations::Session) -> Self {
        Self {
            session_token: session.token,
            token_type: "Bearer",
            expires_in: session.expires_in.as_secs(),
            booking_id: session.booking_id,
            invitation_id: session.invitation_id,
        }
    }
}

/// The one answer to a code that does not exchange, whatever the reason.
fn invalid_code() -> ApiError {
    ApiError::Problem(
        Problem::new(
            StatusCode::UNAUTHORIZED,
            "invitation-invalid",
            "The code is not valid",
        )
        .with_detail("the code is unknown, expired, already used or revoked; ask the funeral director for a new invitation"),
    )
}

/// Exchange an invitation's code for a family session (no token needed). A code works once.
/// Unknown, expired, used and revoked codes all answer the same 401. Attempts are limited per
/// client address and per code (429 with `Retry-After`).
#[utoipa::path(
    post,
    path = "/family-sessions",
    tag = "invitations",
    request_body = Exchange,
    security(()),
    responses(
        (status = 201, description = "The session", body = FamilySessionIssued),
        (status = 401, description = "The code is unknown, expired, used or revoked", body = platform::problem::Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn exchange(
    State(state): State<AppState>,
    request: Request,
) -> Result<Response, ApiError> {
    let address = rate_limit::client_address(request.extensions());
    check_flow_headers(request.headers())?;
    // Counted per address before the body is read, so a flood costs no parsing.
    state.exchange_limits.check_address(address)?;
    json::require_json(request.headers())?;
    let bytes = json::read_body(request, &state).await?;
    let body: Exchange = json::from_value(json::parse_value(&bytes)?)?;
    let code = body.code.trim();
    if code.is_empty() || code.len() > 200 {
        return Err(invalid_code());
    }
    state.exchange_limits.check_code(code)?;
    match state.invitations.exchange(code).await? {
        Some(session) => {
            tracing::info!(invitation_id = %session.invitation_id, booking_id = %session.booking_id, "a family exchanged an invitation");
            Ok((
                StatusCode::CREATED,
                Json(FamilySessionIssued::from(session)),
            )
                .into_response())
        }
        None => Err(invalid_code()),
    }
}

/// A new family session for the session presented, while its invitation is neither revoked nor
/// expired.
#[utoipa::path(
    post,
    path = "/family-sessions/refresh",
    tag = "invitations",
    security(("family_session" = [])),
    responses(
        (status = 201, description = "A new session", body = FamilySessionIssued),
        (status = 401, description = "No valid session, or its invitation is revoked or expired", body = platform::problem::Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn refresh(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    check_flow_headers(&headers)?;
    let Principal::Family(session) = principal else {
        return Err(AuthRejection::Forbidden {
            role: principal.caller().role,
        }
        .into());
    };
    match state.invitations.refresh(session.invitation_id).await? {
        Some(session) => Ok((
            StatusCode::CREATED,
            Json(FamilySessionIssued::from(session)),
        )
            .into_response()),
        None => Err(AuthRejection::InvalidToken.into()),
    }
}

/// The public keys that verify family sessions (a JWKS), for the other services
/// (`FM_FAMILY_SESSIONS__JWKS_URL`).
#[utoipa::path(
    get,
    path = "/family-sessions/jwks.json",
    tag = "invitations",
    security(()),
    responses((status = 200, description = "A JSON Web Key Set", body = Object)),
)]
pub(crate) async fn jwks(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    // The document declares the flow headers on every route; a read refuses what a write would.
    check_flow_headers(&headers)?;
    Ok(Json(state.invitations.jwks().clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(named: Vec<usize>, count: usize) -> Vec<String> {
        match chosen_contacts(Some(named), count) {
            Err(ApiError::Invalid(errors)) => {
                errors.iter().map(|error| format!("{error:?}")).collect()
            }
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn the_contacts_are_all_or_the_named_positions_of_the_booking() {
        assert_eq!(chosen_contacts(None, 3).ok(), Some(vec![0, 1, 2]));
        assert_eq!(chosen_contacts(Some(vec![2, 0]), 3).ok(), Some(vec![2, 0]));
        assert!(refused(vec![3], 3)[0].contains("contacts.position"));
        assert!(refused(vec![1, 1], 3)[0].contains("contacts.unique"));
        assert!(refused(vec![], 3)[0].contains("contacts.non_empty"));
    }
}
