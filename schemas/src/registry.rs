//! The embedded JSON Schemas and what they are used for: validating records read from the
//! wire before anything trusts them.

use std::collections::BTreeMap;

use jsonschema::Validator;
use serde_json::Value;
use thiserror::Error;

use crate::envelope::{AggregateType, EventEnvelope};
use crate::upcast;

/// One checked-in schema file: the event type and version it describes, and its text.
#[derive(Debug, Clone, Copy)]
pub struct SchemaFile {
    pub aggregate: &'static str,
    pub event_type: &'static str,
    pub event_version: u16,
    pub text: &'static str,
}

macro_rules! event_schema {
    ($aggregate:literal, $event_type:literal, $version:literal) => {
        SchemaFile {
            aggregate: $aggregate,
            event_type: $event_type,
            event_version: $version,
            text: include_str!(concat!(
                "../events/",
                $aggregate,
                "/",
                $event_type,
                ".v",
                stringify!($version),
                ".json"
            )),
        }
    };
}

/// The envelope's schema.
pub const ENVELOPE_SCHEMA: &str = include_str!("../envelope.v1.json");

/// Every event schema this build knows, every version ever released (a released one is never
/// removed or edited: `schemas/released.sha256`). A test checks this list against the files on
/// disk, and its newest versions against every event the domain can emit.
pub const EVENT_SCHEMAS: &[SchemaFile] = &[
    event_schema!("facility", "FacilityRegistered", 1),
    event_schema!("facility", "FacilityRegistered", 2),
    event_schema!("facility", "OpeningHoursChanged", 1),
    event_schema!("facility", "SlotReserved", 1),
    event_schema!("facility", "SlotRejected", 1),
    event_schema!("facility", "SlotReleased", 1),
    event_schema!("booking", "BookingRequested", 1),
    event_schema!("booking", "BookingRequested", 2),
    event_schema!("booking", "BookingRequested", 3),
    event_schema!("booking", "BookingSlotHeld", 1),
    event_schema!("booking", "BookingConfirmed", 1),
    event_schema!("booking", "BookingRejected", 1),
    event_schema!("booking", "BookingFailed", 1),
    event_schema!("booking", "BookingCancelled", 1),
    event_schema!("booking", "PersonalDataErased", 1),
    event_schema!("payment", "PaymentCaptured", 1),
    event_schema!("payment", "PaymentDeclined", 1),
    event_schema!("payment", "PaymentRefunded", 1),
    event_schema!("saga", "SagaParked", 1),
    event_schema!("saga", "SagaRetryRequested", 1),
    event_schema!("saga", "SagaStepSkipped", 1),
    event_schema!("saga", "SagaResolvedByHand", 1),
];

/// Why a record is not a valid event. The text is what the dead-letter topic records as the
/// reason, so it names the place in the document and the rule that failed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ContractViolation {
    #[error("not a JSON document: {0}")]
    NotJson(String),
    #[error("envelope invalid at '{path}': {message}")]
    Envelope { path: String, message: String },
    #[error("unknown event type {event_type} v{event_version}")]
    UnknownEvent {
        event_type: String,
        event_version: u16,
    },
    /// A known event type in an envelope of another aggregate type: every event type belongs to
    /// exactly one aggregate (its schema's `x-fm-aggregate`), whose streams alone may carry it.
    #[error("{event_type} is a {belongs_to} event, not a {aggregate_type} event")]
    WrongAggregate {
        event_type: String,
        aggregate_type: String,
        belongs_to: String,
    },
    #[error("{event_type} v{event_version} payload invalid at '{path}': {message}")]
    Payload {
        event_type: String,
        event_version: u16,
        path: String,
        message: String,
    },
    /// A record its own version's schema accepts, whose upcast to the newest version is refused
    /// by the newest schema or has no step: a defect of this build's upcasters (its tests run
    /// every step on every fixture), kept apart so that it is never mistaken for a bad writer.
    #[error("{event_type} v{event_version} does not upcast: {message}")]
    Upcast {
        event_type: String,
        event_version: u16,
        message: String,
    },
    #[error("{event_type} v{event_version} payload does not decode: {message}")]
    Decode {
        event_type: String,
        event_version: u16,
        message: String,
    },
}

impl ContractViolation {
    /// Whether the record names an (event type, version) this reader does not know: a record a
    /// newer release may have written, which a reader parks instead of refusing.
    pub fn is_unknown_event(&self) -> bool {
        matches!(self, Self::UnknownEvent { .. })
    }

