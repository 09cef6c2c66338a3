//! The routes and the state they share: one module per route group, each turning HTTP DTOs into
//! domain commands at the edge, and [`router`], which counts every command route's answers.
//!
//! Every write goes through [`WriteRequest`]: it authenticates the caller, refuses a role that
//! may not use the route before reading the body, counts the write against the caller's rate
//! limits (per token subject and per client address; the `system` role, the saga runner, is not
//! limited: its writes follow the log, and throttling them would fail other families'
//! bookings), reads the `Idempotency-Key`, `If-Match`,
//! `Correlation-Id` and `Causation-Id` headers, parses the body (naming the field of any
//! mismatch), and fingerprints the request so that a reused key with a different request is
//! refused. (`traceparent` is read by the request span, `platform::http`.)

pub(crate) mod bookings;
pub(crate) mod facilities;
pub(crate) mod invitations;
pub(crate) mod ops;
pub(crate) mod payments;
pub(crate) mod price_lists;
pub(crate) mod sagas;
mod schema;

use std::{marker::PhantomData, sync::Arc};

use axum::{
    Json, Router,
    extract::{FromRef, FromRequest, FromRequestParts, Request},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post, put},
};
use domain::ValueError;
use event_log::EventProducer;
use platform::{
    auth::{
        Caller, Verifier,
        family::{FamilySession, FamilySessions, Principal},
    },
    json,
    problem::FieldError,
    rate_limit::{self, RateLimiter},
    settings::TenancySettings,
    trace,
};
use schemas::{ConsistencyToken, Idempotency, Role};
use serde::{Serialize, de::DeserializeOwned};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{
    commands::{Appended, CommandContext, CommandHandler},
    error::ApiError,
    metrics::{self, command},
    settings::LimitSettings,
};

/// What every handler can reach.
#[derive(Debug, Clone)]
pub(crate) struct AppState {
    pub(crate) commands: CommandHandler,
    pub(crate) producer: EventProducer,
    pub(crate) verifier: Arc<Verifier>,
    pub(crate) limits: Arc<Limits>,
    /// The data keys: sealing a new booking's personal data, erasing and exporting it.
    pub(crate) keys: Arc<privacy::KeyStore>,
    /// `/ready` is false while the tailer is more records than this behind (0: never).
    pub(crate) max_tailer_lag: u64,
    /// The home of facilities registered before homes were named (`FM_TENANCY__DEFAULT_HOME`).
    pub(crate) tenancy: TenancySettings,
    /// Families by invitation: the invitations, the family-session key.
    pub(crate) invitations: Arc<crate::invitations::Invitations>,
    /// This service's verifier of family sessions (its own keys).
    pub(crate) family_sessions: Arc<FamilySessions>,
    pub(crate) invitation_settings: Arc<crate::settings::InvitationSettings>,
    /// Sends invitation letters.
    pub(crate) mailer: notifications::Mailer,
    /// The homes' price lists (docs/pricing.md).
    pub(crate) price_lists: Arc<crate::pricing::PriceLists>,
    /// Exchanges of invitation codes, per client address and per code.
    pub(crate) exchange_limits: Arc<ExchangeLimits>,
}

/// The limits on exchanging invitation codes (docs/identity.md): per client address, counted
/// before the body is read, and per code (its hash), so that neither one address nor many
/// addresses can try codes fast. In this replica's memory, like the write limits.
#[derive(Debug)]
pub(crate) struct ExchangeLimits {
    per_address: RateLimiter,
    per_code: RateLimiter,
}

impl ExchangeLimits {
    pub(crate) fn new(settings: &crate::settings::InvitationSettings) -> Self {
        let per_address = settings.exchanges_per_address_per_minute;
        let per_code = settings.exchanges_per_code_per_minute;
        Self {
            per_address: RateLimiter::new(
                "family_session_exchanges",
                &rate_limit::RateLimitSettings {
                    per_address_per_minute: per_address,
                    per_address_burst: per_address.max(1),
                    ..rate_limit::RateLimitSettings::UNLIMITED
                },
            ),
            per_code: RateLimiter::new(
                "family_session_codes",
                &rate_limit::RateLimitSettings {
                    per_subject_per_minute: per_code,
                    per_subject_burst: per_code.max(1),
                    ..rate_limit::RateLimitSettings::UNLIMITED
                },
            ),
        }
    }

