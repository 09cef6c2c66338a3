//! The facility aggregate: a chapel, crematorium, graveside or reception hall, and the slots
//! booked there.
//!
//! A facility is the only place that knows all of its reservations, so it is the one that can
//! promise that no two overlap. Refusing a slot is therefore an event ([`FacilityEvent::SlotRejected`])
//! rather than an error: the booking saga waits for the facility's answer either way.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use chrono::{DateTime, Utc};

use crate::values::{
    BookingId, Capacity, FacilityId, FacilityKind, FacilityName, FuneralHomeId, OpeningHours, Slot,
    TimeZone, TurnaroundBuffer,
};
use crate::{Aggregate, DomainError, DomainEvent};

#[cfg(test)]
mod tests;

/// The facility aggregate (a type-level marker; the data lives in [`FacilityState`]).
#[derive(Debug)]
pub enum Facility {}

/// What a registered facility is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FacilityProfile {
    /// The facility's id.
    pub facility_id: FacilityId,
    /// Display name.
    pub name: FacilityName,
    /// Chapel, crematorium, graveside or reception hall.
    pub kind: FacilityKind,
    /// How many people it seats.
    pub capacity: Capacity,
    /// The zone its opening hours are written in.
    pub time_zone: TimeZone,
    /// Weekly opening hours, in local time.
    pub opening_hours: OpeningHours,
    /// Time needed between two services.
    pub turnaround: TurnaroundBuffer,
    /// The funeral home it belongs to; `None` for a facility registered before homes were
    /// named (read as the deployment's default home, docs/identity.md).
    #[serde(default)]
    pub funeral_home_id: Option<FuneralHomeId>,
}

/// The facility as its decisions need it: its profile once registered, and the slot each
/// booking currently holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FacilityState {
    registered: Option<FacilityProfile>,
    reservations: BTreeMap<BookingId, Slot>,
}

impl FacilityState {
    /// The profile, if the facility has been registered.
    pub fn profile(&self) -> Option<&FacilityProfile> {
        self.registered.as_ref()
    }

    /// Whether the facility has been registered.
    pub fn is_registered(&self) -> bool {
        self.registered.is_some()
    }

    /// The slot each booking holds. No two of them overlap, turnaround included.
    pub fn reservations(&self) -> &BTreeMap<BookingId, Slot> {
        &self.reservations
    }

    /// The slot `booking_id` holds, if any.
    pub fn reservation(&self, booking_id: BookingId) -> Option<&Slot> {
        self.reservations.get(&booking_id)
    }

    /// Forgets the reservations that ended, turnaround included, at or before `horizon`, and
    /// returns how many. A holder of the state calls it with a horizon some margin before its
    /// clock (docs/memory.md): a new slot must start after the caller's `now`, so a
    /// reservation whose end and turnaround lie before it can no longer overlap anything, and
    /// keeping it would let a facility's state grow with every service it ever held.
    pub fn forget_ended_reservations(&mut self, horizon: DateTime<Utc>) -> usize {
        let Some(profile) = self.registered.as_ref() else {
            return 0;
        };
        let buffer = profile.turnaround.as_duration();
        let before = self.reservations.len();
        self.reservations
            .retain(|_, slot| slot.end_utc() + buffer > horizon);
        let forgotten = before - self.reservations.len();
        if self.reservations.is_empty() && forgotten > 0 {
            // An emptied map may keep its node; a new one holds no allocation.
            self.reservations = BTreeMap::new();
        }
        forgotten
    }
}

/// What a caller asks a facility to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FacilityCommand {
    /// Register a new facility.
    Register {
        /// The new facility's id (the stream's key).
        facility_id: FacilityId,
        /// Display name.
        name: FacilityName,
        /// What the facility is.
        kind: FacilityKind,
        /// How many people it seats.
        capacity: Capacity,
        /// The zone its opening hours are written in.
        time_zone: TimeZone,
        /// Weekly opening hours, in local time.
        opening_hours: OpeningHours,
        /// Time needed between two services.
        turnaround: TurnaroundBuffer,
        /// The funeral home it belongs to (the API always names one; `None` only where no
        /// home exists, as in the fixtures).
        funeral_home_id: Option<FuneralHomeId>,
    },
    /// Replace the weekly opening hours. Existing reservations are kept, even those that fall
    /// outside the new hours: families who booked are not bumped by a timetable change.
    ChangeOpeningHours {
        /// The new hours.
        opening_hours: OpeningHours,
    },
    /// Hold `slot` for `booking_id` (sent by the booking saga).
    ReserveSlot {
        /// The booking asking for the slot.
        booking_id: BookingId,
        /// The slot asked for.
        slot: Slot,
        /// The time now, from the caller's clock.
        now: DateTime<Utc>,
    },
    /// Give back the slot `booking_id` holds (compensation, or cancellation).
    ReleaseSlot {
        /// The booking giving its slot back.
        booking_id: BookingId,
    },
}