    /// The violation without the offending values, for logs: where and which kind, never what
    /// (a schema message quotes the value, which may be a name, an e-mail address or a phone
    /// number). The full text stays with the dead letter.
    pub fn without_values(&self) -> String {
        match self {
            // serde_json's messages name a line and column, never the content.
            Self::NotJson(_) | Self::UnknownEvent { .. } | Self::WrongAggregate { .. } => {
                self.to_string()
            }
            Self::Envelope { path, .. } => format!("envelope invalid at '{path}'"),
            Self::Payload {
                event_type,
                event_version,
                path,
                ..
            } => format!("{event_type} v{event_version} payload invalid at '{path}'"),
            Self::Upcast {
                event_type,
                event_version,
                ..
            } => format!("{event_type} v{event_version} does not upcast"),
            Self::Decode {
                event_type,
                event_version,
                ..
            } => format!("{event_type} v{event_version} payload does not decode"),
        }
    }
}

/// A schema file that does not compile: a defect in this crate, caught by its tests.
#[derive(Debug, Error)]
#[error("schema for {name} does not compile: {message}")]
pub struct BrokenSchema {
    pub name: String,
    pub message: String,
}

/// One event type and version: the aggregate type whose streams carry it, and its payload's
/// validator.
#[derive(Debug)]
struct EventSchema {
    aggregate: AggregateType,
    validator: Validator,
}

/// The compiled schemas, ready to validate records.
#[derive(Debug)]
pub struct SchemaRegistry {
    envelope: Validator,
    /// The envelope's top-level fields: the only ones validated, so that a field a later
    /// release adds is ignored (docs/evolution.md, rule 7).
    envelope_fields: Vec<String>,
    events: BTreeMap<(&'static str, u16), EventSchema>,
    /// The newest version of each event type: the one the domain decodes.
    newest: BTreeMap<&'static str, u16>,
}

fn compile(name: &str, text: &str) -> Result<Validator, BrokenSchema> {
    let broken = |message: String| BrokenSchema {
        name: name.to_owned(),
        message,
    };
    let schema: Value = serde_json::from_str(text).map_err(|e| broken(e.to_string()))?;
    jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(&schema)
        .map_err(|e| broken(e.to_string()))
}

/// The aggregate type a schema file says its event type belongs to (`x-fm-aggregate`), which
/// must be the folder it sits in.
fn aggregate_of(name: &str, file: &SchemaFile) -> Result<AggregateType, BrokenSchema> {
    let broken = |message: String| BrokenSchema {
        name: name.to_owned(),
        message,
    };
    let schema: Value = serde_json::from_str(file.text).map_err(|e| broken(e.to_string()))?;
    let declared = schema
        .get("x-fm-aggregate")
        .and_then(Value::as_str)
        .ok_or_else(|| broken("no `x-fm-aggregate` naming its aggregate type".to_owned()))?;
    if declared != file.aggregate {
        return Err(broken(format!(
            "`x-fm-aggregate` is {declared:?} but the file is under events/{}",
            file.aggregate
        )));
    }
    AggregateType::from_wire(declared)
        .ok_or_else(|| broken(format!("unknown aggregate type {declared:?}")))
}

/// The top-level property names the envelope's schema declares.
fn envelope_fields(text: &str) -> Result<Vec<String>, BrokenSchema> {
    let broken = |message: &str| BrokenSchema {
        name: "envelope.v1".to_owned(),
        message: message.to_owned(),
    };
    let schema: Value = serde_json::from_str(text).map_err(|e| broken(&e.to_string()))?;
    let properties = schema
        .get("properties")
        .and_then(Value::as_object)
        .ok_or_else(|| broken("no `properties`"))?;
    Ok(properties.keys().cloned().collect())
}

/// The first error of a validator, as (path, message).
fn first_error(validator: &Validator, instance: &Value) -> Option<(String, String)> {
    validator
        .iter_errors(instance)
        .next()
        .map(|error| (error.instance_path.to_string(), error.to_string()))
}

impl SchemaRegistry {
    /// Compiles the embedded schemas.
    pub fn load() -> Result<Self, BrokenSchema> {
        let envelope = compile("envelope.v1", ENVELOPE_SCHEMA)?;
        let envelope_fields = envelope_fields(ENVELOPE_SCHEMA)?;
        let mut events = BTreeMap::new();
        let mut newest = BTreeMap::new();
        for file in EVENT_SCHEMAS {
            let name = format!("{}.v{}", file.event_type, file.event_version);
            let aggregate = aggregate_of(&name, file)?;
            events.insert(
                (file.event_type, file.event_version),
                EventSchema {
                    aggregate,
                    validator: compile(&name, file.text)?,
                },
            );
            let version = newest.entry(file.event_type).or_insert(file.event_version);
            *version = (*version).max(file.event_version);
        }
        Ok(Self {
            envelope,
            envelope_fields,
            events,
            newest,
        })
    }

