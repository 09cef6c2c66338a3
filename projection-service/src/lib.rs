//! The projection-service: folds the event log into PostgreSQL read models, effectively once.
//!
//! Records are applied in batches, one Postgres transaction per batch together with the new
//! offsets of every partition the batch touched, so a crash can neither skip nor double-apply an
//! event; each row remembers the last aggregate sequence applied, so a losing writer's event is
//! ignored and a gap is reported, never applied. Records that break the contract go to the
//! dead-letter topic with the reason, and the projector goes on. The read models are versioned
//! (one schema per version) so that a rebuild fills a new version beside the live one and
//! switches atomically (docs/read-side.md).
//!
//! - [`startup`] — `Application::build`, `run_until_stopped`, and `migrate`.
//! - [`settings`] — configuration.
//! - [`versions`] — read-model versions, their schemas, the rebuild request and the switch.
//! - `supervisor`: one projector per active version, following `projection_versions`.
//! - `projector`: the read models as the shared batch consumer's applier (`batch_consumer`),
//!   dead-lettering, the lag gauge and the rebuild's switch.
//! - `read_models`: one module per read model, each applying events to its tables.
//! - `routes`: `/ready` and the state it reads.

mod projector;
mod read_models;
mod routes;
pub mod settings;
pub mod startup;
mod supervisor;
pub mod versions;

pub use settings::Settings;
pub use startup::Application;
