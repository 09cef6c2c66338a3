//! `POST /bookings`: a family (or a director for them) asks for a service.

use axum::{Json, extract::State, http::StatusCode, response::IntoResponse};
use chrono::{NaiveDate, Utc};
use domain::{
    ValueError,
    booking::{Booking, BookingCommand, Deceased, FacilitySchedule, FamilyContact},
    facility::Facility,
    values::{
        BookingId, Currency, EmailAddress, FacilityId, Money, PersonName, PhoneNumber,
        Relationship, ServiceType, Slot,
    },
};
use platform::{auth::Caller, json::ValidJson};
use schemas::Role;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::{Violations, parse_variant, token_of};
use crate::{commands::metadata_for_request, error::ApiError, startup::AppState};

/// A booking request.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RequestBooking {
    facility_id: Uuid,
    /// burial, cremation, memorial or viewing.
    #[schema(example = "burial")]
    service_type: String,
    slot: SlotDto,
    deceased: DeceasedDto,
    family_contacts: Vec<ContactDto>,
    price: PriceDto,
}

/// Start and end, RFC 3339 with an offset.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SlotDto {
    #[schema(example = "2027-03-02T10:00:00+00:00")]
    start: String,
    #[schema(example = "2027-03-02T11:00:00+00:00")]
    end: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeceasedDto {
    #[schema(example = "Ada Lovelace")]
    full_name: String,
    /// YYYY-MM-DD.
    #[schema(example = "2027-02-20")]
    date_of_death: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ContactDto {
    #[schema(example = "Byron King")]
    name: String,
    #[schema(example = "son")]
    relationship: String,
    #[schema(example = "byron@example.org")]
    email: String,
    /// E.164.
    #[schema(example = "+447700900123")]
    phone: Option<String>,
}

/// Integer minor units and an ISO 4217 code; never a float.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PriceDto {
    #[schema(example = 125_000)]
    amount_minor: i64,
    #[schema(example = "GBP")]
    currency: String,
}

/// `202` answer to `POST /bookings`: the saga goes on asynchronously.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct BookingAccepted {
    booking_id: Uuid,
    version: u64,
    consistency_token: Option<String>,
}

impl RequestBooking {
    fn into_command(
        self,
        booking_id: BookingId,
        facility: FacilitySchedule,
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
        if self.family_contacts.is_empty() {
            violations.add(
                "family_contacts",
                "family_contacts.non_empty",
                "at least one family contact is required",
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
        let currency = violations.check("price.currency", Currency::parse(&self.price.currency));
        let price = currency.and_then(|currency| {
            violations.check(
                "price.amount_minor",
                Money::new(self.price.amount_minor, currency),
            )
        });
        violations.finish()?;
        match (service_type, slot, full_name, date_of_death, price) {
            (Some(service_type), Some(slot), Some(full_name), Some(date_of_death), Some(price)) => {
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
                    price,
                    now: Utc::now(),
                })
            }
            _ => unreachable!("every None recorded a violation"),
        }
    }
}

/// Request a booking. The saga then holds the slot, takes payment and confirms, asynchronously.
#[utoipa::path(
    post,
    path = "/bookings",
    tag = "bookings",
    request_body = RequestBooking,
    security(("bearer" = [])),
    responses(
        (status = 202, description = "Accepted; the saga runs on", body = BookingAccepted,
         headers(("Consistency-Token" = String, description = "Present to the query-api to read this write"))),
        (status = 400, description = "Malformed JSON", body = platform::problem::Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid bearer token", body = platform::problem::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Role may not book", body = platform::problem::Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown facility", body = platform::problem::Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field breaks a rule", body = platform::problem::Problem, content_type = "application/problem+json"),
        (status = 503, description = "Broker unavailable", body = platform::problem::Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn request(
    State(state): State<AppState>,
    caller: Caller,
    ValidJson(body): ValidJson<RequestBooking>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(&[Role::Director, Role::Family])?;
    let facility_id = body.facility_id;
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
    let booking_id = BookingId::new();
    let command = body.into_command(booking_id, schedule)?;
    let metadata = metadata_for_request(caller.actor(), Uuid::new_v4());
    let appended = state
        .commands
        .execute::<Booking>(*booking_id.as_uuid(), None, command, &metadata)
        .await?;
    let (headers, consistency_token) = token_of(&appended);
    let body = BookingAccepted {
        booking_id: *booking_id.as_uuid(),
        version: appended.version,
        consistency_token,
    };
    Ok((StatusCode::ACCEPTED, headers, Json(body)))
}
