//! `POST /bookings`: a family (or a director for them) asks for a service; its lifecycle; and
//! the booking's personal data: `POST /bookings/{id}/erase` and `GET /bookings/{id}/personal-data`
//! (docs/privacy.md).

use axum::{
    Json,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::Response,
};
use chrono::{NaiveDate, Utc};
use domain::{
    ValueError,
    booking::{
        Booking, BookingCommand, Deceased, FacilitySchedule, FamilyContact, MAX_FAMILY_CONTACTS,
        OpenBookings, PersonalData, SealedPersonal,
    },
    facility::Facility,
    pricing::{Adjustment, ItemCode, PriceListRef, PricingRequest, Statement},
    values::{
        BookingId, EmailAddress, FacilityId, FacilityKind, PersonName, PhoneNumber, Relationship,
        ServiceType, Slot,
    },
};
use platform::{
    auth::Caller,
    path::ValidPath,
    problem::{FieldError, Problem},
};
use privacy::Opened;
use schemas::Role;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::{
    AppState, Bookers, Cancellers, Empty, Erasers, Services, Violations, WriteRequest,
    check_flow_headers, parse_variant, reason_text, require_booking, written,
};
use crate::{commands::CommandError, error::ApiError, pricing::ListVersion};

/// A booking request.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RequestBooking {
    facility_id: Uuid,
    #[schema(schema_with = super::schema::service_types)]
    service_type: String,
    slot: SlotDto,
    deceased: DeceasedDto,
    /// Everyone to tell; 1 to 10 (each is mailed).
    #[schema(min_items = 1, max_items = 10)]
    family_contacts: Vec<ContactDto>,
    /// Codes of the home's `add_on` items (its price list): at most 10, no repeats. There is no
    /// price to send: the server prices the booking from the home's list (docs/pricing.md).
    #[serde(default)]
    #[schema(max_items = 10, example = json!(["celebrant"]))]
    add_ons: Vec<String>,
    /// A director's discounts (negative) and other adjustments, each with its reason; at most 5.
    /// A family's request with adjustments is refused (403).
    #[serde(default)]
    #[schema(max_items = 5)]
    adjustments: Vec<AdjustmentDto>,
}

/// A director's adjustment of a booking's price.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AdjustmentDto {
    /// Minor units, signed: a discount is negative; not zero.
    #[schema(example = -10_000, minimum = -10_000_000_000_i64, maximum = 10_000_000_000_i64)]
    amount_minor: i64,
    #[schema(example = "Hardship discount", min_length = 1, max_length = 500)]
    reason: String,
}

/// Start and end, RFC 3339 with an offset.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SlotDto {
    #[schema(example = "2027-03-02T10:00:00+00:00", format = DateTime)]
    pub(crate) start: String,
    #[schema(example = "2027-03-02T11:00:00+00:00", format = DateTime)]
    pub(crate) end: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeceasedDto {
    #[schema(example = "Ada Lovelace", min_length = 1, max_length = 200)]
    full_name: String,
    /// YYYY-MM-DD, not after the service.
    #[schema(example = "2027-02-20", format = Date)]
    date_of_death: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ContactDto {
    #[schema(example = "Byron King", min_length = 1, max_length = 200)]
    name: String,
    #[schema(example = "son", min_length = 1, max_length = 200)]
    relationship: String,
    #[schema(example = "byron@example.org", format = Email, max_length = 254)]
    email: String,
    /// E.164: `+`, the country code and 8 to 15 digits in all.
    #[schema(example = "+447700900123", pattern = r"^\+[1-9][0-9]{7,14}$")]
    phone: Option<String>,
}

/// Answer to booking writes (`202` to `POST /bookings`: the saga goes on asynchronously).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct BookingWritten {
    booking_id: Uuid,
    version: u64,
    consistency_token: Option<String>,
}

