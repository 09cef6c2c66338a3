//! The command-service: the write side of Funeral Manager.
//!
//! It keeps every aggregate's state folded from the log, decides commands against it with the
//! pure domain, appends the resulting events to Kafka, and answers only after reading its own
//! event back admitted (`docs/consistency.md`).
//!
//! - [`startup`] — `Application::build` and `run_until_stopped`.
//! - [`settings`] — configuration.
//! - `store`: the aggregate store and the tailer that feeds it from the log.
//! - `lag`: how far the tailer is behind the end of the log (`/ready` and a gauge).
//! - `snapshot`: the store's snapshot on the replica's disk, so that start-up does not replay
//!   all history.
//! - `commands`: the write path (check the contract, decide, append, confirm) and what became
//!   of a command (`CommandOutcome`).
//! - `routes`: the router and the state its handlers share; one module per route group, where
//!   DTOs become domain commands.
//! - `invitations`: families by invitation (docs/identity.md): invitations by the hash of their
//!   code in PostgreSQL, the family-session signing key, exchange, refresh and revocation.
//! - `pricing`: the funeral homes' price lists in PostgreSQL (docs/pricing.md), which price
//!   every booking request.
//! - `error`: the one `ApiError` and its mapping to problem+json.
//! - `metrics`: command outcomes by command name, append latency.

mod commands;
mod error;
mod invitations;
mod lag;
mod metrics;
mod pricing;
mod routes;
pub mod settings;
mod snapshot;
pub mod startup;
mod store;

pub use settings::Settings;
pub use startup::Application;
