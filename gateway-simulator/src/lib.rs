//! The payment gateway simulator: a fake payment provider over HTTP that tests drive over real
//! sockets (default port 8090). It captures and refunds with idempotency keys, keeps a ledger
//! so tests can count money, and can be told to approve, decline, answer slowly, fail with 5xx,
//! time out, or capture and then time out — globally or per booking. State is in memory: it is
//! a simulator. The API is described in `docs/payments.md` and served at `/openapi.json`.
//!
//! - [`startup`] — `Application::build` and `run_until_stopped`.
//! - [`settings`] — configuration (`FM_HTTP__PORT`, `FM_SIMULATOR__HANG`, ...).
//! - [`ledger`] — the pure state: keys seen and their first answers, captures, refunds,
//!   behaviours.
//! - `routes`: the router and its state ([`SimulatorState`], the memory a restarted simulator
//!   can keep); `payments` (captures, refunds, lookups, the ledger), `control` (behaviours),
//!   `ops` (`/ready`, `/openapi.json`).
//! - `error`: the one `ApiError` and its mapping to problem+json.

mod error;
pub mod ledger;
mod routes;
pub mod settings;
pub mod startup;

pub use ledger::{Behaviour, Mode};
pub use routes::SimulatorState;
pub use settings::Settings;
pub use startup::Application;
