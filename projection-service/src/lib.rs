//! The projection-service: folds the event log into PostgreSQL read models, effectively once.
//!
//! Records are applied in batches, one Postgres transaction per batch together with the new
//! offsets of every partition the batch touched, so a crash can neither skip nor double-apply an
//! event; each row remembers the last aggregate sequence applied, so a losing writer's event is
//! ignored; a gap, or an event this release does not know, parks its aggregate until it can be
//! applied in order, while every other aggregate goes on. Records that break the contract go to the
//! dead-letter topic with the reason, and the projector goes on. The read models' shape is a
//! version declared by this code ([`read_model`]); each version is filled by builds, one schema
//! each, so that a new release builds its version beside the one an older release keeps
//! current, and a rebuild fills a new build beside the live one and switches atomically
//! (docs/read-side.md).
//!
//! - [`startup`] — `Application::build`, `run_until_stopped`, and `migrate`.
//! - [`settings`] — configuration.
//! - [`read_model`] — the version this release builds, with its DDL.
//! - [`versions`] — versions and builds: declaring, the rebuild request, the switch, dropping
//!   what no query-api reads, the status `fmctl` shows.
//! - `supervisor`: one projector per active build of this release's version, and the drops.
//! - [`parking`] — records this release cannot apply yet park their aggregate, in order, until
//!   they can (docs/evolution.md); what `/ready` and `fmctl parked` show of them.
//! - `projector`: the read models as the shared batch consumer's applier (`batch_consumer`),
//!   dead-lettering, the lag gauge and the build's switch.
//! - `batch`: a batch folded in memory and written with one statement per table.
//! - `read_models`: one module per read model, each applying events to its tables.
//! - `routes`: `/ready` and the state it reads.

mod batch;
pub mod parking;
mod projector;
pub mod read_model;
mod read_models;
mod routes;
pub mod settings;
pub mod startup;
mod supervisor;
pub mod versions;

pub use read_model::READ_MODEL;
pub use settings::Settings;
pub use startup::Application;
