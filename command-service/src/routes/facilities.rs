//! Facility writes: register, change opening hours, and the saga's reserve/release of slots.

use axum::{extract::State, http::StatusCode, response::Response};
use chrono::Utc;
use domain::{
    ValueError,
    facility::{Facility, FacilityCommand, FacilityEvent},
    values::{
        BookingId, Capacity, FacilityId, FacilityKind, FacilityName, FuneralHomeId, OpeningHours,
        OpeningInterval, Slot, TimeZone, TurnaroundBuffer,
    },
};
use platform::{
    auth::{Caller, Homes},
    path::ValidPath,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::{AppState, Directors, Services, Violations, WriteRequest, parse_variant, written};
use crate::error::ApiError;

/// A facility to register.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RegisterFacility {
    #[schema(example = "St Mary's Chapel", min_length = 1, max_length = 200)]
    name: String,
    /// `chapel`, `crematorium`, `graveside` or `reception_hall`.
    #[schema(schema_with = super::schema::facility_kinds)]
    kind: String,
    #[schema(example = 120, minimum = 1, maximum = 10_000)]
    capacity: i64,
    /// IANA time zone name.
    #[schema(example = "Europe/London", min_length = 1)]
    time_zone: String,
    /// At least one interval; intervals of a day may not overlap.
    #[schema(min_items = 1)]
    opening_hours: Vec<OpeningHoursDto>,
    /// Minutes needed between two services.
    #[schema(example = 30, minimum = 0, maximum = 480)]
    turnaround_minutes: i64,
    /// The funeral home it belongs to (an id of the token's `fm_homes`/`fm_group_homes`); the
    /// caller must act for it. A director of exactly one home may leave it out.
    #[serde(default)]
    #[schema(example = "1a27795a-58ce-464e-b3b5-7f8349d9df39")]
    home: Option<Uuid>,
}

/// One weekday's opening interval, local to the facility.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct OpeningHoursDto {
    /// `mon`, `tue`, `wed`, `thu`, `fri`, `sat` or `sun`.
    #[schema(schema_with = super::schema::weekdays)]
    weekday: String,
    /// `HH:MM`, 24-hour clock, before `closes`.
    #[schema(example = "09:00", pattern = r"^([01][0-9]|2[0-3]):[0-5][0-9]$")]
    opens: String,
    #[schema(example = "17:00", pattern = r"^([01][0-9]|2[0-3]):[0-5][0-9]$")]
    closes: String,
}

/// New weekly opening hours.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ChangeOpeningHours {
    #[schema(min_items = 1)]
    opening_hours: Vec<OpeningHoursDto>,
}

/// A slot to hold for a booking (the saga's command).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReserveSlot {
    booking_id: Uuid,
    slot: super::bookings::SlotDto,
}

/// `201` answer to `POST /facilities`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct FacilityWritten {
    facility_id: Uuid,
    version: u64,
    consistency_token: Option<String>,
}

/// Answer to `POST /facilities/{id}/reservations`: the facility's decision is an event either
/// way, so both outcomes are `200`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ReservationWritten {
    facility_id: Uuid,
    version: u64,
    consistency_token: Option<String>,
    /// `reserved` or `rejected`.
    outcome: String,
    /// Why the slot was refused (`in_past`, `outside_opening_hours`, `overlaps_existing`).
    reason: Option<String>,
}

/// A JSON integer that must fit a `u32` before its own rules apply.
fn whole(value: i64, rule: &'static str) -> Result<u32, ValueError> {
    u32::try_from(value)
        .map_err(|_| ValueError::new(rule, "must be a whole number from 0 to 4294967295"))
}

fn parse_hours(dtos: &[OpeningHoursDto], violations: &mut Violations) -> Option<OpeningHours> {
    let intervals: Vec<_> = dtos
        .iter()
        .enumerate()
        .filter_map(|(index, hours)| {
            violations.check(
                format!("opening_hours[{index}]"),
                OpeningInterval::parse(&hours.weekday, &hours.opens, &hours.closes),
            )
        })
        .collect();
    if intervals.len() == dtos.len() {
        violations.check("opening_hours", OpeningHours::new(intervals))
    } else {
        None
    }
}