impl RequestBooking {
    fn into_command(
        self,
        booking_id: BookingId,
        facility: FacilitySchedule,
        pricing: &Pricing,
    ) -> Result<BookingCommand, ApiError> {
        let mut violations = Violations::default();
        let service_type = violations.check(
            "service_type",
            parse_variant::<ServiceType>(
                &self.service_type,
                "service_type.one_of",
                "burial, cremation, memorial, viewing",
            ),
        );
        let slot = violations.check("slot", Slot::parse(&self.slot.start, &self.slot.end));
        let full_name = violations.check(
            "deceased.full_name",
            PersonName::parse(&self.deceased.full_name),
        );
        let date_of_death = violations.check(
            "deceased.date_of_death",
            NaiveDate::parse_from_str(&self.deceased.date_of_death, "%Y-%m-%d").map_err(|_| {
                ValueError {
                    rule: "date.iso8601",
                    message: "must be a date as YYYY-MM-DD".to_owned(),
                }
            }),
        );
        let contact_count = self.family_contacts.len();
        if self.family_contacts.is_empty() {
            violations.add(
                "family_contacts",
                "family_contacts.non_empty",
                "at least one family contact is required",
            );
        }
        if contact_count > MAX_FAMILY_CONTACTS {
            violations.add(
                "family_contacts",
                "family_contacts.max_items",
                format!("at most {MAX_FAMILY_CONTACTS} family contacts"),
            );
        }
        let contacts: Vec<_> = self
            .family_contacts
            .into_iter()
            .enumerate()
            .filter_map(|(index, contact)| {
                let field = |name: &str| format!("family_contacts[{index}].{name}");
                let name = violations.check(field("name"), PersonName::parse(&contact.name));
                let relationship = violations.check(
                    field("relationship"),
                    Relationship::parse(&contact.relationship),
                );
                let email = violations.check(field("email"), EmailAddress::parse(&contact.email));
                let phone = match contact.phone.as_deref() {
                    None => Some(None),
                    Some(phone) => violations
                        .check(field("phone"), PhoneNumber::parse(phone))
                        .map(Some),
                };
                Some(FamilyContact {
                    name: name?,
                    relationship: relationship?,
                    email: email?,
                    phone: phone?,
                })
            })
            .collect();
        let (add_ons, adjustments, priced_parts_valid) =
            priced_parts(&self.add_ons, &self.adjustments, &mut violations);
        // An invalid contact was recorded as a violation and is missing from `contacts`.
        let contacts_valid =
            (1..=MAX_FAMILY_CONTACTS).contains(&contact_count) && contacts.len() == contact_count;
        match (service_type, slot, full_name, date_of_death) {
            (Some(service_type), Some(slot), Some(full_name), Some(date_of_death))
                if contacts_valid && priced_parts_valid =>
            {
                let statement = pricing.statement(service_type, &slot, &add_ons, adjustments)?;
                // Sealed by the handler (`seal_personal`) before the command is decided: the
                // plaintext never reaches the log.
                let personal = SealedPersonal::Legacy {
                    plaintext: PersonalData {
                        deceased_full_name: full_name.clone(),
                        family_contacts: contacts.clone(),
                    },
                };
                Ok(BookingCommand::Request {
                    booking_id,
                    facility,
                    service_type,
                    slot,
                    deceased: Deceased {
                        full_name,
                        date_of_death,
                    },
                    family_contacts: contacts,
                    personal,
                    statement,
                    now: Utc::now(),
                })
            }
            _ => Err(violations.into_error()),
        }
    }
}

/// The add-ons' codes and the adjustments of a request, and whether every one was valid (each
/// invalid one is recorded in `violations`, named by its index).
fn priced_parts(
    add_ons: &[String],
    adjustments: &[AdjustmentDto],
    violations: &mut Violations,
) -> (Vec<ItemCode>, Vec<Adjustment>, bool) {
    let codes: Vec<ItemCode> = add_ons
        .iter()
        .enumerate()
        .filter_map(|(index, code)| {
            violations.check(format!("add_ons[{index}]"), ItemCode::parse(code))
        })
        .collect();
    let parsed: Vec<Adjustment> = adjustments
        .iter()
        .enumerate()
        .filter_map(|(index, adjustment)| {
            match Adjustment::new(adjustment.amount_minor, &adjustment.reason) {
                Ok(adjustment) => Some(adjustment),
                Err((field, error)) => {
                    violations.add(
                        format!("adjustments[{index}].{field}"),
                        error.rule,
                        error.message,
                    );
                    None
                }
            }
        })
        .collect();
    let valid = codes.len() == add_ons.len() && parsed.len() == adjustments.len();
    (codes, parsed, valid)
}

/// Why a booking is cancelled, rejected or failed.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Reason {
    #[schema(
        example = "The family asked for another date",
        min_length = 1,
        max_length = 500
    )]
    reason: String,
}

