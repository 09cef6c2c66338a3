//! The read models and how each event changes them.
//!
//! Each aggregate's events go to the module of its read model, which folds them into its rows
//! **in memory**: a [`Fold`] loads and locks (`SELECT … FOR UPDATE`) the rows of every aggregate
//! a batch touches with one statement per table, each event goes through the shared admission
//! rule against its row's version as folded so far, and [`Fold::flush`] writes what changed
//! with one upsert per table (`rows`). [`apply`] is the same for one event (parked records, the
//! tests). Queries name tables without a schema: the projector's connections have their
//! `search_path` set to the build they fill.
//!
//! - `facilities`: the facility rows and the calendar's reservations.
//! - `bookings`: bookings with their lifecycle history (the saga's progress).
//! - `payments`: one row per payment.
//! - `rows`: loading, locking and writing rows set-based.
//!
//! Their SQL is tested against a fresh PostgreSQL each (`#[sqlx::test]`), without Kafka
//! (`tests.rs`).

pub(crate) mod bookings;
pub(crate) mod facilities;
pub(crate) mod payments;
mod rows;
#[cfg(test)]
pub(crate) mod tests;

use chrono::{DateTime, SubsecRound, Utc};
use domain::{booking::BookingEvent, facility::FacilityEvent, payment::PaymentEvent};
use event_log::resolution::{Admission, admit};
use schemas::{AggregateType, ContractViolation, EventEnvelope, SchemaRegistry};
use serde::Serialize;
use sqlx::PgConnection;
use uuid::Uuid;

use self::{
    bookings::{BookingRow, Personal},
    facilities::{FacilityRow, RESERVATIONS, ReservationRow},
    payments::PaymentRow,
    rows::{Children, Rows},
};

/// What applying one event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Applied {
    Changed,
    /// A valid event no read model keeps (the operators' decisions about a saga).
    Ignored,
    /// A redelivery, or the loser of a race: already reflected, or never admitted.
    Stale,
    /// An event is missing before this one; nothing was changed.
    Gap {
        expected: u64,
    },
}

