//! The query-api: the read side's HTTP API over the PostgreSQL read models.
//!
//! Reads never touch the log. A client that just wrote can present the consistency token of its
//! command; the query then waits (bounded) until the projector has applied that log position.
//!
//! - [`startup`] — `Application::build` and `run_until_stopped`.
//! - [`settings`] — configuration.
//! - [`read_model`] — the read-model version it reads, and its registration as that version's
//!   reader.
//! - `consistency`: waiting for a consistency token.
//! - `params`: query parameters as 422 problems naming the parameter; the opaque cursor.
//! - `calendar`: free windows from opening hours, held slots and the turnaround buffer.
//! - `tenancy`: the caller's reach (homes, own bookings) as SQL beside each query's filters.
//! - `routes`: one module per route group.
//! - `error`: the one `ApiError` and its mapping to problem+json.
//!
//! All reads go through the views of the one read-model version this release's code declares
//! (`read_v<V>`, the connections' only schema): never another shape, and a rebuild of that
//! version switches every query (and the consistency wait) at once (docs/read-side.md).

mod calendar;
mod consistency;
mod error;
mod params;
pub mod read_model;
mod routes;
pub mod settings;
pub mod startup;
mod tenancy;

pub use settings::Settings;
pub use startup::Application;
