//! The booking aggregate: the service a family asks for, and where it stands.
//!
//! Lifecycle (statuses in `snake_case` on the wire):
//!
//! ```text
//! requested ──MarkSlotHeld──▶ slot_held ──Confirm──▶ confirmed
//!     │  └──Reject──▶ rejected      │                    │
//!     └──Fail──▶ failed ◀──Fail─────┘                    │
//! requested | slot_held | confirmed ──Cancel (before the service starts)──▶ cancelled
//! ```
//!
//! `rejected`, `failed` and `cancelled` are final. Repeating a command whose effect already
//! holds is accepted with no events, so that a saga may redeliver it safely.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use crate::pricing::Statement;
use crate::values::{
    BookingId, EmailAddress, FacilityId, Money, OpeningHours, PersonName, PhoneNumber,
    Relationship, ServiceType, Slot, TimeZone,
};
use crate::{Aggregate, DomainError, DomainEvent, ValueError};

mod personal;
#[cfg(test)]
mod tests;

pub use personal::{EncryptedPersonal, PersonalData, SealedPersonal};

/// The booking aggregate (a type-level marker; the data lives in [`BookingState`]).
#[derive(Debug)]
pub enum Booking {}

/// Where a booking stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BookingStatus {
    /// The family asked; the saga is holding the slot.
    Requested,
    /// The facility holds the slot; the saga is taking payment.
    SlotHeld,
    /// Paid and booked.
    Confirmed,
    /// The facility refused the slot. Final.
    Rejected,
    /// Payment was declined or timed out and the slot was released. Final.
    Failed,
    /// Cancelled by the family or the director before the service. Final.
    Cancelled,
}

impl BookingStatus {
    /// Every status, in lifecycle order.
    pub const ALL: &'static [Self] = &[
        Self::Requested,
        Self::SlotHeld,
        Self::Confirmed,
        Self::Rejected,
        Self::Failed,
        Self::Cancelled,
    ];

    /// The wire code, in `snake_case`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Requested => "requested",
            Self::SlotHeld => "slot_held",
            Self::Confirmed => "confirmed",
            Self::Rejected => "rejected",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// Whether no command can move the booking out of this status.
    pub const fn is_final(self) -> bool {
        matches!(self, Self::Rejected | Self::Failed | Self::Cancelled)
    }
}

impl fmt::Display for BookingStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BookingStatus {
    type Err = ValueError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .iter()
            .copied()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| {
                ValueError::new(
                    "booking_status.unknown",
                    format!("{s:?} is not a booking status"),
                )
            })
    }
}

/// The most family contacts a booking may name: each one is mailed, from the home's address, so
/// a booking must not become a way to send the home's letters to a list.
pub const MAX_FAMILY_CONTACTS: usize = 10;

/// How many open bookings a family may hold, and how many it holds (counted by the caller over
/// every booking the family's token subject created, with [`BookingState::is_open`]).
///
/// A family is its token's subject: a director books for many families and is not limited by
/// this rule (docs/security.md, API6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenBookings {
    /// Open bookings the family holds now.
    pub held: usize,
    /// The most it may hold.
    pub limit: usize,
}

impl OpenBookings {
    /// Whether the family may ask for one more booking: refuses once it holds `limit` open
    /// bookings, so that one family cannot hoard a facility's calendar.
    pub fn check_one_more(self) -> Result<(), DomainError> {
        if self.held >= self.limit {
            Err(DomainError::OpenBookingLimitReached { limit: self.limit })
        } else {
            Ok(())
        }
    }
}

/// The facility facts a booking request is checked against, looked up by the caller from the
/// facility's read model (the booking aggregate cannot read another stream).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FacilitySchedule {
    /// The facility asked for.
    pub facility_id: FacilityId,
    /// Its time zone.
    pub time_zone: TimeZone,
    /// Its weekly opening hours.
    pub opening_hours: OpeningHours,
}

/// The person whose service is booked.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deceased {
    /// Full name.
    pub full_name: PersonName,
    /// Date of death (a calendar date, no time zone).
    pub date_of_death: NaiveDate,
}

/// Someone to keep informed about the booking.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FamilyContact {
    /// Their name.
    pub name: PersonName,
    /// How they are related to the deceased.
    pub relationship: Relationship,
    /// Where notifications go.
    pub email: EmailAddress,
    /// An optional E.164 phone number; serialised as `null` when absent.
    #[serde(default)]
    pub phone: Option<PhoneNumber>,
}

/// What was asked for, as recorded by [`BookingEvent::BookingRequested`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BookingDetails {
    /// The booking's id.
    pub booking_id: BookingId,
    /// The facility booked.
    pub facility_id: FacilityId,
    /// The kind of service.
    pub service_type: ServiceType,
    /// When.
    pub slot: Slot,
    /// The deceased's date of death (not personal on its own: docs/privacy.md).
    pub date_of_death: NaiveDate,
    /// The deceased's name and whom to tell, sealed: the aggregate never holds them in the
    /// clear.
    pub personal: SealedPersonal,
    /// The agreed price.
    pub price: Money,
}

