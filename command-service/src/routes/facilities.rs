//! `POST /facilities`: register a facility.

use axum::{Json, extract::State, http::StatusCode, response::IntoResponse};
use domain::{
    ValueError,
    facility::{Facility, FacilityCommand},
    values::{
        Capacity, FacilityId, FacilityKind, FacilityName, OpeningHours, OpeningInterval, TimeZone,
        TurnaroundBuffer,
    },
};
use platform::{auth::Caller, json::ValidJson};
use schemas::Role;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::{Violations, parse_variant, token_of};
use crate::{commands::metadata_for_request, error::ApiError, startup::AppState};

/// A facility to register.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RegisterFacility {
    #[schema(example = "St Mary's Chapel")]
    name: String,
    /// `chapel`, `crematorium`, `graveside` or `reception_hall`.
    #[schema(example = "chapel")]
    kind: String,
    #[schema(example = 120)]
    capacity: i64,
    /// IANA time zone name.
    #[schema(example = "Europe/London")]
    time_zone: String,
    opening_hours: Vec<OpeningHoursDto>,
    /// Minutes needed between two services.
    #[schema(example = 30)]
    turnaround_minutes: i64,
}

/// One weekday's opening interval, local to the facility.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct OpeningHoursDto {
    /// mon, tue, wed, thu, fri, sat or sun.
    #[schema(example = "mon")]
    weekday: String,
    #[schema(example = "09:00")]
    opens: String,
    #[schema(example = "17:00")]
    closes: String,
}

/// `201` answer to `POST /facilities`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct FacilityRegistered {
    facility_id: Uuid,
    version: u64,
    consistency_token: Option<String>,
}

impl RegisterFacility {
    fn into_command(self, facility_id: FacilityId) -> Result<FacilityCommand, ApiError> {
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
        let intervals: Vec<_> = self
            .opening_hours
            .iter()
            .enumerate()
            .filter_map(|(index, hours)| {
                violations.check(
                    format!("opening_hours[{index}]"),
                    OpeningInterval::parse(&hours.weekday, &hours.opens, &hours.closes),
                )
            })
            .collect();
        let opening_hours = if intervals.len() == self.opening_hours.len() {
            violations.check("opening_hours", OpeningHours::new(intervals))
        } else {
            None
        };
        let turnaround = violations.check(
            "turnaround_minutes",
            whole(self.turnaround_minutes, "turnaround.range")
                .and_then(TurnaroundBuffer::from_minutes),
        );
        violations.finish()?;
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
            }),
            _ => unreachable!("every None recorded a violation"),
        }
    }
}

/// A JSON integer that must fit a `u32` before its own rules apply.
fn whole(value: i64, rule: &'static str) -> Result<u32, ValueError> {
    u32::try_from(value)
        .map_err(|_| ValueError::new(rule, "must be a whole number from 0 to 4294967295"))
}

/// Register a facility.
#[utoipa::path(
    post,
    path = "/facilities",
    tag = "facilities",
    request_body = RegisterFacility,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Registered", body = FacilityRegistered),
        (status = 400, description = "Malformed JSON", body = platform::problem::Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid bearer token", body = platform::problem::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not a director", body = platform::problem::Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field breaks a rule", body = platform::problem::Problem, content_type = "application/problem+json"),
        (status = 503, description = "Broker unavailable", body = platform::problem::Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn register(
    State(state): State<AppState>,
    caller: Caller,
    ValidJson(body): ValidJson<RegisterFacility>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(&[Role::Director])?;
    let facility_id = FacilityId::new();
    let command = body.into_command(facility_id)?;
    let metadata = metadata_for_request(caller.actor(), Uuid::new_v4());
    let appended = state
        .commands
        .execute::<Facility>(*facility_id.as_uuid(), None, command, &metadata)
        .await?;
    let (headers, consistency_token) = token_of(&appended);
    let body = FacilityRegistered {
        facility_id: *facility_id.as_uuid(),
        version: appended.version,
        consistency_token,
    };
    Ok((StatusCode::CREATED, headers, Json(body)))
}
