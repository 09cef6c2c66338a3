//! Latency samples, throughput, and the median and spread of a figure over repetitions.

use std::{collections::BTreeMap, time::Duration};

use serde::{Deserialize, Serialize};

/// What one timed load measured: how many operations succeeded, in how long, their latency
/// percentiles, and every failure by kind.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Load {
    pub ok: usize,
    pub elapsed_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Kind of failure (an HTTP status, `transport`, `timeout` …) → how many.
    pub failures: BTreeMap<String, usize>,
    /// The first failure's detail, to tell what went wrong.
    pub first_failure: Option<String>,
    /// Where the machine's CPU went while the load ran (`None` without `/proc`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<crate::cpu::CpuUse>,
}

impl Load {
    /// Summarises the latencies of the successes of a load that ran for `elapsed`.
    pub(crate) fn from_samples(
        mut latencies: Vec<Duration>,
        elapsed: Duration,
        failures: Vec<(String, String)>,
    ) -> Self {
        latencies.sort_unstable();
        let mut by_kind = BTreeMap::new();
        let first_failure = failures
            .first()
            .map(|(kind, detail)| format!("{kind}: {detail}"));
        for (kind, _) in failures {
            *by_kind.entry(kind).or_insert(0) += 1;
        }
        Self {
            ok: latencies.len(),
            elapsed_s: elapsed.as_secs_f64(),
            p50_ms: millis(percentile(&latencies, 0.50)),
            p99_ms: millis(percentile(&latencies, 0.99)),
            max_ms: millis(latencies.last().copied().unwrap_or_default()),
            failures: by_kind,
            first_failure,
            cpu: None,
        }
    }

    /// Successful operations per second.
    pub(crate) fn rate(&self) -> f64 {
        #[allow(clippy::cast_precision_loss)] // Counts far below 2^52.
        let ok = self.ok as f64;
        if self.elapsed_s > 0.0 {
            ok / self.elapsed_s
        } else {
            0.0
        }
    }

    /// With the CPU used since `census` (taken as the load started).
    pub(crate) fn with_cpu(mut self, census: Option<&crate::cpu::Census>) -> Self {
        self.cpu = census.and_then(crate::cpu::Census::since);
        self
    }

    pub(crate) fn failed(&self) -> usize {
        self.failures.values().sum()
    }
}

/// The sample at quantile `q` of sorted samples (nearest rank), zero for none.
pub(crate) fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let rank = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

pub(crate) fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// The median of a figure over the repetitions of a run, and its range.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub count: usize,
}

impl Spread {
    /// `None` when there is no finite value.
    pub(crate) fn of(values: impl IntoIterator<Item = f64>) -> Option<Self> {
        let mut values: Vec<f64> = values.into_iter().filter(|v| v.is_finite()).collect();
        if values.is_empty() {
            return None;
        }
        values.sort_by(f64::total_cmp);
        let n = values.len();
        let median = if n % 2 == 1 {
            values[n / 2]
        } else {
            f64::midpoint(values[n / 2 - 1], values[n / 2])
        };
        Some(Self {
            median,
            min: values[0],
            max: values[n - 1],
            count: n,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_take_the_nearest_rank() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&samples, 0.50), Duration::from_millis(50));
        assert_eq!(percentile(&samples, 0.99), Duration::from_millis(99));
        assert_eq!(percentile(&samples, 1.0), Duration::from_millis(100));
        assert_eq!(percentile(&samples[..1], 0.99), Duration::from_millis(1));
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
    }

    #[test]
    fn the_spread_is_the_median_and_the_range() {
        let spread = Spread::of([3.0, 1.0, 2.0]).expect("values");
        assert_eq!((spread.median, spread.min, spread.max), (2.0, 1.0, 3.0));
        let even = Spread::of([4.0, 1.0, 2.0, 3.0]).expect("values");
        assert!((even.median - 2.5).abs() < f64::EPSILON);
        assert_eq!(Spread::of([f64::NAN]), None);
    }

    #[test]
    fn a_load_counts_failures_by_kind_and_rates_successes() {
        let load = Load::from_samples(
            vec![Duration::from_millis(20), Duration::from_millis(10)],
            Duration::from_secs(2),
            vec![
                ("409".into(), "conflict".into()),
                ("409".into(), "again".into()),
                ("transport".into(), "reset".into()),
            ],
        );
        assert_eq!(load.ok, 2);
        assert!((load.rate() - 1.0).abs() < f64::EPSILON);
        assert!((load.p50_ms - 10.0).abs() < 1e-9);
        assert!((load.max_ms - 20.0).abs() < 1e-9);
        assert_eq!(load.failures.get("409"), Some(&2));
        assert_eq!(load.failed(), 3);
        assert_eq!(load.first_failure.as_deref(), Some("409: conflict"));
    }
}