/// A booking as its decisions need it: nothing before it is requested, then its details and
/// status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BookingState {
    booking: Option<(BookingDetails, BookingStatus)>,
    /// Whether the booking's personal data was erased (its data key destroyed).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    personal_data_erased: bool,
}

impl BookingState {
    /// Whether the booking has been requested.
    pub fn exists(&self) -> bool {
        self.booking.is_some()
    }

    /// The current status, if the booking exists.
    pub fn status(&self) -> Option<BookingStatus> {
        self.booking.as_ref().map(|(_, status)| *status)
    }

    /// What was asked for, if the booking exists.
    pub fn details(&self) -> Option<&BookingDetails> {
        self.booking.as_ref().map(|(details, _)| details)
    }

    /// The booking's id, if it exists.
    pub fn booking_id(&self) -> Option<BookingId> {
        self.details().map(|details| details.booking_id)
    }

    /// The facility booked, if the booking exists.
    pub fn facility_id(&self) -> Option<FacilityId> {
        self.details().map(|details| details.facility_id)
    }

    /// The slot asked for, if the booking exists.
    pub fn slot(&self) -> Option<&Slot> {
        self.details().map(|details| &details.slot)
    }

    /// The agreed price, if the booking exists.
    pub fn price(&self) -> Option<Money> {
        self.details().map(|details| details.price)
    }

    /// Whether the booking still holds, or may yet hold, its facility's time as of `now`: it is
    /// `requested` or `slot_held` (the saga is at work), or `confirmed` with its service not yet
    /// over. `rejected`, `failed` and `cancelled` bookings are closed, and so is a confirmed one
    /// whose slot has ended (the service took place). This is what a family's open-booking
    /// limit counts ([`OpenBookings`]).
    pub fn is_open(&self, now: DateTime<Utc>) -> bool {
        match self.booking.as_ref() {
            None => false,
            Some((_, BookingStatus::Requested | BookingStatus::SlotHeld)) => true,
            Some((details, BookingStatus::Confirmed)) => details.slot.end_utc() > now,
            Some((_, status)) => {
                debug_assert!(status.is_final());
                false
            }
        }
    }

    /// Whether the booking's personal data has been erased.
    pub fn personal_data_erased(&self) -> bool {
        self.personal_data_erased
    }
}

/// What a caller asks a booking to do.
// A command lives for one request on the stack: a request, with its sealed box beside the
// plaintext it was sealed from, is larger than the rest, and boxing it would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BookingCommand {
    /// A family (or a director for them) asks for a service.
    Request {
        /// The new booking's id (the stream's key).
        booking_id: BookingId,
        /// The facility asked for, with the facts the request is checked against.
        facility: FacilitySchedule,
        /// The kind of service.
        service_type: ServiceType,
        /// When.
        slot: Slot,
        /// For whom.
        deceased: Deceased,
        /// Whom to tell; at least one.
        family_contacts: Vec<FamilyContact>,
        /// The deceased's name and the contacts above, sealed by the caller under the booking's
        /// data key: what the event carries instead of them.
        personal: SealedPersonal,
        /// The itemised statement the server priced the request with, from the home's price list
        /// (`domain::pricing`); its total is what the family pays.
        statement: Statement,
        /// The time now, from the caller's clock.
        now: DateTime<Utc>,
    },
    /// The facility holds the slot (sent by the saga on `SlotReserved`).
    MarkSlotHeld,
    /// Payment was captured (sent by the saga on `PaymentCaptured`).
    Confirm,
    /// The facility refused the slot (sent by the saga on `SlotRejected`).
    Reject {
        /// Why, for the family's notification.
        reason: String,
    },
    /// Payment failed and the slot was released (sent by the saga).
    Fail {
        /// Why, for the family's notification.
        reason: String,
    },
    /// The family or the director calls the service off.
    Cancel {
        /// Why, if they said.
        reason: Option<String>,
        /// The time now, from the caller's clock.
        now: DateTime<Utc>,
    },
    /// The booking's data key has been destroyed: record the erasure (any status; repeating it
    /// is accepted with no events).
    ErasePersonalData {
        /// Why, if said (never personal data itself).
        reason: Option<String>,
    },
}

impl BookingCommand {
    /// The command's name in `snake_case`, as reported by [`DomainError::InvalidTransition`].
    pub const fn name(&self) -> &'static str {
        match self {
            Self::Request { .. } => "request",
            Self::MarkSlotHeld => "mark_slot_held",
            Self::Confirm => "confirm",
            Self::Reject { .. } => "reject",
            Self::Fail { .. } => "fail",
            Self::Cancel { .. } => "cancel",
            Self::ErasePersonalData { .. } => "erase_personal_data",
        }
    }
}

