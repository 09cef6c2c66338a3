//! Funeral Manager's domain: the rules for booking funeral services, with no I/O.
//!
//! Every aggregate is a pair of pure functions (see [`Aggregate`]): `decide` turns a command and
//! the current state into events (or a [`DomainError`] when the domain says no), and `evolve`
//! folds one event into the state. Anything a decision needs from outside (the time now, a
//! facility's opening hours when booking) travels inside the command, so the same history and
//! command always give the same answer. Services own the I/O: they load events, call `decide`,
//! and append what comes back.
//!
//! Map of the crate:
//! - [`aggregate`] — the [`Aggregate`] and [`DomainEvent`] traits every aggregate implements.
//! - [`values`] — value objects shared by the aggregates (ids, [`values::EmailAddress`],
//!   [`values::PhoneNumber`], [`values::Money`], [`values::Slot`], [`values::OpeningHours`],
//!   names, ...). They are parsed once at the edge and cannot hold invalid data, not even when
//!   deserialised.
//! - [`facility`] — a chapel, crematorium, graveside or reception hall and its reservations.
//! - [`booking`] — the service a family asks for and its lifecycle.
//! - [`pricing`] — a funeral home's price list and the itemised statement a booking is priced
//!   with (docs/pricing.md).
//! - [`payment`] — the money side of one booking: captured, declined, refunded.
//! - [`saga`] — what operators (and the saga runner) decided about a booking's saga: parked,
//!   retried, a step skipped, resolved by hand.
//! - [`error`] — [`ValueError`] (a value failed to parse) and [`DomainError`] (a command was
//!   refused), each with a stable machine-readable rule.
//! - `fixtures` (feature `testing`): sample values and one sample of every event, for tests
//!   and benchmarks (the `schemas` crate checks its JSON Schemas against them).
//! - `testing` (feature `testing`): the given/when/then harness used by the domain's tests.

pub mod aggregate;
pub mod booking;
pub mod error;
pub mod facility;
#[cfg(any(test, feature = "testing"))]
pub mod fixtures;
pub mod payment;
pub mod pricing;
pub mod saga;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod values;

pub use aggregate::{Aggregate, DomainEvent};
pub use error::{DomainError, RejectionKind, ValueError};
