//! The wire contract of Funeral Manager: what travels on Kafka and what a client may hold on to.
//!
//! Every event on a topic is one JSON [`EventEnvelope`]: who/what/when metadata around the
//! domain event's payload (`data`). The payload of each event type and version is described by a
//! JSON Schema checked in under `schemas/events/<aggregate>/<EventType>.v<N>.json`; the
//! envelope by `schemas/envelope.v1.json`. Consumers validate against them before trusting a
//! record, and a changed event that did not change its schema fails this crate's tests. A
//! released schema never changes (`schemas/released.sha256`); a new shape is a new version, and
//! readers upcast older records to the newest (docs/evolution.md).
//!
//! - [`envelope`] — the envelope, the actor and the aggregate types.
//! - `fixtures` (feature `testing`) — whole event streams for tests and benchmarks.
//! - [`registry`] — the embedded schemas, validation, and typed encoding/decoding of events.
//! - [`token`] — the consistency token a command returns and a query may present.
//! - [`upcast`] — the `v<N> → v<N+1>` steps that bring every released version to the newest.

pub mod envelope;
#[cfg(any(test, feature = "testing"))]
pub mod fixtures;
pub mod registry;
pub mod token;
pub mod upcast;

pub use envelope::{Actor, AggregateType, EventEnvelope, EventMetadata, Idempotency, Role};
pub use registry::{ContractViolation, SchemaRegistry};
pub use token::ConsistencyToken;