/// What happened to a booking.
///
/// Events without data are struct variants with no fields, so that their payload is the empty
/// object `{}` like every other payload, never `null`.
// An event is decoded, decided or applied one at a time: a request, with its statement, is larger
// than the rest, and boxing it would only add an allocation to every read of the log.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event_type", content = "data", deny_unknown_fields)]
pub enum BookingEvent {
    /// A family asked for a service.
    #[serde(rename = "BookingRequested")]
    BookingRequested {
        /// The booking's id.
        booking_id: BookingId,
        /// The facility asked for.
        facility_id: FacilityId,
        /// The kind of service.
        service_type: ServiceType,
        /// When.
        slot: Slot,
        /// The deceased's date of death.
        date_of_death: NaiveDate,
        /// The deceased's name and whom to tell, sealed ([`SealedPersonal`]).
        personal: SealedPersonal,
        /// What the family pays: the statement's total, in its currency (version 3 keeps it
        /// beside the statement, so that every reader of the amount reads it as before).
        price: Money,
        /// The itemised statement: each item of the home's price list charged, the director's
        /// adjustments, the total (version 3; older versions are upcast to a statement of one
        /// line, their agreed price).
        statement: Statement,
    },
    /// The facility holds the slot.
    #[serde(rename = "BookingSlotHeld")]
    BookingSlotHeld {},
    /// The booking is paid and confirmed.
    #[serde(rename = "BookingConfirmed")]
    BookingConfirmed {},
    /// The facility refused the slot.
    #[serde(rename = "BookingRejected")]
    BookingRejected {
        /// Why.
        reason: String,
    },
    /// Payment failed; the slot was released.
    #[serde(rename = "BookingFailed")]
    BookingFailed {
        /// Why.
        reason: String,
    },
    /// The booking was cancelled before the service.
    #[serde(rename = "BookingCancelled")]
    BookingCancelled {
        /// Why, if given.
        reason: Option<String>,
        /// Whether it had been confirmed, i.e. paid: the saga then refunds and releases.
        was_confirmed: bool,
    },
    /// The booking's personal data was erased: its data key is destroyed, so every reader shows
    /// those fields as erased. Nothing else about the booking changes. Who erased it is the
    /// envelope's actor.
    #[serde(rename = "PersonalDataErased")]
    PersonalDataErased {
        /// Why, if said.
        reason: Option<String>,
    },
}

impl DomainEvent for BookingEvent {
    fn event_type(&self) -> &'static str {
        match self {
            Self::BookingRequested { .. } => "BookingRequested",
            Self::BookingSlotHeld {} => "BookingSlotHeld",
            Self::BookingConfirmed {} => "BookingConfirmed",
            Self::BookingRejected { .. } => "BookingRejected",
            Self::BookingFailed { .. } => "BookingFailed",
            Self::BookingCancelled { .. } => "BookingCancelled",
            Self::PersonalDataErased { .. } => "PersonalDataErased",
        }
    }

    fn event_version(&self) -> u16 {
        match self {
            Self::BookingRequested { .. } => 3,
            _ => 1,
        }
    }

    fn catalogue() -> &'static [(&'static str, u16)] {
        &[
            ("BookingRequested", 3),
            ("BookingSlotHeld", 1),
            ("BookingConfirmed", 1),
            ("BookingRejected", 1),
            ("BookingFailed", 1),
            ("BookingCancelled", 1),
            ("PersonalDataErased", 1),
        ]
    }
}

impl Aggregate for Booking {
    const AGGREGATE_TYPE: &'static str = "booking";
    type State = BookingState;
    type Command = BookingCommand;
    type Event = BookingEvent;

