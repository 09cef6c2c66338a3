//! A funeral home's price list (docs/pricing.md): `PUT /homes/{home_id}/price-list` publishes a
//! new version, `GET /homes/{home_id}/price-list` shows the current one.

use axum::{
    Json,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Utc};
use domain::{
    pricing::{ItemCode, PriceItem, PriceList},
    values::{Currency, FacilityKind, ItemDescription, ServiceType},
};
use platform::{
    auth::Caller,
    path::ValidPath,
    problem::{FieldError, Problem},
};
use schemas::Role;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::{
    AppState, Directors, Roles as _, Violations, WriteRequest, check_flow_headers, parse_variant,
};
use crate::{
    commands::CommandOutcome,
    error::ApiError,
    metrics,
    pricing::{ListVersion, Publication},
};

/// A price list as a director publishes it.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PriceListBody {
    /// ISO 4217; every item is in it.
    #[schema(schema_with = super::schema::currencies)]
    currency: String,
    /// 1 to 200 items with unique codes; at most one `service` item per service type and one
    /// `facility_hour` item per facility kind.
    #[schema(min_items = 1, max_items = 200)]
    items: Vec<ItemDto>,
}

/// One item: `service` (once per booking of `service_type`), `facility_hour` (per hour of a
/// slot at a facility of `facility_kind`, pro rata to the minute) or `add_on` (once, when asked
/// for by `code`).
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ItemDto {
    #[schema(example = "service", pattern = "^(service|facility_hour|add_on)$")]
    kind: String,
    #[schema(example = "burial", pattern = "^[a-z0-9][a-z0-9_.-]{0,63}$")]
    code: String,
    #[schema(example = "Burial service", min_length = 1, max_length = 200)]
    description: String,
    /// For `service` items only (absent or `null` for the others).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = super::schema::service_types_or_null, required = false)]
    service_type: Option<String>,
    /// For `facility_hour` items only (absent or `null` for the others).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = super::schema::facility_kinds_or_null, required = false)]
    facility_kind: Option<String>,
    /// Minor units: once, or per hour for `facility_hour`.
    #[schema(example = 95_000, minimum = 0, maximum = 10_000_000_000_i64)]
    amount_minor: i64,
}

/// The current version of a home's price list.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct PriceListView {
    home_id: Uuid,
    /// 1, 2, ...: a booking's statement names the version that priced it.
    version: u32,
    currency: String,
    items: Vec<ItemDto>,
    published_at: DateTime<Utc>,
}

impl From<ListVersion> for PriceListView {
    fn from(published: ListVersion) -> Self {
        Self {
            home_id: published.home,
            version: published.version,
            currency: published.list.currency().code().to_owned(),
            items: published.list.items().iter().map(ItemDto::from).collect(),
            published_at: published.published_at,
        }
    }
}

impl From<&PriceItem> for ItemDto {
    fn from(item: &PriceItem) -> Self {
        let (kind, service_type, facility_kind) = match item {
            PriceItem::Service { service_type, .. } => {
                ("service", Some(service_type.as_str().to_owned()), None)
            }
            PriceItem::FacilityHour { facility_kind, .. } => (
                "facility_hour",
                None,
                Some(facility_kind.as_str().to_owned()),
            ),
            PriceItem::AddOn { .. } => ("add_on", None, None),
        };
        Self {
            kind: kind.to_owned(),
            code: item.code().as_str().to_owned(),
            description: item.description().as_str().to_owned(),
            service_type,
            facility_kind,
            amount_minor: item.amount_minor(),
        }
    }
}

impl PriceListBody {
    fn into_list(self) -> Result<PriceList, ApiError> {
        let mut violations = Violations::default();
        let currency = violations.check("currency", Currency::parse(&self.currency));
        let count = self.items.len();
        let items: Vec<PriceItem> = self
            .items
            .into_iter()
            .enumerate()
            .filter_map(|(index, item)| item.into_item(index, &mut violations))
            .collect();
        if !violations.is_empty() || items.len() != count {
            return Err(violations.into_error());
        }
        let Some(currency) = currency else {
            return Err(violations.into_error());
        };
        PriceList::new(currency, items).map_err(|broken| {
            ApiError::Invalid(
                broken
                    .into_iter()
                    .map(|violation| {
                        FieldError::new(
                            violation.field,
                            violation.error.rule,
                            violation.error.message,
                        )
                    })
                    .collect(),
            )
        })
    }
}

impl ItemDto {
    fn into_item(self, index: usize, violations: &mut Violations) -> Option<PriceItem> {
        let field = |name: &str| format!("items[{index}].{name}");
        let code = violations.check(field("code"), ItemCode::parse(&self.code));
        let description = violations.check(
            field("description"),
            ItemDescription::parse(&self.description),
        );
        let amount_minor = self.amount_minor;
        // The field a kind does not take must be absent: a list that says more than it means
        // is refused rather than read in part.
        let mut not_for = |name: &str, present: bool| {
            if present {
                violations.add(
                    field(name),
                    "price_list.field_for_kind",
                    format!("a {} item has no {name}", self.kind),
                );
            }
        };
        match self.kind.as_str() {
            "service" => {
                not_for("facility_kind", self.facility_kind.is_some());
                let service_type = required(violations, field("service_type"), self.service_type)
                    .and_then(|value| {
                        violations.check(
                            field("service_type"),
                            parse_variant::<ServiceType>(
                                &value,
                                "service_type.one_of",
                                "burial, cremation, memorial, viewing",
                            ),
                        )
                    });
                Some(PriceItem::Service {
                    code: code?,
                    description: description?,
                    service_type: service_type?,
                    amount_minor,
                })
            }
            "facility_hour" => {
                not_for("service_type", self.service_type.is_some());
                let facility_kind =
                    required(violations, field("facility_kind"), self.facility_kind).and_then(
                        |value| {
                            violations.check(
                                field("facility_kind"),
                                parse_variant::<FacilityKind>(
                                    &value,
                                    "facility_kind.one_of",
                                    "chapel, crematorium, graveside, reception_hall",
                                ),
                            )
                        },
                    );
                Some(PriceItem::FacilityHour {
                    code: code?,
                    description: description?,
                    facility_kind: facility_kind?,
                    amount_minor,
                })
            }
            "add_on" => {
                not_for("service_type", self.service_type.is_some());
                not_for("facility_kind", self.facility_kind.is_some());
                Some(PriceItem::AddOn {
                    code: code?,
                    description: description?,
                    amount_minor,
                })
            }
            _ => {
                violations.add(
                    field("kind"),
                    "price_item.kind",
                    "one of service, facility_hour, add_on",
                );
                None
            }
        }
    }
}

