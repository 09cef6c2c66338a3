//! The envelope every event travels in.

use std::fmt;

use chrono::{DateTime, Utc};
use domain::aggregate::DomainEvent;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The four kinds of event stream. Each has its own topic; the record key is the aggregate id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AggregateType {
    Facility,
    Booking,
    Payment,
    /// What operators (and the saga runner) decided about a booking's saga (docs/saga.md).
    Saga,
}

impl AggregateType {
    /// Every aggregate type, in a stable order.
    pub const ALL: [AggregateType; 4] = [Self::Facility, Self::Booking, Self::Payment, Self::Saga];

    /// The name used on the wire and in topic names.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Facility => "facility",
            Self::Booking => "booking",
            Self::Payment => "payment",
            Self::Saga => "saga",
        }
    }

    /// Parses the wire name; `None` for anything else.
    pub fn from_wire(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == name)
    }
}

impl fmt::Display for AggregateType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The role a bearer token grants; `system` is for the services' own commands (the saga).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Director,
    Family,
    Ops,
    System,
}

impl Role {
    /// The name used on the wire and in tokens.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Director => "director",
            Self::Family => "family",
            Self::Ops => "ops",
            Self::System => "system",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who caused an event: the subject of the bearer token (an opaque id, never a name or an
/// e-mail address, so that the log carries no personal data in its metadata) and its role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Actor {
    pub subject: String,
    pub role: Role,
}

impl Actor {
    /// The actor for commands a service issues on its own behalf.
    pub fn system(service: &str) -> Self {
        Self {
            subject: service.to_owned(),
            role: Role::System,
        }
    }
}

/// The metadata a writer supplies for the events of one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventMetadata {
    /// Groups every event of one business flow (one booking's saga), across aggregates.
    pub correlation_id: Uuid,
    /// The command or event that directly caused these events.
    pub causation_id: Uuid,
    pub actor: Actor,
    pub occurred_at: DateTime<Utc>,
    pub idempotency: Option<Idempotency>,
}

impl EventMetadata {
    /// Metadata for events a service writes on its own behalf, starting a new flow now.
    pub fn system(service: &str) -> Self {
        let id = Uuid::new_v4();
        Self {
            correlation_id: id,
            causation_id: id,
            actor: Actor::system(service),
            occurred_at: Utc::now(),
            idempotency: None,
        }
    }
}

/// One event as it is stored on its topic.
///
/// `sequence` is the event's position in its aggregate's stream, starting at 1. Readers admit an
/// event only if it is the next one after the last admitted event of the aggregate (see
/// `docs/consistency.md`), which is how racing writers are resolved the same way everywhere.
///
/// Unknown top-level fields are ignored, not refused (docs/evolution.md, rule 7).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventEnvelope {
    pub event_id: Uuid,
    pub event_type: String,
    pub event_version: u16,
    pub aggregate_type: AggregateType,
    pub aggregate_id: Uuid,
    pub sequence: u64,
    pub occurred_at: DateTime<Utc>,
    pub correlation_id: Uuid,
    pub causation_id: Uuid,
    pub actor: Actor,
    /// Present when the command carried an `Idempotency-Key`: lets any writer, even after a
    /// restart, recognise a retry and answer it with the first outcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency: Option<Idempotency>,
    pub data: serde_json::Value,
}

/// The client's idempotency key for the command that caused an event, scoped to the caller.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Idempotency {
    /// The `Idempotency-Key` header as sent.
    pub key: String,
    /// A digest of the request (method, route and canonical body): the same key with a
    /// different request is refused rather than answered with someone else's outcome.
    pub fingerprint: String,
}

impl EventEnvelope {
    /// Wraps a domain event. Serialising a domain event cannot fail for our types (plain data,
    /// string map keys); a failure would be a programming error caught by the schema tests.
    pub fn wrap<E: DomainEvent>(
        aggregate_type: AggregateType,
        aggregate_id: Uuid,
        sequence: u64,
        event: &E,
        metadata: &EventMetadata,
    ) -> Result<Self, serde_json::Error> {
        let tagged = serde_json::to_value(event)?;
        let data = tagged
            .get("data")
            .cloned()
            .unwrap_or(serde_json::Value::Null);
        Ok(Self {
            event_id: Uuid::new_v4(),
            event_type: event.event_type().to_owned(),
            event_version: event.event_version(),
            aggregate_type,
            aggregate_id,
            sequence,
            occurred_at: metadata.occurred_at,
            correlation_id: metadata.correlation_id,
            causation_id: metadata.causation_id,
            actor: metadata.actor.clone(),
            idempotency: metadata.idempotency.clone(),
            data,
        })
    }

    /// Rebuilds the typed domain event from `event_type` and `data`.
    ///
    /// This trusts the payload's shape; call [`crate::SchemaRegistry::validate`] first on
    /// anything read from the wire.
    pub fn event<E: DomainEvent>(&self) -> Result<E, serde_json::Error> {
        serde_json::from_value(serde_json::json!({
            "event_type": self.event_type,
            "data": self.data,
        }))
    }
}
