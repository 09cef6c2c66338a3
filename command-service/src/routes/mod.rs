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
pub(crate) mod ops;
pub(crate) mod payments;
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
    auth::{Caller, Verifier},
    json,
    problem::FieldError,
    rate_limit::{self, RateLimiter},
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
    ("post", "/bookings/{id}/cancel", Bookers::ALLOWED),
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
];

/// An authenticated, authorised, parsed write.
#[derive(Debug)]
pub(crate) struct WriteRequest<T, R> {
    pub(crate) caller: Caller,
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
        let caller = Caller::from_request_parts(&mut parts, state).await?;
        caller.require(R::ALLOWED)?;
        if caller.role != Role::System {
            let address = rate_limit::client_address(&parts.extensions);
            state.limits.writes.check(&caller.subject, address)?;
        }
        let key = idempotency_key(&parts.headers)?;
        let if_match = if_match(&parts.headers)?;
        let correlation_id = flow_id(&parts.headers, trace::CORRELATION_ID, "Correlation-Id")?;
        let causation_id = flow_id(&parts.headers, trace::CAUSATION_ID, "Causation-Id")?;
        let route = format!("{} {}", parts.method, parts.uri.path());
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
        let fingerprint = fingerprint(&route, &value);
        let body = json::from_value(value)?;
        let idempotency = key.map(|key| Idempotency { key, fingerprint });
        let context = CommandContext::new(caller.actor(), idempotency)
            .within_flow(correlation_id, causation_id);
        Ok(Self {
            caller,
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