/// Why a facility refused a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SlotRejectionReason {
    /// The slot starts now or in the past.
    InPast,
    /// The slot is not within one opening interval, in the facility's time zone.
    OutsideOpeningHours,
    /// The slot overlaps another booking's slot, turnaround buffer included.
    OverlapsExisting,
}

impl SlotRejectionReason {
    /// The wire code, in `snake_case`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::InPast => "in_past",
            Self::OutsideOpeningHours => "outside_opening_hours",
            Self::OverlapsExisting => "overlaps_existing",
        }
    }
}

impl std::fmt::Display for SlotRejectionReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What happened to a facility.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event_type", content = "data", deny_unknown_fields)]
pub enum FacilityEvent {
    /// A facility was registered.
    #[serde(rename = "FacilityRegistered")]
    FacilityRegistered {
        /// The facility's id.
        facility_id: FacilityId,
        /// Display name.
        name: FacilityName,
        /// What the facility is.
        kind: FacilityKind,
        /// How many people it seats.
        capacity: Capacity,
        /// The zone its opening hours are written in.
        time_zone: TimeZone,
        /// Weekly opening hours, in local time.
        opening_hours: OpeningHours,
        /// Time needed between two services, in minutes.
        turnaround_minutes: TurnaroundBuffer,
        /// The funeral home the facility belongs to (v2; issue 16 gives the API a home to name).
        /// `None` for every facility registered before v2, which the upcaster cannot know
        /// (docs/evolution.md, rule 5), and for a registration that named none.
        funeral_home_id: Option<FuneralHomeId>,
    },
    /// The weekly opening hours were replaced.
    #[serde(rename = "OpeningHoursChanged")]
    OpeningHoursChanged {
        /// The new hours.
        opening_hours: OpeningHours,
    },
    /// A slot is now held for a booking.
    #[serde(rename = "SlotReserved")]
    SlotReserved {
        /// The booking holding the slot.
        booking_id: BookingId,
        /// The slot held.
        slot: Slot,
    },
    /// A slot was refused to a booking.
    #[serde(rename = "SlotRejected")]
    SlotRejected {
        /// The booking that asked.
        booking_id: BookingId,
        /// The slot it asked for.
        slot: Slot,
        /// Why it was refused.
        reason: SlotRejectionReason,
    },
    /// A booking gave its slot back.
    #[serde(rename = "SlotReleased")]
    SlotReleased {
        /// The booking that held the slot.
        booking_id: BookingId,
    },
}

impl DomainEvent for FacilityEvent {
    fn event_type(&self) -> &'static str {
        match self {
            Self::FacilityRegistered { .. } => "FacilityRegistered",
            Self::OpeningHoursChanged { .. } => "OpeningHoursChanged",
            Self::SlotReserved { .. } => "SlotReserved",
            Self::SlotRejected { .. } => "SlotRejected",
            Self::SlotReleased { .. } => "SlotReleased",
        }
    }

    fn event_version(&self) -> u16 {
        match self {
            Self::FacilityRegistered { .. } => 2,
            _ => 1,
        }
    }

    fn catalogue() -> &'static [(&'static str, u16)] {
        &[
            ("FacilityRegistered", 2),
            ("OpeningHoursChanged", 1),
            ("SlotReserved", 1),
            ("SlotRejected", 1),
            ("SlotReleased", 1),
        ]
    }
}

impl Aggregate for Facility {
    const AGGREGATE_TYPE: &'static str = "facility";
    type State = FacilityState;
    type Command = FacilityCommand;
    type Event = FacilityEvent;