    /// Parses and validates a record's value: the envelope against its schema, then the payload
    /// against the schema of its event type and version.
    pub fn validate_bytes(&self, bytes: &[u8]) -> Result<EventEnvelope, ContractViolation> {
        let document: Value =
            serde_json::from_slice(bytes).map_err(|e| ContractViolation::NotJson(e.to_string()))?;
        self.validate(&document)
    }

    /// Validates a parsed document and returns the envelope it holds.
    ///
    /// The envelope is read tolerantly: top-level fields its schema does not name are dropped
    /// before it is validated, so a release that adds an optional envelope field can run beside
    /// this one (docs/evolution.md, rule 7). Everything inside a known field stays strict.
    pub fn validate(&self, document: &Value) -> Result<EventEnvelope, ContractViolation> {
        let envelope = self.validate_envelope(document)?;
        self.validate_payload(&envelope)?;
        Ok(envelope)
    }

    /// Parses a record's value and validates its envelope only, not the payload: what a reader
    /// needs to park a record whose (type, version) it does not know (docs/evolution.md,
    /// "Unknown is parked, not skipped"). The payload is checked later by [`Self::upcast`].
    pub fn validate_envelope_bytes(
        &self,
        bytes: &[u8],
    ) -> Result<EventEnvelope, ContractViolation> {
        let document: Value =
            serde_json::from_slice(bytes).map_err(|e| ContractViolation::NotJson(e.to_string()))?;
        self.validate_envelope(&document)
    }

    /// The envelope of a parsed document, validated tolerantly (see [`Self::validate`]).
    fn validate_envelope(&self, document: &Value) -> Result<EventEnvelope, ContractViolation> {
        let known = match document {
            Value::Object(fields) => Value::Object(
                fields
                    .iter()
                    .filter(|(name, _)| self.envelope_fields.contains(name))
                    .map(|(name, value)| (name.clone(), value.clone()))
                    .collect(),
            ),
            other => other.clone(),
        };
        if let Some((path, message)) = first_error(&self.envelope, &known) {
            return Err(ContractViolation::Envelope { path, message });
        }
        let envelope: EventEnvelope =
            serde_json::from_value(known).map_err(|e| ContractViolation::Envelope {
                path: String::new(),
                message: e.to_string(),
            })?;
        Ok(envelope)
    }

    /// Validates the payload of an envelope that is already parsed: its event type is known,
    /// belongs to the envelope's aggregate type, and its `data` matches the type's schema.
    pub fn validate_payload(&self, envelope: &EventEnvelope) -> Result<(), ContractViolation> {
        let schema = self
            .events
            .get(&(envelope.event_type.as_str(), envelope.event_version))
            .ok_or_else(|| ContractViolation::UnknownEvent {
                event_type: envelope.event_type.clone(),
                event_version: envelope.event_version,
            })?;
        if schema.aggregate != envelope.aggregate_type {
            return Err(ContractViolation::WrongAggregate {
                event_type: envelope.event_type.clone(),
                aggregate_type: envelope.aggregate_type.to_string(),
                belongs_to: schema.aggregate.to_string(),
            });
        }
        match first_error(&schema.validator, &envelope.data) {
            Some((path, message)) => Err(ContractViolation::Payload {
                event_type: envelope.event_type.clone(),
                event_version: envelope.event_version,
                path,
                message,
            }),
            None => Ok(()),
        }
    }

    /// The record brought up to the newest version of its type (docs/evolution.md): validated
    /// against its own version's schema, upcast step by step, and checked against the newest
    /// schema. A record already at the newest version is only validated.
    pub fn upcast(&self, envelope: &EventEnvelope) -> Result<EventEnvelope, ContractViolation> {
        self.validate_payload(envelope)?;
        let newest = self
            .newest
            .get(envelope.event_type.as_str())
            .copied()
            .unwrap_or(envelope.event_version);
        if envelope.event_version >= newest {
            return Ok(envelope.clone());
        }
        let failed = |message: String| ContractViolation::Upcast {
            event_type: envelope.event_type.clone(),
            event_version: envelope.event_version,
            message,
        };
        let current = upcast::upcast(envelope, newest).map_err(|e| failed(e.to_string()))?;
        self.validate_payload(&current)
            .map_err(|e| failed(e.to_string()))?;
        Ok(current)
    }

    /// The one way readers turn a record into a domain event: [`Self::upcast`] to the newest
    /// version, then the typed domain event rebuilt from it.
    pub fn decode<E: domain::aggregate::DomainEvent>(
        &self,
        envelope: &EventEnvelope,
    ) -> Result<E, ContractViolation> {
        let current = self.upcast(envelope)?;
        current.event().map_err(|e| ContractViolation::Decode {
            event_type: envelope.event_type.clone(),
            event_version: envelope.event_version,
            message: e.to_string(),
        })
    }

