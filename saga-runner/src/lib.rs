//! The booking saga's process manager: its own binary, port 8084.
//!
//! It reads the booking, facility and payment topics, keeps what it learns about each booking
//! in PostgreSQL (schema `saga`), and drives every booking to an outcome through the
//! command-service's internal routes (with a `system` token), the payment gateway and SMTP.
//! docs/saga.md is the design; this is the map:
//!
//! - [`saga`]: the pure state machine (facts in, one next step out). No I/O.
//! - [`store`]: the saga rows, offsets and per-aggregate sequences in PostgreSQL.
//! - [`consumer`]: log → facts, offsets in the same transaction as the facts they changed.
//! - `parking`: the records the consumer cannot take yet, kept in order (docs/evolution.md).
//! - [`worker`]: picks sagas whose next step is due and performs it, one booking at a time.
//! - [`actions`]: performing a step: the command-service client, the gateway, the mailer; and
//!   what a failure means (unavailable, refused for now, permanent).
//! - [`reconcile`]: the gateway's captures compared with the log on a schedule.
//! - [`retention`]: the privacy job: personal data erased past its retention period, data keys
//!   of requests that never reached the log removed (docs/privacy.md).
//! - `routes`: `/ready`, the ops view (`GET /sagas`, `GET /sagas/{booking_id}`), operators'
//!   actions (`POST /sagas/{booking_id}/park | retry | skip | resolve`) and the reconciliation
//!   (`GET`/`POST /reconciliation`).
//! - [`settings`], [`startup`]: configuration and `Application::build` / `run_until_stopped`.

pub mod actions;
pub mod consumer;
mod parking;
pub mod reconcile;
pub mod retention;
mod routes;
pub mod saga;
pub mod settings;
pub mod startup;
pub mod store;
pub mod worker;

pub use settings::Settings;
pub use startup::Application;