    /// Counts an attempt from `address` (none: a test calling the router directly).
    pub(crate) fn check_address(
        &self,
        address: Option<std::net::IpAddr>,
    ) -> Result<(), rate_limit::Throttled> {
        self.per_address.check("", address)
    }

    /// Counts an attempt with `code` (by its hash: the code itself is kept nowhere).
    pub(crate) fn check_code(&self, code: &str) -> Result<(), rate_limit::Throttled> {
        let key = platform::digest::sha256_hex(&[code.as_bytes()]);
        self.per_code.check(&key, None)
    }
}

impl FromRef<AppState> for Arc<FamilySessions> {
    fn from_ref(state: &AppState) -> Self {
        state.family_sessions.clone()
    }
}

/// The limits on the flow (`FM_LIMITS__…`, docs/security.md).
#[derive(Debug)]
pub(crate) struct Limits {
    /// Every write, per token subject and per client address.
    pub(crate) writes: RateLimiter,
    /// The most open bookings a family may hold; `None`: no limit.
    pub(crate) open_bookings_per_family: Option<usize>,
}

impl Limits {
    pub(crate) fn new(settings: &LimitSettings) -> Self {
        Self {
            writes: RateLimiter::new("writes", &settings.rate),
            open_bookings_per_family: Some(settings.max_open_bookings_per_family)
                .filter(|limit| *limit > 0),
        }
    }
}

impl FromRef<AppState> for Arc<Verifier> {
    fn from_ref(state: &AppState) -> Self {
        state.verifier.clone()
    }
}

/// Every route; each command route counts its answers by command name (`crate::metrics`).
pub(crate) fn router(state: AppState) -> Router {
    metrics::describe();
    Router::new()
        .route(
            "/facilities",
            command("register_facility", post(facilities::register)),
        )
        .route(
            "/facilities/{id}/opening-hours",
            command(
                "change_opening_hours",
                put(facilities::change_opening_hours),
            ),
        )
        .route(
            "/facilities/{id}/reservations",
            command("reserve_slot", post(facilities::reserve_slot)),
        )
        .route(
            "/facilities/{id}/reservations/{booking_id}/release",
            command("release_slot", post(facilities::release_slot)),
        )
        .route(
            "/bookings",
            command("request_booking", post(bookings::request)),
        )
        .route(
            "/bookings/{id}/cancel",
            command("cancel_booking", post(bookings::cancel)),
        )
        .route(
            "/bookings/{id}/slot-held",
            command("mark_slot_held", post(bookings::mark_slot_held)),
        )
        .route(
            "/bookings/{id}/confirm",
            command("confirm_booking", post(bookings::confirm)),
        )
        .route(
            "/bookings/{id}/reject",
            command("reject_booking", post(bookings::reject)),
        )
        .route(
            "/bookings/{id}/fail",
            command("fail_booking", post(bookings::fail)),
        )
        .route(
            "/bookings/{id}/erase",
            command("erase_personal_data", post(bookings::erase)),
        )
        .route("/bookings/{id}/personal-data", get(bookings::personal_data))
        .route(
            "/bookings/{id}/invitations",
            command("invite_family", post(invitations::invite)),
        )
        .route(
            "/bookings/{id}/invitations/{invitation_id}/revoke",
            command("revoke_invitation", post(invitations::revoke)),
        )
        .route("/family-sessions", post(invitations::exchange))
        .route("/family-sessions/refresh", post(invitations::refresh))
        .route("/family-sessions/jwks.json", get(invitations::jwks))
        .route(
            "/bookings/{id}/payment/captured",
            command("record_capture", post(payments::captured)),
        )
        .route(
            "/bookings/{id}/payment/declined",
            command("record_decline", post(payments::declined)),
        )
        .route(
            "/bookings/{id}/payment/refunded",
            command("record_refund", post(payments::refunded)),
        )
        .route("/sagas/{id}/park", command("park_saga", post(sagas::park)))
        .route(
            "/sagas/{id}/retry",
            command("retry_saga", post(sagas::retry)),
        )
        .route(
            "/sagas/{id}/skip",
            command("skip_saga_step", post(sagas::skip)),
        )
        .route(
            "/sagas/{id}/resolve",
            command("resolve_saga", post(sagas::resolve)),
        )
        .route(
            "/homes/{home_id}/price-list",
            command("publish_price_list", put(price_lists::publish)).get(price_lists::current),
        )
        .route("/ready", get(ops::ready))
        .route("/openapi.json", get(ops::openapi))
        .with_state(state)
}