/// Applying failed: the event does not decode (dead-letter it), or the database failed (retry).
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApplyError {
    #[error(transparent)]
    Contract(#[from] ContractViolation),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// The record's personal data does not open with what this process holds (a master key the
    /// settings lack, a box that fails authentication): its aggregate is parked, with this as
    /// the reason (it names the key, never a value), and nothing of it is applied.
    #[error(transparent)]
    Unopenable(privacy::PrivacyError),
}

/// A box that does not open parks its aggregate ([`ApplyError::Unopenable`]); the key store
/// failing otherwise (PostgreSQL) is like the database failing: the batch is retried. Nothing is
/// ever applied without its personal data.
impl From<privacy::PrivacyError> for ApplyError {
    fn from(error: privacy::PrivacyError) -> Self {
        match error {
            privacy::PrivacyError::Database(error) => Self::Database(error),
            other if other.is_unopenable() => Self::Unopenable(other),
            other => Self::Database(sqlx::Error::Configuration(Box::new(other))),
        }
    }
}

/// An event decoded for its read model.
#[derive(Debug, Clone)]
pub(crate) enum Decoded {
    Facility(FacilityEvent),
    Booking(BookingEvent),
    Payment(PaymentEvent),
    /// Decoded all the same, so that a saga event no reader can use is dead-lettered here too;
    /// the saga's progress the query-api shows comes from the saga runner's tables.
    Saga,
}

impl Decoded {
    /// Decodes (upcasting) a validated envelope; a record that does not decode breaks the
    /// contract, an unknown (type, version) is [`ContractViolation::is_unknown_event`].
    pub(crate) fn of(
        registry: &SchemaRegistry,
        envelope: &EventEnvelope,
    ) -> Result<Self, ContractViolation> {
        Ok(match envelope.aggregate_type {
            AggregateType::Facility => Self::Facility(registry.decode(envelope)?),
            AggregateType::Booking => Self::Booking(registry.decode(envelope)?),
            AggregateType::Payment => Self::Payment(registry.decode(envelope)?),
            AggregateType::Saga => {
                registry.decode::<domain::saga::SagaEvent>(envelope)?;
                Self::Saga
            }
        })
    }
}

/// The rows of a batch (or of one event), folded in memory until [`Fold::flush`].
#[derive(Default)]
pub(crate) struct Fold {
    facilities: Rows<FacilityRow>,
    reservations: Children<ReservationRow>,
    bookings: Rows<BookingRow>,
    payments: Rows<PaymentRow>,
}

impl Fold {
    /// Loads and locks the rows of these aggregates (those not loaded yet), one statement per
    /// table.
    pub(crate) async fn load(
        &mut self,
        conn: &mut PgConnection,
        aggregates: &[(AggregateType, Uuid)],
    ) -> Result<(), sqlx::Error> {
        let of = |wanted: AggregateType| {
            aggregates
                .iter()
                .filter(move |(kind, _)| *kind == wanted)
                .map(|(_, id)| *id)
        };
        self.facilities
            .load(conn, of(AggregateType::Facility))
            .await?;
        self.bookings.load(conn, of(AggregateType::Booking)).await?;
        self.payments.load(conn, of(AggregateType::Payment)).await?;
        Ok(())
    }

    /// Whether `envelope` is the next event of its aggregate as folded so far (its rows loaded
    /// first). A saga event is always admitted: no read model keeps it.
    pub(crate) fn admission(&self, envelope: &EventEnvelope) -> Admission {
        let id = envelope.aggregate_id;
        let last = match envelope.aggregate_type {
            AggregateType::Facility => self.facilities.version(id),
            AggregateType::Booking => self.bookings.version(id),
            AggregateType::Payment => self.payments.version(id),
            AggregateType::Saga => return Admission::Next,
        };
        admit(last, envelope.sequence)
    }

    /// Folds an admitted event ([`Fold::admission`] said `Next`); `personal` is what
    /// `bookings::personal` opened for a `BookingRequested`.
    pub(crate) fn fold(
        &mut self,
        event: &Decoded,
        envelope: &EventEnvelope,
        personal: Option<Personal>,
    ) -> Applied {
        let id = envelope.aggregate_id;
        match event {
            Decoded::Facility(event) => facilities::fold(
                self.facilities.change(id),
                &mut self.reservations,
                event,
                envelope,
            ),
            Decoded::Booking(event) => {
                bookings::fold(self.bookings.change(id), event, envelope, personal);
            }
            Decoded::Payment(event) => payments::fold(self.payments.change(id), event, envelope),
            Decoded::Saga => return Applied::Ignored,
        }
        Applied::Changed
    }

    pub(crate) fn is_dirty(&self) -> bool {
        self.facilities.is_dirty()
            || self.reservations.is_dirty()
            || self.bookings.is_dirty()
            || self.payments.is_dirty()
    }

    /// Writes everything folded since the last flush: one statement per table (two for the
    /// calendar: its deletions and its upserts).
    pub(crate) async fn flush(&mut self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        self.facilities.flush(conn).await?;
        let (table, keys) = RESERVATIONS;
        self.reservations.flush(conn, table, keys).await?;
        self.bookings.flush(conn).await?;
        self.payments.flush(conn).await?;
        Ok(())
    }

    /// Drops what is held of one aggregate (after a flush), so that it is read again.
    pub(crate) fn forget(&mut self, aggregate_type: AggregateType, id: Uuid) {
        match aggregate_type {
            AggregateType::Facility => self.facilities.forget(id),
            AggregateType::Booking => self.bookings.forget(id),
            AggregateType::Payment => self.payments.forget(id),
            AggregateType::Saga => {}
        }
    }
}

/// Applies one validated envelope inside the caller's transaction: a [`Fold`] of one event,
/// flushed at once.
pub(crate) async fn apply(
    conn: &mut PgConnection,
    registry: &SchemaRegistry,
    keys: &privacy::KeyStore,
    envelope: &EventEnvelope,
) -> Result<Applied, ApplyError> {
    let event = Decoded::of(registry, envelope)?;
    if matches!(event, Decoded::Saga) {
        return Ok(Applied::Ignored);
    }
    let mut fold = Fold::default();
    fold.load(conn, &[(envelope.aggregate_type, envelope.aggregate_id)])
        .await?;
    match fold.admission(envelope) {
        Admission::Next => {}
        Admission::Stale => return Ok(Applied::Stale),
        Admission::Gap { expected } => return Ok(Applied::Gap { expected }),
    }
    let personal = match &event {
        Decoded::Booking(booking) => bookings::personal(keys, booking, envelope).await?,
        _ => None,
    };
    let applied = fold.fold(&event, envelope, personal);
    fold.flush(conn).await?;
    Ok(applied)
}

/// A time as PostgreSQL keeps it (microseconds, truncated as sqlx binds a time), so that a row
/// written through JSON equals one written through a bound parameter.
pub(crate) fn at(time: DateTime<Utc>) -> DateTime<Utc> {
    time.trunc_subsecs(6)
}

/// A value's wire form as text (`"chapel"`, `"Europe/London"`): the same string the log holds.
pub(crate) fn wire_text<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(text)) => text,
        Ok(other) => other.to_string(),
        Err(error) => unreachable!("domain values serialise: {error}"),
    }
}

/// A value's wire form as JSON, for JSONB columns.
pub(crate) fn wire_json<T: Serialize>(value: &T) -> serde_json::Value {
    serde_json::to_value(value)
        .unwrap_or_else(|error| unreachable!("domain values serialise: {error}"))
}

/// An event's sequence as the `BIGINT` stored in `version` columns.
pub(crate) fn version_of(envelope: &EventEnvelope) -> i64 {
    i64::try_from(envelope.sequence).unwrap_or(i64::MAX)
}
