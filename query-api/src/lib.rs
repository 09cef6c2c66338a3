//! The query-api: the read side's HTTP API over the PostgreSQL read models.
//!
//! Reads never touch the log. A client that just wrote can present the consistency token of its
//! command; the query then waits (bounded) until the projector has applied that log position.
//!
//! - [`startup`] — `Application::build` and `run_until_stopped`.
//! - [`settings`] — configuration.
//! - `consistency`: waiting for a consistency token.
//! - `routes`: one module per route group.
//! - `error`: the one `ApiError` and its mapping to problem+json.

mod consistency;
mod error;
mod routes;
pub mod settings;
pub mod startup;

pub use settings::Settings;
pub use startup::Application;