/// The header that carries a command's consistency token.
pub(crate) const CONSISTENCY_TOKEN: &str = "consistency-token";
/// The retry-token header of writes.
pub(crate) const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// The roles a route admits, as a type, so that the extractor can refuse before parsing.
pub(crate) trait Roles {
    const ALLOWED: &'static [Role];
    /// Whether a family session may call the route too (as role `family`; the handler must
    /// check the session names the booking: `WriteRequest::session`).
    const FAMILY_SESSIONS: bool = false;
}

/// Routes for funeral directors only.
#[derive(Debug)]
pub(crate) struct Directors;
impl Roles for Directors {
    const ALLOWED: &'static [Role] = &[Role::Director];
}

/// Routes for whoever may book: directors and families.
#[derive(Debug)]
pub(crate) struct Bookers;
impl Roles for Bookers {
    const ALLOWED: &'static [Role] = &[Role::Director, Role::Family];
}

/// Cancelling: whoever may book, and a family with a session for the booking.
#[derive(Debug)]
pub(crate) struct Cancellers;
impl Roles for Cancellers {
    const ALLOWED: &'static [Role] = &[Role::Director, Role::Family];
    const FAMILY_SESSIONS: bool = true;
}

/// Erasing a booking's personal data: directors and ops, and the saga runner's retention rule.
#[derive(Debug)]
pub(crate) struct Erasers;
impl Roles for Erasers {
    /// `system`: the saga runner's retention rule (docs/privacy.md).
    const ALLOWED: &'static [Role] = &[Role::Director, Role::Ops, Role::System];
}

/// The saga's internal commands: services only.
#[derive(Debug)]
pub(crate) struct Services;
impl Roles for Services {
    const ALLOWED: &'static [Role] = &[Role::System];
}

/// Decisions about a saga: operators, and the saga runner (which parks a saga by itself).
#[derive(Debug)]
pub(crate) struct Operators;
impl Roles for Operators {
    const ALLOWED: &'static [Role] = &[Role::Ops, Role::System];
}

/// Exporting a booking's personal data: directors and ops.
#[derive(Debug)]
pub(crate) struct Exporters;
impl Roles for Exporters {
    const ALLOWED: &'static [Role] = &[Role::Director, Role::Ops];
}

/// Which roles each operation admits, for the OpenAPI document (`platform::openapi::RouteRoles`):
/// the `ALLOWED` of the role type its handler's extractor or check uses, so the document says
/// what the code enforces. `tests/route_roles.rs` calls every route with every role's token and
/// compares.
pub(crate) const ROUTE_ROLES: &[(&str, &str, &[Role])] = &[
    ("post", "/facilities", Directors::ALLOWED),
    ("put", "/facilities/{id}/opening-hours", Directors::ALLOWED),
    ("post", "/facilities/{id}/reservations", Services::ALLOWED),
    (
        "post",
        "/facilities/{id}/reservations/{booking_id}/release",
        Services::ALLOWED,
    ),
    ("post", "/bookings", Bookers::ALLOWED),
    ("post", "/bookings/{id}/cancel", Cancellers::ALLOWED),
    ("post", "/bookings/{id}/invitations", Directors::ALLOWED),
    (
        "post",
        "/bookings/{id}/invitations/{invitation_id}/revoke",
        Directors::ALLOWED,
    ),
    ("post", "/bookings/{id}/erase", Erasers::ALLOWED),
    ("get", "/bookings/{id}/personal-data", Exporters::ALLOWED),
    ("post", "/bookings/{id}/slot-held", Services::ALLOWED),
    ("post", "/bookings/{id}/confirm", Services::ALLOWED),
    ("post", "/bookings/{id}/reject", Services::ALLOWED),
    ("post", "/bookings/{id}/fail", Services::ALLOWED),
    ("post", "/bookings/{id}/payment/captured", Services::ALLOWED),
    ("post", "/bookings/{id}/payment/declined", Services::ALLOWED),
    ("post", "/bookings/{id}/payment/refunded", Services::ALLOWED),
    ("post", "/sagas/{id}/park", Operators::ALLOWED),
    ("post", "/sagas/{id}/retry", Operators::ALLOWED),
    ("post", "/sagas/{id}/skip", Operators::ALLOWED),
    ("post", "/sagas/{id}/resolve", Operators::ALLOWED),
    ("put", "/homes/{home_id}/price-list", Directors::ALLOWED),
    (
        "get",
        "/homes/{home_id}/price-list",
        price_lists::Readers::ALLOWED,
    ),
];