/// The home a new facility goes to: the one the request names, if the caller acts for it; else a
/// director's only home; else, for a caller of a deployment without tenants (a shared-secret
/// token acts for every home), the default home. Anything else is 422 on `home`: a home id is not
/// a resource of this API, so refusing it reveals nothing.
fn home_of(named: Option<Uuid>, caller: &Caller, default_home: Uuid) -> Result<Uuid, ApiError> {
    let mut violations = Violations::default();
    match named {
        Some(home) if caller.acts_for(home) => return Ok(home),
        Some(_) => violations.add("home", "home.not_yours", "you do not work for this home"),
        None => {
            if let Some(home) = caller.only_home() {
                return Ok(home);
            }
            if caller.homes == Homes::All {
                return Ok(default_home);
            }
            violations.add(
                "home",
                "home.required",
                "name the home: you work for more than one (or for none)",
            );
        }
    }
    Err(violations.into_error())
}

impl RegisterFacility {
    fn into_command(
        self,
        facility_id: FacilityId,
        home: Uuid,
    ) -> Result<FacilityCommand, ApiError> {
        let mut violations = Violations::default();
        let name = violations.check("name", FacilityName::parse(&self.name));
        let kind = violations.check(
            "kind",
            parse_variant::<FacilityKind>(
                &self.kind,
                "kind.one_of",
                "chapel, crematorium, graveside, reception_hall",
            ),
        );
        let capacity = violations.check(
            "capacity",
            whole(self.capacity, "capacity.range").and_then(Capacity::new),
        );
        let time_zone = violations.check("time_zone", TimeZone::parse(&self.time_zone));
        let opening_hours = parse_hours(&self.opening_hours, &mut violations);
        let turnaround = violations.check(
            "turnaround_minutes",
            whole(self.turnaround_minutes, "turnaround.range")
                .and_then(TurnaroundBuffer::from_minutes),
        );
        match (name, kind, capacity, time_zone, opening_hours, turnaround) {
            (
                Some(name),
                Some(kind),
                Some(capacity),
                Some(time_zone),
                Some(opening_hours),
                Some(turnaround),
            ) => Ok(FacilityCommand::Register {
                facility_id,
                name,
                kind,
                capacity,
                time_zone,
                opening_hours,
                turnaround,
                funeral_home_id: Some(FuneralHomeId::from_uuid(home)),
            }),
            _ => Err(violations.into_error()),
        }
    }
}

