//! What a run needs to know: where the broker, PostgreSQL and the service binaries are, which
//! ports to use, and how big each measurement is (`--quick` or the full run).

use std::path::PathBuf;

use anyhow::Context;
use event_log::KafkaSettings;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The signing secret of every service a run starts (tokens are minted with it).
pub(crate) const SECRET: &str = "fm-bench-secret-0123456789abcdef0123456789";

/// How big each measurement is.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Sizes {
    /// `quick` or `full`.
    pub mode: String,
    /// Each measurement is repeated this many times; figures are the median and the range.
    pub repetitions: usize,
    /// Concurrent HTTP clients (and produces in flight for the raw baselines).
    pub clients: usize,
    /// `POST /bookings` per repetition (and records per raw baseline).
    pub booking_requests: usize,
    /// Facilities the bookings are spread over.
    pub facilities: usize,
    /// Concurrent clients measuring command-to-query latency.
    pub latency_clients: usize,
    /// Bookings per latency mode and repetition.
    pub latency_samples: usize,
    /// How often a latency client polls for its booking.
    pub poll_interval_ms: u64,
    /// Events replayed by the projection rebuild.
    pub replay_events: u64,
    /// Seconds of each query load.
    pub query_seconds: u64,
    /// Sizes of the log at which each service's memory is measured, ascending.
    pub memory_events: Vec<u64>,
}

impl Sizes {
    pub(crate) fn quick() -> Self {
        Self {
            mode: "quick".into(),
            repetitions: 2,
            clients: 32,
            booking_requests: 400,
            facilities: 8,
            latency_clients: 4,
            latency_samples: 40,
            poll_interval_ms: 5,
            replay_events: 10_000,
            query_seconds: 3,
            memory_events: vec![10_000, 30_000],
        }
    }

    pub(crate) fn full() -> Self {
        Self {
            mode: "full".into(),
            repetitions: 3,
            clients: 32,
            booking_requests: 3_000,
            facilities: 8,
            latency_clients: 4,
            latency_samples: 250,
            poll_interval_ms: 5,
            replay_events: 100_000,
            query_seconds: 10,
            memory_events: vec![100_000, 1_000_000],
        }
    }
}

/// Ports of the processes a run starts.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ports {
    pub command: u16,
    pub query: u16,
    pub projection: u16,
    pub bare: u16,
}

/// Everything a section needs from its surroundings.
#[derive(Debug, Clone)]
pub(crate) struct Bench {
    pub brokers: String,
    /// A PostgreSQL URL whose role may create databases; each measurement gets its own.
    pub admin_url: String,
    /// Where the release binaries of the services are.
    pub bin_dir: PathBuf,
    /// Where the services' logs go.
    pub log_dir: PathBuf,
    pub ports: Ports,
    pub sizes: Sizes,
}

impl Bench {
    /// Kafka settings on a topic prefix of their own (`<what>-<random>`), as the services'
    /// defaults otherwise.
    pub(crate) fn kafka(&self, what: &str) -> KafkaSettings {
        KafkaSettings {
            brokers: self.brokers.clone(),
            topic_prefix: format!("{what}-{}", &Uuid::new_v4().simple().to_string()[..8]),
            ..KafkaSettings::default()
        }
    }

    /// Creates the topics of `kafka`'s prefix.
    pub(crate) async fn topics(&self, kafka: &KafkaSettings) -> anyhow::Result<()> {
        event_log::topics::ensure_topics(kafka, false)
            .await
            .with_context(|| format!("Failed to create the topics of {}", kafka.topic_prefix))?;
        Ok(())
    }

    pub(crate) fn binary(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }
}