/// An authenticated, authorised, parsed write.
#[derive(Debug)]
pub(crate) struct WriteRequest<T, R> {
    pub(crate) caller: Caller,
    /// The family session the caller presented, on a route that admits them.
    pub(crate) session: Option<FamilySession>,
    pub(crate) body: T,
    /// The aggregate version the client expects (`If-Match`), if it sent one.
    pub(crate) if_match: Option<u64>,
    pub(crate) context: CommandContext,
    roles: PhantomData<R>,
}

impl<T, R> FromRequest<AppState> for WriteRequest<T, R>
where
    T: DeserializeOwned,
    R: Roles,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = request.into_parts();
        let (caller, session) = if R::FAMILY_SESSIONS {
            match Principal::from_request_parts(&mut parts, state).await? {
                Principal::Staff(caller) => (caller, None),
                Principal::Family(session) => (session.caller(), Some(session)),
            }
        } else {
            (Caller::from_request_parts(&mut parts, state).await?, None)
        };
        caller.require(R::ALLOWED)?;
        if caller.role != Role::System {
            let address = rate_limit::client_address(&parts.extensions);
            state.limits.writes.check(&caller.subject, address)?;
        }
        let key = idempotency_key(&parts.headers)?;
        let if_match = if_match(&parts.headers)?;
        let correlation_id = flow_id(&parts.headers, trace::CORRELATION_ID, "Correlation-Id")?;
        let causation_id = flow_id(&parts.headers, trace::CAUSATION_ID, "Causation-Id")?;
        // Only a request with a key is ever compared with another: the digest is made for those.
        let route = key
            .is_some()
            .then(|| format!("{} {}", parts.method, parts.uri.path()));
        let has_body = parts.headers.contains_key(header::CONTENT_TYPE);
        let request = Request::from_parts(parts, body);
        // A write without a body (a cancel without a reason) is an empty object.
        let value = if has_body {
            json::require_json(request.headers())?;
            let bytes = json::read_body(request, state).await?;
            json::parse_value(&bytes)?
        } else {
            serde_json::Value::Object(serde_json::Map::new())
        };
        let fingerprint = route.map(|route| fingerprint(&route, &value));
        let body = json::from_value(value)?;
        let idempotency = key
            .zip(fingerprint)
            .map(|(key, fingerprint)| Idempotency { key, fingerprint });
        let context = CommandContext::new(caller.actor(), idempotency)
            .within_flow(correlation_id, causation_id);
        Ok(Self {
            caller,
            session,
            body,
            if_match,
            context,
            roles: PhantomData,
        })
    }
}

/// A digest of the route and the canonical body (`serde_json` orders object keys), so that
/// whitespace or key order does not make a retry look like a different request.
fn fingerprint(route: &str, body: &serde_json::Value) -> String {
    platform::digest::sha256_hex(&[route.as_bytes(), b"\n", body.to_string().as_bytes()])
}

fn header_error(field: &str, rule: &str, message: &str) -> ApiError {
    ApiError::Invalid(vec![FieldError::new(field, rule, message)])
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    let key = value.to_str().unwrap_or_default().trim();
    let printable = key.chars().all(|c| c.is_ascii_graphic());
    if key.is_empty() || key.len() > 200 || !printable {
        return Err(header_error(
            "Idempotency-Key",
            "idempotency_key.format",
            "1 to 200 printable ASCII characters without spaces",
        ));
    }
    Ok(Some(key.to_owned()))
}