/// A cancellation; the reason is optional, and so is the body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Cancellation {
    #[serde(default)]
    #[schema(min_length = 1, max_length = 500)]
    reason: Option<String>,
}

/// Request a booking. The saga then holds the slot, takes payment and confirms, asynchronously.
#[utoipa::path(
    post,
    path = "/bookings",
    tag = "bookings",
    request_body = RequestBooking,
    security(("bearer" = [])),
    responses(
        (status = 202, description = "Accepted; the saga runs on", body = BookingWritten),
        (status = 404, description = "Unknown facility", body = platform::problem::Problem, content_type = "application/problem+json"),
        (status = 403, description = "A family sent `adjustments` (`adjustments.director_only`): only a director adjusts a price", body = platform::problem::Problem, content_type = "application/problem+json"),
        (status = 409, description = "A booking with this id exists (an Idempotency-Key reused after it was forgotten), the family already holds as many open bookings as it may (`booking.open_bookings_limit`), or the facility's home has published no price list (`price_list.not_published`)", body = platform::problem::Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn request(
    State(state): State<AppState>,
    request: WriteRequest<RequestBooking, Bookers>,
) -> Result<Response, ApiError> {
    let facility_id = request.body.facility_id;
    // Another home's facility is unknown to a director (docs/identity.md, "Tenancy").
    super::require_facility(&state, &request.caller, "facility_id", facility_id)?;
    let facility = state.commands.store().read::<Facility>(facility_id);
    let Some(profile) = facility.state.profile() else {
        return Err(ApiError::NotFound {
            field: "facility_id",
            id: facility_id,
        });
    };
    let schedule = FacilitySchedule {
        facility_id: FacilityId::from_uuid(facility_id),
        time_zone: profile.time_zone,
        opening_hours: profile.opening_hours.clone(),
    };
    // The price is the home's to set, never the family's (docs/pricing.md, docs/security.md API3).
    if request.caller.role == Role::Family && !request.body.adjustments.is_empty() {
        return Err(ApiError::Problem(
            Problem::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden")
                .with_detail("only a funeral director may adjust a booking's price")
                .with_errors(vec![FieldError::new(
                    "adjustments",
                    "adjustments.director_only",
                    "only a funeral director may adjust a booking's price",
                )]),
        ));
    }
    let home = profile
        .funeral_home_id
        .map_or(state.tenancy.default_home, |home| *home.as_uuid());
    let pricing = Pricing {
        list: current_price_list(&state, home).await?,
        facility_kind: profile.kind,
    };
    let booking_id = request.context.new_aggregate_id("booking");
    let mut command =
        request
            .body
            .into_command(BookingId::from_uuid(booking_id), schedule, &pricing)?;
    // A family holds at most so many open bookings (docs/security.md, API6); a director books
    // for many families and is not counted. A retry of a request that created its booking is
    // answered from the first outcome, whatever the count now.
    let _family_turn = match (request.caller.role, state.limits.open_bookings_per_family) {
        (Role::Family, Some(limit)) => {
            let turn = state.commands.family_turn(&request.caller.subject).await;
            let store = state.commands.store();
            if store.read::<Booking>(booking_id).version == 0 {
                let held = store.open_bookings_of(&request.caller.subject, Utc::now());
                OpenBookings { held, limit }
                    .check_one_more()
                    .map_err(CommandError::from)?;
            }
            Some(turn)
        }
        _ => None,
    };
    // Sealed only once the request may go ahead: a refused one leaves no data key behind.
    seal_personal(&state, booking_id, &mut command).await?;
    let executed = state
        .commands
        .execute::<Booking>(booking_id, None, command, &request.context)
        .await?;
    Ok(written(
        StatusCode::ACCEPTED,
        "booking_id",
        &executed.appended,
    ))
}

/// What a request is priced with: the home's current list and the kind of facility booked.
struct Pricing {
    list: ListVersion,
    facility_kind: FacilityKind,
}

impl Pricing {
    /// The request's statement, from the list (a refusal names the field it concerns).
    fn statement(
        &self,
        service_type: ServiceType,
        slot: &Slot,
        add_ons: &[ItemCode],
        adjustments: Vec<Adjustment>,
    ) -> Result<Statement, ApiError> {
        let reference = PriceListRef {
            home_id: self.list.home,
            version: self.list.version,
        };
        let request = PricingRequest {
            service_type,
            facility_kind: self.facility_kind,
            slot,
            add_ons,
            adjustments,
        };
        Ok(self
            .list
            .list
            .price(reference, request)
            .map_err(CommandError::from)?)
    }
}

/// The home's current price list; a home that has published none cannot be booked (409 on
/// `facility_id`: the facility exists, its home is not ready to take bookings).
async fn current_price_list(state: &AppState, home: Uuid) -> Result<ListVersion, ApiError> {
    let current = state.price_lists.current(home).await.map_err(|error| {
        tracing::error!(%error, "the price lists are unavailable");
        ApiError::Problem(
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Service unavailable",
            )
            .with_detail("the home's price list cannot be read now; retry"),
        )
    })?;
    current.ok_or_else(|| {
        ApiError::Problem(
            Problem::new(
                StatusCode::CONFLICT,
                "conflict",
                "Not allowed in the current state",
            )
            .with_detail("the facility's funeral home has not published a price list")
            .with_errors(vec![FieldError::new(
                "facility_id",
                "price_list.not_published",
                "the facility's funeral home has not published a price list",
            )]),
        )
    })
}

/// Seals a request's personal data under the booking's data key (made now, stored wrapped in
/// `privacy.data_keys` before the event is appended; a retry gets the same key). A request the
/// domain then refuses leaves a key that no event names, which holds nothing.
async fn seal_personal(
    state: &AppState,
    booking_id: uuid::Uuid,
    command: &mut BookingCommand,
) -> Result<(), ApiError> {
    if let BookingCommand::Request { personal, .. } = command
        && let SealedPersonal::Legacy { plaintext } = personal
    {
        *personal = state.keys.seal(booking_id, plaintext).await?;
    }
    Ok(())
}

/// Why personal data is erased; optional, and so is the body. Never personal data itself.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Erasure {
    #[serde(default)]
    #[schema(example = "the family asked", min_length = 1, max_length = 500)]
    reason: Option<String>,
}

