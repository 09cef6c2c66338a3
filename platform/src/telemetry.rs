//! Structured logs.

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

use crate::settings::{LogFormat, LogSettings};

/// Installs the global subscriber. Safe to call more than once (tests build several services in
/// one process): later calls leave the first subscriber in place.
pub fn init(settings: &LogSettings) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(settings.filter.clone()));
    let registry = tracing_subscriber::registry().with(filter);
    let result = match settings.format {
        LogFormat::Json => registry
            .with(fmt::layer().json().flatten_event(true))
            .try_init(),
        LogFormat::Pretty => registry.with(fmt::layer()).try_init(),
    };
    // Err only means a subscriber is already installed, which is what we want.
    drop(result);
}