/// Refuses a malformed `Idempotency-Key`, `Correlation-Id` or `Causation-Id` on a route that is
/// not a write (the export): the API document declares them on every route, so a read refuses
/// what a write would, though it has no use for their values (`compose/fuzz` found the export
/// accepting anything).
pub(crate) fn check_flow_headers(headers: &HeaderMap) -> Result<(), ApiError> {
    idempotency_key(headers)?;
    flow_id(headers, trace::CORRELATION_ID, "Correlation-Id")?;
    flow_id(headers, trace::CAUSATION_ID, "Causation-Id")?;
    Ok(())
}

/// Reads a flow header (`Correlation-Id`, `Causation-Id`): a UUID, in any of its usual forms.
fn flow_id(headers: &HeaderMap, name: &str, field: &str) -> Result<Option<Uuid>, ApiError> {
    let Some(value) = headers.get(name) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|text| Uuid::parse_str(text.trim()).ok())
        .filter(|id| !id.is_nil())
        .map(Some)
        .ok_or_else(|| {
            header_error(
                field,
                "uuid",
                "a UUID such as 0b7e4a53-9c55-4d0f-8b1c-2e114f0c9a5e",
            )
        })
}

/// Reads `If-Match` as an aggregate version: `3`, `"3"`, `W/"3"`, or an ETag of the query-api
/// (`"facility-<id>-v3"`, `"booking-<id>-v3-p1"`: the version follows the last `-v`, up to the
/// next `-`), so that a client can send back what a read gave it.
fn if_match(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or_default().trim();
    let unquoted = text.trim_start_matches("W/").trim_matches('"');
    let digits = unquoted.rsplit_once("-v").map_or(unquoted, |(_, rest)| {
        rest.split_once('-').map_or(rest, |(version, _)| version)
    });
    digits.parse::<u64>().map(Some).map_err(|_| {
        header_error(
            "If-Match",
            "if_match.version",
            "the aggregate version (or the ETag) you read",
        )
    })
}

/// Collects every field violation of a request before answering, so a client learns all of
/// them at once.
#[derive(Debug, Default)]
pub(crate) struct Violations(Vec<FieldError>);

impl Violations {
    /// Keeps the value, or records why `field` is invalid.
    pub(crate) fn check<T>(
        &mut self,
        field: impl Into<String>,
        parsed: Result<T, ValueError>,
    ) -> Option<T> {
        match parsed {
            Ok(value) => Some(value),
            Err(error) => {
                self.0
                    .push(FieldError::new(field, error.rule, error.message));
                None
            }
        }
    }

    /// Records a violation found without a value object.
    pub(crate) fn add(&mut self, field: impl Into<String>, rule: &str, message: impl Into<String>) {
        self.0.push(FieldError::new(field, rule, message));
    }

    /// Whether none was recorded.
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The request's violations as an error (`Invalid` with an empty list never happens: call
    /// this only after a value came back `None`).
    pub(crate) fn into_error(self) -> ApiError {
        ApiError::Invalid(self.0)
    }
}

/// A reason the events carry (a cancellation's, a rejection's, a declined payment's): trimmed,
/// 1 to 500 characters, no control characters (a family's words end up quoted in a letter, one
/// line; no line breaks that could pass for the home's own text). The event schemas refuse an
/// empty one, so an empty one must never reach the log.
pub(crate) fn reason_text(reason: &str) -> Result<String, ApiError> {
    let reason = reason.trim().to_owned();
    let mut violations = Violations::default();
    if reason.is_empty() || reason.chars().count() > REASON_MAX_CHARS {
        violations.add("reason", "reason.length", "1 to 500 characters");
    } else if reason.chars().any(char::is_control) {
        violations.add(
            "reason",
            "reason.control_characters",
            "no control characters (line breaks, tabs, escapes)",
        );
    } else {
        return Ok(reason);
    }
    Err(violations.into_error())
}

/// The most characters a reason may have.
pub(crate) const REASON_MAX_CHARS: usize = 500;

