//! The embedded JSON Schemas and what they are used for: validating records read from the
//! wire before anything trusts them.

use std::collections::BTreeMap;

use jsonschema::Validator;
use serde_json::Value;
use thiserror::Error;

use crate::envelope::EventEnvelope;

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

/// Every event schema this build knows. A test checks this list against the files on disk and
/// against every event type the domain can emit, so neither can drift from the other.
pub const EVENT_SCHEMAS: &[SchemaFile] = &[
    event_schema!("facility", "FacilityRegistered", 1),
    event_schema!("facility", "OpeningHoursChanged", 1),
    event_schema!("facility", "SlotReserved", 1),
    event_schema!("facility", "SlotRejected", 1),
    event_schema!("facility", "SlotReleased", 1),
    event_schema!("booking", "BookingRequested", 1),
    event_schema!("booking", "BookingSlotHeld", 1),
    event_schema!("booking", "BookingConfirmed", 1),
    event_schema!("booking", "BookingRejected", 1),
    event_schema!("booking", "BookingFailed", 1),
    event_schema!("booking", "BookingCancelled", 1),
    event_schema!("payment", "PaymentCaptured", 1),
    event_schema!("payment", "PaymentDeclined", 1),
    event_schema!("payment", "PaymentRefunded", 1),
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
    #[error("{event_type} v{event_version} payload invalid at '{path}': {message}")]
    Payload {
        event_type: String,
        event_version: u16,
        path: String,
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
    /// The violation without the offending values, for logs: where and which kind, never what
    /// (a schema message quotes the value, which may be a name, an e-mail address or a phone
    /// number). The full text stays with the dead letter.
    pub fn without_values(&self) -> String {
        match self {
            // serde_json's messages name a line and column, never the content.
            Self::NotJson(_) | Self::UnknownEvent { .. } => self.to_string(),
            Self::Envelope { path, .. } => format!("envelope invalid at '{path}'"),
            Self::Payload {
                event_type,
                event_version,
                path,
                ..
            } => format!("{event_type} v{event_version} payload invalid at '{path}'"),
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

/// The compiled schemas, ready to validate records.
#[derive(Debug)]
pub struct SchemaRegistry {
    envelope: Validator,
    events: BTreeMap<(&'static str, u16), Validator>,
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
        let mut events = BTreeMap::new();
        for file in EVENT_SCHEMAS {
            let name = format!("{}.v{}", file.event_type, file.event_version);
            events.insert(
                (file.event_type, file.event_version),
                compile(&name, file.text)?,
            );
        }
        Ok(Self { envelope, events })
    }

    /// Parses and validates a record's value: the envelope against its schema, then the payload
    /// against the schema of its event type and version.
    pub fn validate_bytes(&self, bytes: &[u8]) -> Result<EventEnvelope, ContractViolation> {
        let document: Value =
            serde_json::from_slice(bytes).map_err(|e| ContractViolation::NotJson(e.to_string()))?;
        self.validate(&document)
    }

    /// Validates a parsed document and returns the envelope it holds.
    pub fn validate(&self, document: &Value) -> Result<EventEnvelope, ContractViolation> {
        if let Some((path, message)) = first_error(&self.envelope, document) {
            return Err(ContractViolation::Envelope { path, message });
        }
        let envelope: EventEnvelope =
            serde_json::from_value(document.clone()).map_err(|e| ContractViolation::Envelope {
                path: String::new(),
                message: e.to_string(),
            })?;
        self.validate_payload(&envelope)?;
        Ok(envelope)
    }

    /// Validates the payload of an envelope that is already parsed.
    pub fn validate_payload(&self, envelope: &EventEnvelope) -> Result<(), ContractViolation> {
        let validator = self
            .events
            .get(&(envelope.event_type.as_str(), envelope.event_version))
            .ok_or_else(|| ContractViolation::UnknownEvent {
                event_type: envelope.event_type.clone(),
                event_version: envelope.event_version,
            })?;
        match first_error(validator, &envelope.data) {
            Some((path, message)) => Err(ContractViolation::Payload {
                event_type: envelope.event_type.clone(),
                event_version: envelope.event_version,
                path,
                message,
            }),
            None => Ok(()),
        }
    }

    /// Validates the payload, then rebuilds the typed domain event.
    pub fn decode<E: domain::aggregate::DomainEvent>(
        &self,
        envelope: &EventEnvelope,
    ) -> Result<E, ContractViolation> {
        self.validate_payload(envelope)?;
        envelope.event().map_err(|e| ContractViolation::Decode {
            event_type: envelope.event_type.clone(),
            event_version: envelope.event_version,
            message: e.to_string(),
        })
    }

    /// The (event type, version) pairs this registry knows.
    pub fn known_events(&self) -> impl Iterator<Item = (&'static str, u16)> + '_ {
        self.events.keys().copied()
    }
}
