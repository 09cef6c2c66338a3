//! What every Funeral Manager service shares at run time, so that each service's own code is
//! only its routes and its domain wiring.
//!
//! - [`settings`] — typed configuration (defaults, then an optional file, then `FM_SECTION__KEY`
//!   environment variables) and the sections every service uses.
//! - [`telemetry`] — JSON or pretty structured logs; spans with a trace context, exported over
//!   OTLP when an endpoint is configured.
//! - [`trace`] — `traceparent`, correlation and causation ids across HTTP and Kafka headers.
//! - [`shutdown`] — the shutdown token every long-running loop takes, tripped by SIGTERM/Ctrl-C.
//! - [`startup`] — the one `main` every service binary shares ([`startup::Service`]).
//! - [`auth`] — bearer tokens with roles; minting and checking them.
//! - [`problem`] — RFC 9457 `application/problem+json` bodies.
//! - [`json`] — a JSON body extractor whose rejections name the field and the rule.
//! - [`path`] — a path-parameter extractor whose rejections name the parameter.
//! - [`openapi`] — the responses and headers every operation of a document shares.
//! - [`digest`] — SHA-256 hex digests for request fingerprints and content ETags.
//! - [`rate_limit`] — request rates per token subject and per client address (governor), the
//!   429 answer with `Retry-After`, and `rate_limited_total`.
//! - [`http`] — serving a router with limits, timeouts, tracing and metrics; `/health`,
//!   `/metrics` and the readiness report.
//! - [`Allocator`] — the memory allocator every service binary declares as its global one.

pub mod auth;
pub mod database;
pub mod digest;
pub mod http;
pub mod json;
pub mod openapi;
pub mod path;
pub mod problem;
pub mod rate_limit;
pub mod settings;
pub mod shutdown;
pub mod startup;
pub mod telemetry;
pub mod trace;

/// The allocator every service binary declares (`#[global_allocator]`): jemalloc, built to
/// replace `malloc` in the whole process, so librdkafka's buffers come from it too, with
/// background threads that give freed pages back to the system a second after they fall
/// idle (`.cargo/config.toml`). glibc's `malloc` kept the pages a replay had freed: a
/// command-service that had replayed 1 M events held a hundred MiB more than the same store
/// restored from a snapshot (docs/memory.md, "The allocator").
pub use tikv_jemallocator::Jemalloc as Allocator;