/// Erase the booking's personal data: the deceased's name and every contact's name,
/// relationship, e-mail and phone. Its data key is destroyed, then `PersonalDataErased` is
/// recorded; from then on every reader shows those fields as erased and no letter goes to its
/// contacts. Nothing else about the booking changes. Erasing again answers 200 and changes
/// nothing. For directors and ops (and the saga runner's retention rule, with a `system` token).
#[utoipa::path(
    post,
    path = "/bookings/{id}/erase",
    tag = "bookings",
    request_body(content = Erasure, description = "Optional"),
    params(("id" = Uuid, Path, description = "The booking id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Erased (or already erased)", body = BookingWritten),
        (status = 404, description = "No such booking", body = platform::problem::Problem, content_type = "application/problem+json"),
        (status = 503, description = "The key store or the log is unavailable; retry (an erasure is completed by its retry)", body = platform::problem::Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn erase(
    State(state): State<AppState>,
    ValidPath(id): ValidPath<Uuid>,
    request: WriteRequest<Erasure, Erasers>,
) -> Result<Response, ApiError> {
    require_booking(&state, &request.caller, id)?;
    let reason = request
        .body
        .reason
        .as_deref()
        .map(reason_text)
        .transpose()?;
    // The key first: once it is gone the data is erased, whatever happens next. A crash before
    // the event is completed by the retry (or by the sweep at start, `crate::erasure`).
    state.keys.erase(id).await?;
    let command = BookingCommand::ErasePersonalData { reason };
    lifecycle(&state, id, None, command, &request.context).await
}

/// What the system holds about a booking's people (`GET /bookings/{id}/personal-data`).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct PersonalDataExport {
    booking_id: Uuid,
    /// Whether the data was erased; then `deceased.full_name` and `family_contacts` are absent.
    erased: bool,
    deceased: DeceasedExport,
    family_contacts: Option<Vec<ContactExport>>,
    /// Where copies of this data live (docs/privacy.md).
    held_in: Vec<&'static str>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DeceasedExport {
    full_name: Option<String>,
    date_of_death: NaiveDate,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ContactExport {
    name: String,
    relationship: String,
    email: String,
    phone: Option<String>,
}

/// Where a booking's personal data is kept, for the export (docs/privacy.md).
const HELD_IN: &[&str] = &[
    "event log: BookingRequested, encrypted under the booking's data key",
    "privacy.data_keys: the booking's data key, wrapped by a master key",
    "read model: the booking's row (deceased, family_contacts)",
    "saga: the booking's facts (encrypted, opened when a letter is sent)",
    "mail: letters sent to the family contacts",
];

/// Export the booking's personal data, decrypted, with where each copy lives. For directors and
/// ops.
#[utoipa::path(
    get,
    path = "/bookings/{id}/personal-data",
    tag = "bookings",
    params(("id" = Uuid, Path, description = "The booking id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "What is held about the booking's people", body = PersonalDataExport),
        (status = 404, description = "No such booking", body = platform::problem::Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn personal_data(
    State(state): State<AppState>,
    ValidPath(id): ValidPath<Uuid>,
    caller: Caller,
    headers: HeaderMap,
) -> Result<Json<PersonalDataExport>, ApiError> {
    caller.require(<super::Exporters as super::Roles>::ALLOWED)?;
    check_flow_headers(&headers)?;
    require_booking(&state, &caller, id)?;
    let stream = state.commands.store().read::<Booking>(id);
    let Some(details) = stream.state.details() else {
        return Err(ApiError::NotFound { field: "id", id });
    };
    let opened = if stream.state.personal_data_erased() {
        Opened::Erased
    } else {
        state.keys.open(id, &details.personal).await?
    };
    let personal = opened.personal();
    Ok(Json(PersonalDataExport {
        booking_id: id,
        erased: personal.is_none(),
        deceased: DeceasedExport {
            full_name: personal
                .as_ref()
                .map(|p| p.deceased_full_name.as_str().to_owned()),
            date_of_death: details.date_of_death,
        },
        family_contacts: personal.map(|p| {
            p.family_contacts
                .into_iter()
                .map(|c| ContactExport {
                    name: c.name.as_str().to_owned(),
                    relationship: c.relationship.as_str().to_owned(),
                    email: c.email.as_str().to_owned(),
                    phone: c.phone.map(|phone| phone.as_str().to_owned()),
                })
                .collect()
        }),
        held_in: HELD_IN.to_vec(),
    }))
}

/// Cancel a booking before its service starts. A family may cancel only its own bookings: those
/// it requested, or the one its family session (`POST /family-sessions`) names, while the
/// invitation is not revoked.
/// After confirmation the saga then refunds and releases the slot.
#[utoipa::path(
    post,
    path = "/bookings/{id}/cancel",
    tag = "bookings",
    request_body(content = Cancellation, description = "Optional"),
    params(
        ("id" = Uuid, Path, description = "The booking id"),
        ("If-Match" = Option<String>, Header, description = "The version (or ETag) you read: 412 if it is not the current one"),
    ),
    security(("bearer" = []), ("family_session" = [])),
    responses(
        (status = 200, description = "Cancelled (or already cancelled)", body = BookingWritten),
        (status = 404, description = "No such booking, or not yours (another booking than the session's, or a revoked invitation)", body = platform::problem::Problem, content_type = "application/problem+json"),
        (status = 409, description = "Not cancellable in its state, the service has started, or changed concurrently", body = platform::problem::Problem, content_type = "application/problem+json"),
        (status = 412, description = "If-Match is not the current version", body = platform::problem::Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn cancel(
    State(state): State<AppState>,
    ValidPath(id): ValidPath<Uuid>,
    request: WriteRequest<Cancellation, Cancellers>,
) -> Result<Response, ApiError> {
    match &request.session {
        // A family session: only its booking, and only while its invitation is live (read at
        // every write, so a revocation stops it at once).
        Some(session) => {
            let stream = state.commands.store().read::<Booking>(id);
            let live = session.may_see(id)
                && stream.owner.is_some()
                && state.invitations.is_live(session.invitation_id, id).await?;
            if !live {
                return Err(ApiError::NotFound { field: "id", id });
            }
        }
        None => require_booking(&state, &request.caller, id)?,
    }
    let reason = request
        .body
        .reason
        .as_deref()
        .map(reason_text)
        .transpose()?;
    let command = BookingCommand::Cancel {
        reason,
        now: Utc::now(),
    };
    let executed = state
        .commands
        .execute::<Booking>(id, request.if_match, command, &request.context)
        .await?;
    Ok(written(StatusCode::OK, "booking_id", &executed.appended))
}

async fn lifecycle(
    state: &AppState,
    id: Uuid,
    if_match: Option<u64>,
    command: BookingCommand,
    context: &crate::commands::CommandContext,
) -> Result<Response, ApiError> {
    let executed = state
        .commands
        .execute::<Booking>(id, if_match, command, context)
        .await?;
    Ok(written(StatusCode::OK, "booking_id", &executed.appended))
}

/// The facility holds the booking's slot (the saga's command).
#[utoipa::path(
    post,
    path = "/bookings/{id}/slot-held",
    tag = "internal",
    params(
        ("id" = Uuid, Path, description = "The booking id"),
        ("If-Match" = Option<String>, Header, description = "The version (or ETag) you read: 412 if it is not the current one"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Recorded (or already so)", body = BookingWritten),
        (status = 404, description = "No such booking", body = platform::problem::Problem, content_type = "application/problem+json"),
        (status = 409, description = "Not in a state that allows it, or changed concurrently", body = platform::problem::Problem, content_type = "application/problem+json"),
        (status = 412, description = "If-Match is not the current version", body = platform::problem::Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn mark_slot_held(
    State(state): State<AppState>,
    ValidPath(id): ValidPath<Uuid>,
    request: WriteRequest<Empty, Services>,
) -> Result<Response, ApiError> {
    lifecycle(
        &state,
        id,
        request.if_match,
        BookingCommand::MarkSlotHeld,
        &request.context,
    )
    .await
}

/// The booking is paid: confirm it (the saga's command).
#[utoipa::path(
    post,
    path = "/bookings/{id}/confirm",
    tag = "internal",
    params(
        ("id" = Uuid, Path, description = "The booking id"),
        ("If-Match" = Option<String>, Header, description = "The version (or ETag) you read: 412 if it is not the current one"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Confirmed (or already so)", body = BookingWritten),
        (status = 404, description = "No such booking", body = platform::problem::Problem, content_type = "application/problem+json"),
        (status = 409, description = "Not in a state that allows it, or changed concurrently", body = platform::problem::Problem, content_type = "application/problem+json"),
        (status = 412, description = "If-Match is not the current version", body = platform::problem::Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn confirm(
    State(state): State<AppState>,
    ValidPath(id): ValidPath<Uuid>,
    request: WriteRequest<Empty, Services>,
) -> Result<Response, ApiError> {
    lifecycle(
        &state,
        id,
        request.if_match,
        BookingCommand::Confirm,
        &request.context,
    )
    .await
}

/// The facility refused the slot: reject the booking (the saga's command).
#[utoipa::path(
    post,
    path = "/bookings/{id}/reject",
    tag = "internal",
    request_body = Reason,
    params(
        ("id" = Uuid, Path, description = "The booking id"),
        ("If-Match" = Option<String>, Header, description = "The version (or ETag) you read: 412 if it is not the current one"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Rejected (or already so)", body = BookingWritten),
        (status = 404, description = "No such booking", body = platform::problem::Problem, content_type = "application/problem+json"),
        (status = 409, description = "Not in a state that allows it, or changed concurrently", body = platform::problem::Problem, content_type = "application/problem+json"),
        (status = 412, description = "If-Match is not the current version", body = platform::problem::Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn reject(
    State(state): State<AppState>,
    ValidPath(id): ValidPath<Uuid>,
    request: WriteRequest<Reason, Services>,
) -> Result<Response, ApiError> {
    let command = BookingCommand::Reject {
        reason: reason_text(&request.body.reason)?,
    };
    lifecycle(&state, id, request.if_match, command, &request.context).await
}

/// Payment failed and the slot was released: fail the booking (the saga's command).
#[utoipa::path(
    post,
    path = "/bookings/{id}/fail",
    tag = "internal",
    request_body = Reason,
    params(
        ("id" = Uuid, Path, description = "The booking id"),
        ("If-Match" = Option<String>, Header, description = "The version (or ETag) you read: 412 if it is not the current one"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Failed (or already so)", body = BookingWritten),
        (status = 404, description = "No such booking", body = platform::problem::Problem, content_type = "application/problem+json"),
        (status = 409, description = "Not in a state that allows it, or changed concurrently", body = platform::problem::Problem, content_type = "application/problem+json"),
        (status = 412, description = "If-Match is not the current version", body = platform::problem::Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn fail(
    State(state): State<AppState>,
    ValidPath(id): ValidPath<Uuid>,
    request: WriteRequest<Reason, Services>,
) -> Result<Response, ApiError> {
    let command = BookingCommand::Fail {
        reason: reason_text(&request.body.reason)?,
    };
    lifecycle(&state, id, request.if_match, command, &request.context).await
}
