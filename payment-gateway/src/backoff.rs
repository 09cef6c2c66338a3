//! How long to wait before the next attempt: exponential, capped, with jitter.
//!
//! The saga's step runner owns the retry loop (it knows the step's deadline and whether an
//! error is retryable); this is only the policy, pure so that it is tested exactly. The caller
//! passes the randomness in (`rand::random::<f64>()` in production, fixed values in tests).

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Delay before attempt `n + 1` after `n` failures: `min(max, base × factorⁿ)`, then reduced by
/// up to `jitter` of itself at random, so that many sagas retrying together spread out.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(default)]
pub struct Backoff {
    /// The delay after the first failure (milliseconds in configuration).
    #[serde(deserialize_with = "millis")]
    pub base: Duration,
    /// How much each further failure multiplies the delay (values below 1 count as 1).
    pub factor: f64,
    /// The longest delay, before jitter (milliseconds in configuration).
    #[serde(deserialize_with = "millis")]
    pub max: Duration,
    /// The fraction of the delay that is random, from 0 (none) to 1 ("full jitter").
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(200),
            factor: 2.0,
            max: Duration::from_secs(10),
            jitter: 0.5,
        }
    }
}

fn millis<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    u64::deserialize(deserializer).map(Duration::from_millis)
}

impl Backoff {
    /// The delay before retrying after `attempt` failures have happened already (0 for the
    /// first retry), given `random` drawn uniformly from `[0, 1)` (clamped into `[0, 1]`).
    ///
    /// The result lies in `[(1 - jitter) × d, d]` where `d = min(max, base × factor^attempt)`.
    pub fn delay(&self, attempt: u32, random: f64) -> Duration {
        let factor = if self.factor.is_finite() {
            self.factor.max(1.0)
        } else {
            1.0
        };
        let jitter = if self.jitter.is_nan() {
            0.0
        } else {
            self.jitter.clamp(0.0, 1.0)
        };
        let random = if random.is_nan() {
            0.0
        } else {
            random.clamp(0.0, 1.0)
        };
        let max = self.max.as_secs_f64();
        let grown = self.base.as_secs_f64() * factor.powf(f64::from(attempt));
        let capped = if grown.is_finite() {
            grown.min(max)
        } else {
            max
        };
        let jittered = capped * (1.0 - jitter * random);
        Duration::try_from_secs_f64(jittered).unwrap_or(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(jitter: f64) -> Backoff {
        Backoff {
            base: Duration::from_millis(100),
            factor: 2.0,
            max: Duration::from_secs(2),
            jitter,
        }
    }

    fn ms(millis: u64) -> Duration {
        Duration::from_millis(millis)
    }

    /// Durations from float arithmetic, compared to the microsecond.
    fn close(actual: Duration, expected: Duration) -> bool {
        actual.abs_diff(expected) < Duration::from_micros(1)
    }

    #[test]
    fn grows_by_the_factor_from_the_base_without_jitter() {
        let backoff = policy(0.0);
        let delays: Vec<_> = (0..5).map(|attempt| backoff.delay(attempt, 0.7)).collect();
        for (actual, expected) in delays.iter().zip([100, 200, 400, 800, 1600]) {
            assert!(close(*actual, ms(expected)), "{actual:?} != {expected} ms");
        }
    }

    #[test]
    fn is_capped_at_the_maximum() {
        let backoff = policy(0.0);
        assert!(close(backoff.delay(5, 0.0), ms(2000)));
        assert!(close(backoff.delay(60, 0.0), ms(2000)));
        assert!(close(backoff.delay(u32::MAX, 0.0), ms(2000)));
    }

    #[test]
    fn jitter_takes_off_up_to_its_fraction_of_the_delay() {
        let backoff = policy(0.5);
        assert!(close(backoff.delay(2, 0.0), ms(400)));
        assert!(close(backoff.delay(2, 0.5), ms(300)));
        assert!(close(backoff.delay(2, 1.0), ms(200)));
    }

    #[test]
    fn full_jitter_can_reach_zero() {
        assert_eq!(policy(1.0).delay(3, 1.0), Duration::ZERO);
    }

    #[test]
    fn out_of_range_inputs_are_clamped() {
        let backoff = Backoff {
            factor: 0.5,
            jitter: 7.0,
            ..policy(0.0)
        };
        // factor < 1 counts as 1; jitter > 1 counts as 1; random outside [0, 1] is clamped.
        assert!(close(backoff.delay(4, -3.0), ms(100)));
        assert_eq!(backoff.delay(4, 9.0), Duration::ZERO);
        assert!(close(policy(0.5).delay(0, f64::NAN), ms(100)));
    }

    #[test]
    fn never_exceeds_the_maximum_for_any_attempt_and_random() {
        let backoff = policy(0.3);
        for attempt in 0..100 {
            for step in 0..=10 {
                let random = f64::from(step) / 10.0;
                let delay = backoff.delay(attempt, random);
                assert!(delay <= backoff.max, "{attempt} {random} {delay:?}");
                let floor = backoff.delay(attempt, 0.0).mul_f64(0.7);
                assert!(delay + Duration::from_micros(1) >= floor);
            }
        }
    }
}
