//! Value objects shared by the aggregates.
//!
//! Parse, don't validate: every type here has private fields and is built through `parse`,
//! `new` or `TryFrom`, which return a [`ValueError`](crate::ValueError) naming the broken rule.
//! Deserialisation goes through the same constructors, so an invalid value read from the log or
//! from a request body fails to deserialise instead of sneaking in.

mod email;
mod ids;
mod kinds;
mod money;
mod names;
mod opening_hours;
mod phone;
mod quantities;
mod slot;
mod time_zone;

pub use email::EmailAddress;
pub use ids::{
    BookingId, FacilityId, FuneralHomeId, PAYMENT_ID_NAMESPACE, PaymentId, SAGA_ID_NAMESPACE,
    SagaId,
};
pub use kinds::{FacilityKind, ServiceType};
pub use money::{Currency, Money};
pub use names::{FacilityName, ItemDescription, PersonName, Relationship};
pub use opening_hours::{OpeningHours, OpeningInterval};
pub use phone::PhoneNumber;
pub use quantities::{Capacity, TurnaroundBuffer};
pub use slot::Slot;
pub use time_zone::TimeZone;

#[cfg(test)]
mod serde_round_trip_tests;
