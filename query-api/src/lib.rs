//! The query-api: the read side's HTTP API over the PostgreSQL read models.
//!
//! Reads never touch the log. A client that just wrote can present the consistency token of its
//! command; the query then waits (bounded) until the projector has applied that log position.
//!
//! - [`startup`] — `Application::build` and `run_until_stopped`.
//! - [`settings`] — configuration.
//! - `consistency`: waiting for a consistency token.
//! - `params`: query parameters as 422 problems naming the parameter; the opaque cursor.
//! - `calendar`: free windows from opening hours, held slots and the turnaround buffer.
//! - `routes`: one module per route group.
//! - `error`: the one `ApiError` and its mapping to problem+json.
//!
//! All reads go through the `live` schema: views onto the read-model version that is live, so a
//! rebuild switches every query (and the consistency wait) at once (docs/read-side.md).

mod calendar;
mod consistency;
mod error;
mod params;
mod routes;
pub mod settings;
pub mod startup;

pub use settings::Settings;
pub use startup::Application;