    fn decide(
        state: &FacilityState,
        command: FacilityCommand,
    ) -> Result<Vec<FacilityEvent>, DomainError> {
        match command {
            FacilityCommand::Register {
                facility_id,
                name,
                kind,
                capacity,
                time_zone,
                opening_hours,
                turnaround,
                funeral_home_id,
            } => {
                if state.is_registered() {
                    return Err(DomainError::FacilityAlreadyRegistered);
                }
                Ok(vec![FacilityEvent::FacilityRegistered {
                    facility_id,
                    name,
                    kind,
                    capacity,
                    time_zone,
                    opening_hours,
                    turnaround_minutes: turnaround,
                    funeral_home_id,
                }])
            }
            FacilityCommand::ChangeOpeningHours { opening_hours } => {
                let profile = registered(state)?;
                if profile.opening_hours == opening_hours {
                    return Ok(vec![]);
                }
                Ok(vec![FacilityEvent::OpeningHoursChanged { opening_hours }])
            }
            FacilityCommand::ReserveSlot {
                booking_id,
                slot,
                now,
            } => reserve_slot(state, booking_id, slot, now),
            FacilityCommand::ReleaseSlot { booking_id } => {
                registered(state)?;
                if state.reservations.contains_key(&booking_id) {
                    Ok(vec![FacilityEvent::SlotReleased { booking_id }])
                } else {
                    // Compensations may run twice or for a slot that was never granted.
                    Ok(vec![])
                }
            }
        }
    }

    fn evolve(mut state: FacilityState, event: &FacilityEvent) -> FacilityState {
        match event {
            FacilityEvent::FacilityRegistered {
                facility_id,
                name,
                kind,
                capacity,
                time_zone,
                opening_hours,
                turnaround_minutes,
                funeral_home_id,
            } => {
                state.registered = Some(FacilityProfile {
                    facility_id: *facility_id,
                    name: name.clone(),
                    kind: *kind,
                    capacity: *capacity,
                    time_zone: *time_zone,
                    opening_hours: opening_hours.clone(),
                    turnaround: *turnaround_minutes,
                    funeral_home_id: *funeral_home_id,
                });
            }
            FacilityEvent::OpeningHoursChanged { opening_hours } => {
                if let Some(profile) = state.registered.as_mut() {
                    profile.opening_hours = opening_hours.clone();
                }
            }
            FacilityEvent::SlotReserved { booking_id, slot } => {
                state.reservations.insert(*booking_id, *slot);
            }
            FacilityEvent::SlotRejected { .. } => {}
            FacilityEvent::SlotReleased { booking_id } => {
                state.reservations.remove(booking_id);
            }
        }
        state
    }
}

fn registered(state: &FacilityState) -> Result<&FacilityProfile, DomainError> {
    state
        .registered
        .as_ref()
        .ok_or(DomainError::FacilityNotRegistered)
}

fn reserve_slot(
    state: &FacilityState,
    booking_id: BookingId,
    slot: Slot,
    now: DateTime<Utc>,
) -> Result<Vec<FacilityEvent>, DomainError> {
    let profile = registered(state)?;
    if let Some(held) = state.reservations.get(&booking_id) {
        // A redelivered request for the slot already held must not be refused as an overlap
        // with itself; a request for another slot is a saga bug worth surfacing.
        return if *held == slot {
            Ok(vec![])
        } else {
            Err(DomainError::BookingHoldsAnotherSlot { booking_id })
        };
    }
    let buffer = profile.turnaround.as_duration();
    let refusal = if slot.start_utc() <= now {
        Some(SlotRejectionReason::InPast)
    } else if !profile.opening_hours.contains(&profile.time_zone, &slot) {
        Some(SlotRejectionReason::OutsideOpeningHours)
    } else if state
        .reservations
        .values()
        .any(|held| held.overlaps_with_buffer(&slot, buffer))
    {
        Some(SlotRejectionReason::OverlapsExisting)
    } else {
        None
    };
    Ok(vec![match refusal {
        Some(reason) => FacilityEvent::SlotRejected {
            booking_id,
            slot,
            reason,
        },
        None => FacilityEvent::SlotReserved { booking_id, slot },
    }])
}