fn required(violations: &mut Violations, field: String, value: Option<String>) -> Option<String> {
    if value.is_none() {
        violations.add(field, "required", "required for this kind of item");
    }
    value
}

/// The home a staff caller may not act for answers 404, as an unknown one does
/// (docs/identity.md, "Tenancy"); a family may read any home's list.
fn require_home(caller: &Caller, home: Uuid) -> Result<(), ApiError> {
    if caller.role == Role::Family || caller.acts_for(home) {
        Ok(())
    } else {
        Err(ApiError::NotFound {
            field: "home_id",
            id: home,
        })
    }
}

fn unavailable(error: &crate::pricing::PricingError) -> ApiError {
    tracing::error!(%error, "the price lists are unavailable");
    ApiError::Problem(
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "Service unavailable",
        )
        .with_detail("the price lists cannot be read now; retry"),
    )
}

/// Publish a new version of the home's price list (a director of the home, or a group
/// administrator). It prices bookings asked for from now on; bookings already made keep their
/// statements. Publishing the current list again changes nothing and answers its version.
/// `If-Match: "<version>"` publishes only over that version (`"0"`: only if none is published).
#[utoipa::path(
    put,
    path = "/homes/{home_id}/price-list",
    tag = "price lists",
    request_body = PriceListBody,
    params(("home_id" = Uuid, Path, description = "The funeral home")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "ListVersion (or the current version already)", body = PriceListView),
        (status = 404, description = "Not a home the caller acts for", body = platform::problem::Problem, content_type = "application/problem+json"),
        (status = 409, description = "Another publish of this home won; re-read and retry", body = platform::problem::Problem, content_type = "application/problem+json"),
        (status = 412, description = "If-Match names another version than the current one", body = platform::problem::Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn publish(
    State(state): State<AppState>,
    ValidPath(home): ValidPath<Uuid>,
    request: WriteRequest<PriceListBody, Directors>,
) -> Result<Response, ApiError> {
    require_home(&request.caller, home)?;
    let list = request.body.into_list()?;
    let if_match = request
        .if_match
        .map(|version| u32::try_from(version).unwrap_or(u32::MAX));
    let publication = state
        .price_lists
        .publish(home, &list, if_match, &request.caller.subject)
        .await
        .map_err(|error| unavailable(&error))?;
    let published = match publication {
        Publication::New(published) | Publication::Unchanged(published) => published,
        Publication::VersionMismatch { current } => {
            return Err(ApiError::Problem(
                Problem::new(
                    StatusCode::PRECONDITION_FAILED,
                    "version-mismatch",
                    "Version mismatch",
                )
                .with_detail(format!("the current version is {current}"))
                .with_errors(vec![FieldError::new(
                    "If-Match",
                    "version.current",
                    format!("the current version is {current}"),
                )]),
            ));
        }
        Publication::Raced => {
            return Err(ApiError::Problem(
                Problem::new(
                    StatusCode::CONFLICT,
                    "concurrent-modification",
                    "Concurrent modification",
                )
                .with_detail("another version was published at the same moment; re-read and retry"),
            ));
        }
    };
    let response = (StatusCode::OK, Json(PriceListView::from(published))).into_response();
    Ok(metrics::mark(CommandOutcome::Accepted, response))
}

/// The current version of a home's price list: for its directors, group administrators, ops,
/// and any family (a home gives its price list to whoever asks).
#[utoipa::path(
    get,
    path = "/homes/{home_id}/price-list",
    tag = "price lists",
    params(("home_id" = Uuid, Path, description = "The funeral home")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The current version", body = PriceListView),
        (status = 404, description = "No list published, or not a home the caller acts for", body = platform::problem::Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn current(
    State(state): State<AppState>,
    ValidPath(home): ValidPath<Uuid>,
    caller: Caller,
    headers: HeaderMap,
) -> Result<Json<PriceListView>, ApiError> {
    caller.require(Readers::ALLOWED)?;
    check_flow_headers(&headers)?;
    require_home(&caller, home)?;
    let published = state
        .price_lists
        .current(home)
        .await
        .map_err(|error| unavailable(&error))?;
    published
        .map(|published| Json(PriceListView::from(published)))
        .ok_or(ApiError::NotFound {
            field: "home_id",
            id: home,
        })
}

/// Reading a price list: every role.
#[derive(Debug)]
pub(crate) struct Readers;
impl super::Roles for Readers {
    const ALLOWED: &'static [Role] = &[Role::Director, Role::Family, Role::Ops, Role::System];
}