/// Parses a string into one of a domain enum's `snake_case` variants.
pub(crate) fn parse_variant<T: DeserializeOwned>(
    value: &str,
    rule: &'static str,
    allowed: &str,
) -> Result<T, ValueError> {
    serde_json::from_value(serde_json::Value::String(value.to_owned()))
        .map_err(|_| ValueError::new(rule, format!("must be one of: {allowed}")))
}

/// The consistency token of a write, as text.
pub(crate) fn token_of(appended: &Appended) -> Option<String> {
    appended
        .position
        .clone()
        .map(|position| ConsistencyToken::from(position).to_string())
}

/// Answers a write with `body` and the `Consistency-Token` header.
pub(crate) fn with_token<T: Serialize>(
    status: StatusCode,
    appended: &Appended,
    body: &T,
) -> Response {
    let mut response = (status, Json(body)).into_response();
    if let Some(value) = token_of(appended).and_then(|token| HeaderValue::from_str(&token).ok()) {
        response.headers_mut().insert(CONSISTENCY_TOKEN, value);
    }
    metrics::mark(appended.outcome, response)
}

/// Answers a write: `status`, the `Consistency-Token` header, and a body naming the aggregate id
/// under `id_field` (`booking_id`, `facility_id`, `payment_id`) beside version and token.
pub(crate) fn written(status: StatusCode, id_field: &str, appended: &Appended) -> Response {
    let mut body = serde_json::json!({
        "version": appended.version,
        "consistency_token": token_of(appended),
    });
    body[id_field] = serde_json::Value::String(appended.aggregate_id.to_string());
    with_token(status, appended, &body)
}

/// The body of writes that take none (an empty object, or no body at all).
#[derive(Debug, serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Empty {}

/// The home of a registered facility (the deployment's default for one registered before homes
/// were named), or `None` when no such facility is registered.
pub(crate) fn facility_home(state: &AppState, facility_id: Uuid) -> Option<Uuid> {
    let facility = state
        .commands
        .store()
        .read::<domain::facility::Facility>(facility_id);
    let profile = facility.state.profile()?;
    Some(
        profile
            .funeral_home_id
            .map_or(state.tenancy.default_home, |home| *home.as_uuid()),
    )
}

/// Refuses, as 404 on `field`, a facility the caller may not touch: one that does not exist, or,
/// for staff, one of a home they do not act for (docs/identity.md, "Tenancy": a 403 would
/// confirm it exists). A family may book at any facility.
pub(crate) fn require_facility(
    state: &AppState,
    caller: &Caller,
    field: &'static str,
    id: Uuid,
) -> Result<(), ApiError> {
    let visible = facility_home(state, id)
        .is_some_and(|home| caller.role == Role::Family || caller.acts_for(home));
    if visible {
        Ok(())
    } else {
        Err(ApiError::NotFound { field, id })
    }
}

/// Refuses, as 404, a booking the caller may not touch: one that does not exist, another
/// family's, or, for staff, one at a facility of a home they do not act for (a booking's home is
/// its facility's).
pub(crate) fn require_booking(state: &AppState, caller: &Caller, id: Uuid) -> Result<(), ApiError> {
    let stream = state.commands.store().read::<domain::booking::Booking>(id);
    require_owner(stream.owner.as_deref(), caller, id)?;
    if caller.role == Role::Family {
        return Ok(());
    }
    let home = stream
        .state
        .facility_id()
        .and_then(|facility| facility_home(state, *facility.as_uuid()));
    if home.is_some_and(|home| caller.acts_for(home)) {
        Ok(())
    } else {
        Err(ApiError::NotFound { field: "id", id })
    }
}

/// The path id of a stream a family may touch only if it created it: another family's stream
/// answers 404, exactly like a stream that does not exist.
pub(crate) fn require_owner(
    owner: Option<&str>,
    caller: &Caller,
    id: Uuid,
) -> Result<(), ApiError> {
    let visible = match caller.role {
        Role::Family => owner == Some(caller.subject.as_str()),
        Role::Director | Role::Ops | Role::System => owner.is_some(),
    };
    if visible {
        Ok(())
    } else {
        Err(ApiError::NotFound { field: "id", id })
    }
}