/// Register a facility.
#[utoipa::path(
    post,
    path = "/facilities",
    tag = "facilities",
    request_body = RegisterFacility,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Registered", body = FacilityWritten),
        (status = 422, description = "A field or header breaks a rule (each is named with the rule), the Idempotency-Key was used for another request, or `home` is missing (you work for several homes) or not yours", body = platform::problem::Problem, content_type = "application/problem+json"),
        (status = 409, description = "A facility with this id exists (an Idempotency-Key reused after it was forgotten)", body = platform::problem::Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn register(
    State(state): State<AppState>,
    request: WriteRequest<RegisterFacility, Directors>,
) -> Result<Response, ApiError> {
    let home = home_of(
        request.body.home,
        &request.caller,
        state.tenancy.default_home,
    )?;
    let facility_id = request.context.new_aggregate_id("facility");
    let command = request
        .body
        .into_command(FacilityId::from_uuid(facility_id), home)?;
    let executed = state
        .commands
        .execute::<Facility>(facility_id, None, command, &request.context)
        .await?;
    Ok(written(
        StatusCode::CREATED,
        "facility_id",
        &executed.appended,
    ))
}

/// Replace a facility's weekly opening hours. Existing reservations are kept.
#[utoipa::path(
    put,
    path = "/facilities/{id}/opening-hours",
    tag = "facilities",
    request_body = ChangeOpeningHours,
    params(
        ("id" = Uuid, Path, description = "The facility id"),
        ("If-Match" = Option<String>, Header, description = "The version (or ETag) you read: 412 if it is not the current one"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Changed", body = FacilityWritten),
        (status = 404, description = "No such facility, or one of a home you do not work for", body = platform::problem::Problem, content_type = "application/problem+json"),
        (status = 409, description = "Changed concurrently: re-read and retry", body = platform::problem::Problem, content_type = "application/problem+json"),
        (status = 412, description = "If-Match is not the current version", body = platform::problem::Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn change_opening_hours(
    State(state): State<AppState>,
    ValidPath(id): ValidPath<Uuid>,
    request: WriteRequest<ChangeOpeningHours, Directors>,
) -> Result<Response, ApiError> {
    // Another home's facility is unknown to a director (docs/identity.md, "Tenancy").
    super::require_facility(&state, &request.caller, "id", id)?;
    let mut violations = Violations::default();
    let Some(opening_hours) = parse_hours(&request.body.opening_hours, &mut violations) else {
        return Err(violations.into_error());
    };
    let command = FacilityCommand::ChangeOpeningHours { opening_hours };
    let executed = state
        .commands
        .execute::<Facility>(id, request.if_match, command, &request.context)
        .await?;
    Ok(written(StatusCode::OK, "facility_id", &executed.appended))
}

/// Hold a slot for a booking (the booking saga's command). A refusal is recorded as a
/// `SlotRejected` event and answered `200` with `outcome: rejected`.
#[utoipa::path(
    post,
    path = "/facilities/{id}/reservations",
    tag = "internal",
    request_body = ReserveSlot,
    params(
        ("id" = Uuid, Path, description = "The facility id"),
        ("If-Match" = Option<String>, Header, description = "The version (or ETag) you read: 412 if it is not the current one"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Decided: reserved or rejected", body = ReservationWritten),
        (status = 404, description = "No such facility", body = platform::problem::Problem, content_type = "application/problem+json"),
        (status = 409, description = "Changed concurrently, or the booking holds another slot", body = platform::problem::Problem, content_type = "application/problem+json"),
        (status = 412, description = "If-Match is not the current version", body = platform::problem::Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn reserve_slot(
    State(state): State<AppState>,
    ValidPath(id): ValidPath<Uuid>,
    request: WriteRequest<ReserveSlot, Services>,
) -> Result<Response, ApiError> {
    let mut violations = Violations::default();
    let slot = &request.body.slot;
    let Some(slot) = violations.check("slot", Slot::parse(&slot.start, &slot.end)) else {
        return Err(violations.into_error());
    };
    let booking_id = BookingId::from_uuid(request.body.booking_id);
    let command = FacilityCommand::ReserveSlot {
        booking_id,
        slot,
        now: Utc::now(),
    };
    let executed = state
        .commands
        .execute::<Facility>(id, request.if_match, command, &request.context)
        .await?;
    // A redelivered reserve decides nothing; the slot is then held from the first time.
    let reason = executed.events.iter().find_map(|event| match event {
        FacilityEvent::SlotRejected { reason, .. } => Some(reason.to_string()),
        _ => None,
    });
    let held = state
        .commands
        .store()
        .read::<Facility>(id)
        .state
        .reservation(booking_id)
        .is_some();
    let body = ReservationWritten {
        facility_id: id,
        version: executed.appended.version,
        consistency_token: super::token_of(&executed.appended),
        outcome: if held { "reserved" } else { "rejected" }.to_owned(),
        reason,
    };
    Ok(super::with_token(StatusCode::OK, &executed.appended, &body))
}

/// Give a booking's slot back (the saga's compensation). Releasing a slot that is not held is a
/// no-op answered `200`.
#[utoipa::path(
    post,
    path = "/facilities/{id}/reservations/{booking_id}/release",
    tag = "internal",
    params(
        ("id" = Uuid, Path, description = "The facility id"),
        ("booking_id" = Uuid, Path, description = "The booking holding the slot"),
        ("If-Match" = Option<String>, Header, description = "The version (or ETag) you read: 412 if it is not the current one"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Released, or was not held", body = FacilityWritten),
        (status = 404, description = "No such facility", body = platform::problem::Problem, content_type = "application/problem+json"),
        (status = 409, description = "Changed concurrently: re-read and retry", body = platform::problem::Problem, content_type = "application/problem+json"),
        (status = 412, description = "If-Match is not the current version", body = platform::problem::Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn release_slot(
    State(state): State<AppState>,
    ValidPath((id, booking_id)): ValidPath<(Uuid, Uuid)>,
    request: WriteRequest<super::Empty, Services>,
) -> Result<Response, ApiError> {
    let command = FacilityCommand::ReleaseSlot {
        booking_id: BookingId::from_uuid(booking_id),
    };
    let executed = state
        .commands
        .execute::<Facility>(id, request.if_match, command, &request.context)
        .await?;
    Ok(written(StatusCode::OK, "facility_id", &executed.appended))
}
