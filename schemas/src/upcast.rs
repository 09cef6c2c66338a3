//! The upcasters: one pure function per `v<N> → v<N+1>` step of an event type's payload, and
//! the chain that brings a record of any version ever released up to the newest one, which is
//! the only shape the domain knows (docs/evolution.md, rules 2–5).
//!
//! [`crate::SchemaRegistry::decode`] is the only caller readers use: it validates a record
//! against the schema of its *own* version, runs the chain, checks the result against the
//! newest schema and decodes it. A step sees the record's payload and envelope, nothing else:
//! no database, no other event, no clock.

use domain::pricing::Statement;
use domain::values::Money;
use serde_json::{Map, Value};
use thiserror::Error;

use crate::EventEnvelope;

/// One step: how a payload of `event_type` at `from_version` becomes one at `from_version + 1`.
#[derive(Debug, Clone, Copy)]
pub struct Upcaster {
    pub event_type: &'static str,
    pub from_version: u16,
    /// The step itself. It receives a payload its version's schema accepted, so it never fails:
    /// a test runs every step on every committed fixture record and checks the result against
    /// the next version's schema.
    pub apply: fn(&EventEnvelope, Map<String, Value>) -> Map<String, Value>,
}

/// Every step ever written, in no particular order. A step is never removed: records of its
/// version stay on the log for ever.
pub const UPCASTERS: &[Upcaster] = &[
    Upcaster {
        event_type: "FacilityRegistered",
        from_version: 1,
        apply: facility_registered_v1_to_v2,
    },
    Upcaster {
        event_type: "BookingRequested",
        from_version: 1,
        apply: booking_requested_v1_to_v2,
    },
    Upcaster {
        event_type: "BookingRequested",
        from_version: 2,
        apply: booking_requested_v2_to_v3,
    },
];

/// `FacilityRegistered` v1 → v2: v2 names the funeral home the facility belongs to. A v1 record
/// cannot know it (the home is not in the record, and rule 5 forbids looking elsewhere), so it
/// upcasts to `null`: no home known.
fn facility_registered_v1_to_v2(
    _envelope: &EventEnvelope,
    mut data: Map<String, Value>,
) -> Map<String, Value> {
    data.insert("funeral_home_id".to_owned(), Value::Null);
    data
}

/// `BookingRequested` v2 → v3: v3 carries the itemised statement the server priced the booking
/// with (docs/pricing.md). A v2 booking was priced by its request, so its statement is one line,
/// `agreed_price`, for the price it carries, priced by no list. A price that is not money is left
/// as it is, without a statement: the record then fails to decode and is dead-lettered with that
/// reason, as it would have as v2.
fn booking_requested_v2_to_v3(
    _envelope: &EventEnvelope,
    mut data: Map<String, Value>,
) -> Map<String, Value> {
    let agreed = data
        .get("price")
        .cloned()
        .and_then(|price| serde_json::from_value::<Money>(price).ok())
        .map(Statement::agreed)
        .and_then(|statement| serde_json::to_value(statement).ok());
    if let Some(statement) = agreed {
        data.insert("statement".to_owned(), statement);
    }
    data
}

/// `BookingRequested` v1 → v2: v2 seals the people a booking names in `personal`. A step is pure
/// and has no key to encrypt with, so a v1 record's plaintext moves into `personal.plaintext`
/// (the form only upcasts produce), and the date of death, which stays in the clear, moves up
/// beside the slot. Readers treat that plaintext like an opened box: erased once the booking's
/// key row is marked erased (docs/privacy.md, "Logs written before this change").
fn booking_requested_v1_to_v2(
    _envelope: &EventEnvelope,
    mut data: Map<String, Value>,
) -> Map<String, Value> {
    let mut deceased = match data.remove("deceased") {
        Some(Value::Object(deceased)) => deceased,
        _ => Map::new(),
    };
    let contacts = data
        .remove("family_contacts")
        .unwrap_or(Value::Array(Vec::new()));
    if let Some(date) = deceased.remove("date_of_death") {
        data.insert("date_of_death".to_owned(), date);
    }
    let mut plaintext = Map::new();
    if let Some(name) = deceased.remove("full_name") {
        plaintext.insert("deceased_full_name".to_owned(), name);
    }
    plaintext.insert("family_contacts".to_owned(), contacts);
    let mut personal = Map::new();
    personal.insert("plaintext".to_owned(), Value::Object(plaintext));
    data.insert("personal".to_owned(), Value::Object(personal));
    data
}

/// A version this build has a schema for but no way up from: a defect of this crate, which its
/// tests catch (every version but the newest has a step).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("no upcaster from {event_type} v{from_version}")]
pub struct MissingUpcaster {
    pub event_type: String,
    pub from_version: u16,
}

/// The step from `event_type` at `from_version`, if there is one.
pub fn step(event_type: &str, from_version: u16) -> Option<&'static Upcaster> {
    UPCASTERS
        .iter()
        .find(|step| step.event_type == event_type && step.from_version == from_version)
}

/// `envelope` brought up to `newest` by applying every step in order. The envelope's metadata
/// is kept as it is; only `event_version` and `data` change. A payload that is not a JSON object
/// (which no schema accepts) is passed through unchanged for the schema check to refuse.
pub fn upcast(envelope: &EventEnvelope, newest: u16) -> Result<EventEnvelope, MissingUpcaster> {
    let mut current = envelope.clone();
    while current.event_version < newest {
        let Some(step) = step(&current.event_type, current.event_version) else {
            return Err(MissingUpcaster {
                event_type: current.event_type.clone(),
                from_version: current.event_version,
            });
        };
        current.data = match std::mem::take(&mut current.data) {
            Value::Object(data) => Value::Object((step.apply)(envelope, data)),
            other => other,
        };
        current.event_version += 1;
    }
    Ok(current)
}
