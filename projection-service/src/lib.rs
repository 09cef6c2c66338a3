//! The projection-service: folds the event log into PostgreSQL read models, effectively once.
//!
//! Each record is applied in one Postgres transaction together with the new offset of its
//! partition, so a crash can neither skip nor double-apply an event; each row remembers the last
//! aggregate sequence applied, so a redelivered or losing event is ignored. Records that break
//! the contract go to the dead-letter topic with the reason, and the projector goes on.
//!
//! - [`startup`] — `Application::build`, `run_until_stopped`, and `migrate`.
//! - [`settings`] — configuration.
//! - `projector`: the consume-apply-commit loop and dead-lettering.
//! - `read_models`: one module per read model, each applying events to its tables.

mod projector;
mod read_models;
pub mod settings;
pub mod startup;

pub use settings::Settings;
pub use startup::Application;
