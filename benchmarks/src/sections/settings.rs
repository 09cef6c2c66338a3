//! Client settings on this broker: produce + read back (what every write does before it
//! answers) with the consumer's `fetch.wait.max.ms` and the producer's `linger.ms` varied one at
//! a time around the services' defaults, so that the defaults are chosen from figures of this
//! broker rather than carried over from another.

use std::{sync::Arc, time::Duration};

use event_log::KafkaSettings;
use schemas::AggregateType;
use serde::{Deserialize, Serialize};

use crate::{
    config::Bench,
    kafka::{self, ReadBack, SERVICES_LINGER_MS},
    machine::load_average,
    stats::Load,
};

/// One combination of the two settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Variant {
    pub fetch_wait_ms: u64,
    pub linger_ms: u64,
}

impl Variant {
    /// What the services run with (`KafkaSettings::default()` and `EventProducer`).
    pub(crate) fn services() -> Self {
        Self {
            fetch_wait_ms: u64::try_from(KafkaSettings::default().fetch_wait.as_millis())
                .unwrap_or(u64::MAX),
            linger_ms: SERVICES_LINGER_MS,
        }
    }

    /// The services' settings, then each setting moved on its own.
    pub(crate) fn all() -> Vec<Self> {
        let services = Self::services();
        let mut variants = vec![services];
        for fetch_wait_ms in [10, 100, 500] {
            let variant = Self {
                fetch_wait_ms,
                ..services
            };
            if !variants.contains(&variant) {
                variants.push(variant);
            }
        }
        for linger_ms in [0, 1, 5] {
            let variant = Self {
                linger_ms,
                ..services
            };
            if !variants.contains(&variant) {
                variants.push(variant);
            }
        }
        variants
    }

    pub(crate) fn label(self) -> String {
        format!(
            "`fetch.wait.max.ms={}`, `linger.ms={}`",
            self.fetch_wait_ms, self.linger_ms
        )
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SettingsRep {
    /// In the order they ran (rotated every repetition).
    pub loads: Vec<(Variant, Load)>,
    pub load_average: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SettingsResults {
    pub services: Variant,
    pub reps: Vec<SettingsRep>,
}

/// Produce + read back of `booking_requests` records on fresh topics with `variant`, after a
/// warm-up of one record per client.
async fn produce_read_back(
    bench: &Bench,
    payload: &Arc<Vec<u8>>,
    variant: Variant,
) -> anyhow::Result<Load> {
    let sizes = &bench.sizes;
    let kafka = KafkaSettings {
        fetch_wait: Duration::from_millis(variant.fetch_wait_ms),
        ..bench.kafka("settings")
    };
    bench.topics(&kafka).await?;
    let topic = event_log::Topics::new(&kafka.topic_prefix).events(AggregateType::Booking);
    let producer = kafka::producer_with_linger(&kafka, variant.linger_ms)?;
    let reader = Arc::new(ReadBack::start(&kafka, &topic).await?);
    kafka::produce_load(
        &producer,
        &topic,
        payload,
        sizes.clients,
        sizes.clients,
        Some(&reader),
    )
    .await?;
    kafka::produce_load(
        &producer,
        &topic,
        payload,
        sizes.booking_requests,
        sizes.clients,
        Some(&reader),
    )
    .await
}

pub(crate) async fn run(bench: &Bench) -> anyhow::Result<SettingsResults> {
    let payload = Arc::new(kafka::booking_requested_record()?);
    let variants = Variant::all();
    let mut reps = Vec::new();
    for rep in 0..bench.sizes.repetitions {
        eprintln!(
            "  settings, repetition {} of {}",
            rep + 1,
            bench.sizes.repetitions
        );
        let load_before = load_average();
        let mut order = variants.clone();
        order.rotate_left(rep % variants.len());
        let mut loads = Vec::new();
        for variant in order {
            let load = produce_read_back(bench, &payload, variant).await?;
            eprintln!(
                "    {}: {:.0}/s p50 {:.1} ms p99 {:.1} ms",
                variant.label(),
                load.rate(),
                load.p50_ms,
                load.p99_ms
            );
            loads.push((variant, load));
        }
        reps.push(SettingsRep {
            loads,
            load_average: format!("{load_before} → {}", load_average()),
        });
    }
    Ok(SettingsResults {
        services: Variant::services(),
        reps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_services_settings_come_first_and_each_setting_moves_alone() {
        let all = Variant::all();
        let services = Variant::services();
        assert_eq!(all[0], services);
        for variant in &all[1..] {
            let moved = usize::from(variant.fetch_wait_ms != services.fetch_wait_ms)
                + usize::from(variant.linger_ms != services.linger_ms);
            assert_eq!(moved, 1, "{variant:?}");
        }
        for (i, variant) in all.iter().enumerate() {
            assert!(!all[i + 1..].contains(variant), "{variant:?} twice");
        }
    }
}