    /// Everything a reader checks before it trusts a record: [`Self::validate_bytes`], then the
    /// payload decoded into its aggregate's domain event, which checks what a schema cannot
    /// (an IANA time zone that exists, a slot that ends after it starts, ...). A record that
    /// passes its schemas but fails here is as much poison as one that does not parse.
    pub fn check_bytes(&self, bytes: &[u8]) -> Result<EventEnvelope, ContractViolation> {
        let envelope = self.validate_bytes(bytes)?;
        self.check_decodes(&envelope)?;
        Ok(envelope)
    }

    /// Decodes a validated envelope's payload into its aggregate's domain event and drops it:
    /// whether a reader could use it.
    pub fn check_decodes(&self, envelope: &EventEnvelope) -> Result<(), ContractViolation> {
        use domain::{
            booking::BookingEvent, facility::FacilityEvent, payment::PaymentEvent, saga::SagaEvent,
        };
        match envelope.aggregate_type {
            AggregateType::Facility => self.decode::<FacilityEvent>(envelope).map(drop),
            AggregateType::Booking => self.decode::<BookingEvent>(envelope).map(drop),
            AggregateType::Payment => self.decode::<PaymentEvent>(envelope).map(drop),
            AggregateType::Saga => self.decode::<SagaEvent>(envelope).map(drop),
        }
    }

    /// The aggregate type whose streams carry `event_type` (at any version this build knows).
    pub fn aggregate_of(&self, event_type: &str) -> Option<AggregateType> {
        self.events
            .iter()
            .find(|((known, _), _)| *known == event_type)
            .map(|(_, schema)| schema.aggregate)
    }

    /// The (event type, version) pairs this registry knows: every version ever released.
    pub fn known_events(&self) -> impl Iterator<Item = (&'static str, u16)> + '_ {
        self.events.keys().copied()
    }

    /// Whether this registry has a schema for `event_type` at `event_version`.
    pub fn knows(&self, event_type: &str, event_version: u16) -> bool {
        self.events
            .keys()
            .any(|(known, version)| *known == event_type && *version == event_version)
    }

    /// This registry without `event_type` at `event_version` and every later version of it: a
    /// reader of an older release, which never learnt that version (test-only).
    #[cfg(any(test, feature = "testing"))]
    #[must_use]
    pub fn without(mut self, event_type: &str, event_version: u16) -> Self {
        self.events
            .retain(|(known, version), _| *known != event_type || *version < event_version);
        self.newest.clear();
        for (known, version) in self.events.keys() {
            let newest = self.newest.entry(*known).or_insert(*version);
            *newest = (*newest).max(*version);
        }
        self
    }

    /// Each event type with its newest version: what the domain writes and decodes.
    pub fn newest_events(&self) -> impl Iterator<Item = (&'static str, u16)> + '_ {
        self.newest
            .iter()
            .map(|(event_type, version)| (*event_type, *version))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // A test fails loudly on any unexpected error; that is the point.

    use domain::facility::FacilityEvent;
    use serde_json::json;
    use uuid::Uuid;

    use super::{AggregateType, SchemaRegistry};

    #[test]
    fn a_registry_without_a_version_finds_it_unknown_but_reads_its_envelope_and_older_versions() {
        let full = SchemaRegistry::load().unwrap();
        let old = SchemaRegistry::load()
            .unwrap()
            .without("FacilityRegistered", 2);
        assert!(full.knows("FacilityRegistered", 2));
        assert!(!old.knows("FacilityRegistered", 2) && old.knows("FacilityRegistered", 1));
        let envelope = crate::fixtures::envelope(
            AggregateType::Facility,
            Uuid::new_v4(),
            1,
            &domain::fixtures::facility_registered(),
        );
        assert_eq!(envelope.event_version, 2);
        let bytes = serde_json::to_vec(&envelope).unwrap();
        full.validate_bytes(&bytes).unwrap();
        // What a reader parks: an unknown version in a valid envelope.
        let violation = old.validate_bytes(&bytes).unwrap_err();
        assert!(violation.is_unknown_event(), "{violation}");
        assert_eq!(
            old.validate_envelope_bytes(&bytes).unwrap().event_id,
            envelope.event_id
        );
        // The old reader still reads v1, its newest.
        let mut v1 = envelope.clone();
        v1.event_version = 1;
        v1.data.as_object_mut().unwrap().remove("funeral_home_id");
        let event: FacilityEvent = old.decode(&v1).unwrap();
        assert_eq!(event, domain::fixtures::facility_registered());
        // A payload its own version's schema refuses is not unknown: it is a dead letter.
        let mut refused = envelope;
        refused.data["capacity"] = json!("many");
        assert!(
            !full
                .validate_payload(&refused)
                .unwrap_err()
                .is_unknown_event()
        );
        assert!(
            old.validate_envelope_bytes(b"{\"not\": \"an envelope\"}")
                .is_err()
        );
    }
}