    fn decide(
        state: &BookingState,
        command: BookingCommand,
    ) -> Result<Vec<BookingEvent>, DomainError> {
        use BookingStatus::{Cancelled, Confirmed, Failed, Rejected, Requested, SlotHeld};

        let name = command.name();
        let current = state
            .booking
            .as_ref()
            .map(|(details, status)| (details.slot, *status));
        let existing = || current.ok_or(DomainError::BookingNotFound);
        let refused = |from| DomainError::InvalidTransition {
            from,
            command: name,
        };
        match command {
            BookingCommand::Request {
                booking_id,
                facility,
                service_type,
                slot,
                deceased,
                family_contacts,
                personal,
                statement,
                now,
            } => {
                if state.exists() {
                    return Err(DomainError::BookingAlreadyRequested);
                }
                check_request(
                    &facility,
                    &slot,
                    &deceased,
                    &family_contacts,
                    &statement,
                    now,
                )?;
                Ok(vec![BookingEvent::BookingRequested {
                    booking_id,
                    facility_id: facility.facility_id,
                    service_type,
                    slot,
                    date_of_death: deceased.date_of_death,
                    personal,
                    price: statement.total(),
                    statement,
                }])
            }
            BookingCommand::ErasePersonalData { reason } => {
                existing()?;
                if state.personal_data_erased {
                    Ok(vec![])
                } else {
                    Ok(vec![BookingEvent::PersonalDataErased { reason }])
                }
            }
            BookingCommand::MarkSlotHeld => match existing()?.1 {
                SlotHeld => Ok(vec![]),
                Requested => Ok(vec![BookingEvent::BookingSlotHeld {}]),
                other => Err(refused(other)),
            },
            BookingCommand::Confirm => match existing()?.1 {
                Confirmed => Ok(vec![]),
                SlotHeld => Ok(vec![BookingEvent::BookingConfirmed {}]),
                other => Err(refused(other)),
            },
            BookingCommand::Reject { reason } => match existing()?.1 {
                Rejected => Ok(vec![]),
                Requested => Ok(vec![BookingEvent::BookingRejected { reason }]),
                other => Err(refused(other)),
            },
            BookingCommand::Fail { reason } => match existing()?.1 {
                Failed => Ok(vec![]),
                Requested | SlotHeld => Ok(vec![BookingEvent::BookingFailed { reason }]),
                other => Err(refused(other)),
            },
            BookingCommand::Cancel { reason, now } => {
                let (slot, status) = existing()?;
                match status {
                    Cancelled => Ok(vec![]),
                    Rejected | Failed => Err(refused(status)),
                    Requested | SlotHeld | Confirmed if now >= slot.start_utc() => {
                        Err(DomainError::ServiceAlreadyStarted)
                    }
                    Requested | SlotHeld | Confirmed => Ok(vec![BookingEvent::BookingCancelled {
                        reason,
                        was_confirmed: status == Confirmed,
                    }]),
                }
            }
        }
    }

    fn evolve(mut state: BookingState, event: &BookingEvent) -> BookingState {
        let next = match event {
            BookingEvent::BookingRequested {
                booking_id,
                facility_id,
                service_type,
                slot,
                date_of_death,
                personal,
                price,
                statement: _,
            } => {
                state.booking = Some((
                    BookingDetails {
                        booking_id: *booking_id,
                        facility_id: *facility_id,
                        service_type: *service_type,
                        slot: *slot,
                        date_of_death: *date_of_death,
                        personal: personal.clone(),
                        price: *price,
                    },
                    BookingStatus::Requested,
                ));
                return state;
            }
            BookingEvent::BookingSlotHeld {} => BookingStatus::SlotHeld,
            BookingEvent::BookingConfirmed {} => BookingStatus::Confirmed,
            BookingEvent::BookingRejected { .. } => BookingStatus::Rejected,
            BookingEvent::BookingFailed { .. } => BookingStatus::Failed,
            BookingEvent::BookingCancelled { .. } => BookingStatus::Cancelled,
            BookingEvent::PersonalDataErased { .. } => {
                state.personal_data_erased = true;
                return state;
            }
        };
        if let Some((_, status)) = state.booking.as_mut() {
            *status = next;
        }
        state
    }
}

/// The rules a new request must meet, in the order a family would fix them.
fn check_request(
    facility: &FacilitySchedule,
    slot: &Slot,
    deceased: &Deceased,
    family_contacts: &[FamilyContact],
    statement: &Statement,
    now: DateTime<Utc>,
) -> Result<(), DomainError> {
    if family_contacts.is_empty() {
        return Err(DomainError::NoFamilyContacts);
    }
    if family_contacts.len() > MAX_FAMILY_CONTACTS {
        return Err(DomainError::TooManyFamilyContacts {
            max: MAX_FAMILY_CONTACTS,
        });
    }
    if !statement.adds_up() {
        return Err(DomainError::StatementDoesNotAddUp);
    }
    if statement.total_minor <= 0 {
        return Err(DomainError::ZeroPrice);
    }
    if slot.start_utc() <= now {
        return Err(DomainError::SlotInPast);
    }
    // Dates are read in the facility's zone: that is where the family and the director live,
    // and where "today" and "the day of the service" mean something to them.
    let zone = facility.time_zone;
    // With the slot ahead of now, a death after the service date is also a death in the
    // future; the service rule goes first because it is the one that tells the family what to
    // change.
    if zone.local_date(&slot.start()) < deceased.date_of_death {
        return Err(DomainError::ServiceBeforeDateOfDeath);
    }
    if deceased.date_of_death > zone.local_date(&now) {
        return Err(DomainError::DateOfDeathInFuture);
    }
    if !facility.opening_hours.contains(&zone, slot) {
        return Err(DomainError::SlotOutsideOpeningHours);
    }
    Ok(())
}
