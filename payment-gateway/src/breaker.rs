//! A circuit breaker around the gateway, so that a broken provider is not hammered.
//!
//! [`CircuitBreaker`] is the pure state machine: it is told the time, so it is tested without
//! sleeping. [`BreakingGateway`] applies it to any [`PaymentGateway`] with an injected
//! [`Clock`].
//!
//! ```text
//!   Closed ──N consecutive infrastructure failures──▶ Open ──cool-down elapsed──▶ HalfOpen
//!     ▲                                                ▲                            │
//!     └──────────────── the probe succeeds ────────────┼──────── the probe fails ───┘
//! ```
//!
//! Only infrastructure failures ([`GatewayError::is_infrastructure`]) count: a declined card is
//! the provider working. In half-open, one call (the probe) goes through; the others fail fast
//! until it answers. A result that arrives after the state it was admitted in has changed is
//! ignored, so a slow call started while closed cannot reopen a circuit that a probe has just
//! closed.

use std::{
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use async_trait::async_trait;
use serde::Deserialize;

use crate::gateway::{
    CaptureRequest, Captured, GatewayError, LedgerCapture, PaymentGateway, PaymentRecord,
    RefundRequest, Refunded,
};

/// The name of the gauge [`BreakingGateway`] keeps up to date (0 closed, 1 open, 2 half-open).
pub const STATE_GAUGE: &str = "payment_gateway_circuit_state";

/// When to open and how long to stay open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct BreakerPolicy {
    /// Consecutive infrastructure failures that open the circuit (at least 1).
    pub failure_threshold: u32,
    /// How long the circuit stays open before it lets a probe through (milliseconds in
    /// configuration).
    #[serde(deserialize_with = "millis")]
    pub cool_down: Duration,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            cool_down: Duration::from_secs(30),
        }
    }
}

fn millis<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    u64::deserialize(deserializer).map(Duration::from_millis)
}

/// Where the circuit stands, as the world sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CircuitState {
    /// Calls go through; failures are counted.
    Closed,
    /// Calls fail fast with [`GatewayError::CircuitOpen`].
    Open,
    /// The cool-down is over: the next call is a probe.
    HalfOpen,
}

impl CircuitState {
    /// `closed`, `open` or `half_open`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }

    /// The value of the `payment_gateway_circuit_state` gauge: 0 closed, 1 open, 2 half-open.
    pub const fn as_gauge(self) -> u8 {
        match self {
            Self::Closed => 0,
            Self::Open => 1,
            Self::HalfOpen => 2,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Inner {
    Closed { consecutive_failures: u32 },
    Open { until: Instant },
    HalfOpen { probe_in_flight: bool },
}

/// Leave to make one call, from [`CircuitBreaker::try_acquire`]; hand it back with the call's
/// outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "report the call's outcome with the permit"]
pub struct Permit {
    generation: u64,
    probe: bool,
}

/// How a call admitted by a [`Permit`] ended, as far as the breaker cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The provider answered (including a decline or a refusal of the request).
    Answered,
    /// An infrastructure failure.
    Failed,
    /// The caller gave up on the call before it ended (its future was dropped).
    Abandoned,
}

impl Outcome {
    /// The outcome of a gateway call's result.
    pub fn of<T>(result: &Result<T, GatewayError>) -> Self {
        match result {
            Err(error) if error.is_infrastructure() => Self::Failed,
            _ => Self::Answered,
        }
    }
}

/// The circuit breaker's state machine. Pure: every method is told the time.
#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    policy: BreakerPolicy,
    inner: Inner,
    /// Bumped at every transition, so that late results are recognised.
    generation: u64,
}

impl CircuitBreaker {
    /// A closed breaker.
    pub fn new(policy: BreakerPolicy) -> Self {
        Self {
            policy: BreakerPolicy {
                failure_threshold: policy.failure_threshold.max(1),
                ..policy
            },
            inner: Inner::Closed {
                consecutive_failures: 0,
            },
            generation: 0,
        }
    }

    /// The state at `now`: an open circuit whose cool-down has passed reports half-open.
    pub fn state(&self, now: Instant) -> CircuitState {
        match self.inner {
            Inner::Closed { .. } => CircuitState::Closed,
            Inner::Open { until } if now < until => CircuitState::Open,
            Inner::Open { .. } | Inner::HalfOpen { .. } => CircuitState::HalfOpen,
        }
    }

    /// Asks to make a call at `now`. `Err(CircuitOpen)` while open, and in half-open while
    /// the probe is out.
    pub fn try_acquire(&mut self, now: Instant) -> Result<Permit, GatewayError> {
        match self.inner {
            Inner::Closed { .. } => Ok(self.permit(false)),
            Inner::Open { until } if now < until => Err(GatewayError::CircuitOpen),
            Inner::Open { .. }
            | Inner::HalfOpen {
                probe_in_flight: false,
            } => {
                self.transition(Inner::HalfOpen {
                    probe_in_flight: true,
                });
                Ok(self.permit(true))
            }
            Inner::HalfOpen {
                probe_in_flight: true,
            } => Err(GatewayError::CircuitOpen),
        }
    }

    /// Reports how the call admitted by `permit` ended, at `now`.
    pub fn record(&mut self, permit: Permit, outcome: Outcome, now: Instant) {
        if permit.generation != self.generation {
            return; // admitted in a state that has since changed
        }
        match (self.inner, outcome) {
            (Inner::Closed { .. }, Outcome::Answered) => {
                self.inner = Inner::Closed {
                    consecutive_failures: 0,
                };
            }
            (
                Inner::Closed {
                    consecutive_failures,
                },
                Outcome::Failed,
            ) => {
                let consecutive_failures = consecutive_failures.saturating_add(1);
                if consecutive_failures >= self.policy.failure_threshold {
                    self.open(now);
                } else {
                    self.inner = Inner::Closed {
                        consecutive_failures,
                    };
                }
            }
            (Inner::HalfOpen { .. }, Outcome::Answered) if permit.probe => {
                self.transition(Inner::Closed {
                    consecutive_failures: 0,
                });
            }
            (Inner::HalfOpen { .. }, Outcome::Failed) if permit.probe => self.open(now),
            (Inner::HalfOpen { .. }, Outcome::Abandoned) if permit.probe => {
                // Nothing learnt about the provider: let the next caller probe.
                self.inner = Inner::HalfOpen {
                    probe_in_flight: false,
                };
            }
            _ => {}
        }
    }

    fn open(&mut self, now: Instant) {
        self.transition(Inner::Open {
            until: now + self.policy.cool_down,
        });
    }

    fn transition(&mut self, inner: Inner) {
        self.inner = inner;
        self.generation = self.generation.wrapping_add(1);
    }

    fn permit(&self, probe: bool) -> Permit {
        Permit {
            generation: self.generation,
            probe,
        }
    }
}

/// Where [`BreakingGateway`] gets the time.
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now(&self) -> Instant;
}

/// The real monotonic clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// Any [`PaymentGateway`] behind a [`CircuitBreaker`]: while the circuit is open every call
/// fails fast with [`GatewayError::CircuitOpen`], without touching the provider. Lookups go
/// through the breaker too: they hit the same provider.
#[derive(Debug)]
pub struct BreakingGateway<G> {
    inner: G,
    breaker: Mutex<CircuitBreaker>,
    clock: Arc<dyn Clock>,
}

impl<G: PaymentGateway> BreakingGateway<G> {
    /// Wraps `inner` with a breaker on the system clock.
    pub fn new(inner: G, policy: BreakerPolicy) -> Self {
        Self::with_clock(inner, policy, Arc::new(SystemClock))
    }

    /// Wraps `inner` with a breaker on the given clock (tests).
    pub fn with_clock(inner: G, policy: BreakerPolicy, clock: Arc<dyn Clock>) -> Self {
        metrics::gauge!(STATE_GAUGE).set(f64::from(CircuitState::Closed.as_gauge()));
        Self {
            inner,
            breaker: Mutex::new(CircuitBreaker::new(policy)),
            clock,
        }
    }

    /// The circuit's state now (what the `payment_gateway_circuit_state` gauge shows).
    pub fn state(&self) -> CircuitState {
        let now = self.clock.now();
        self.lock().state(now)
    }

    /// The wrapped gateway.
    pub fn inner(&self) -> &G {
        &self.inner
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CircuitBreaker> {
        // The breaker's state is valid after any panic (every transition is one assignment).
        self.breaker.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn acquire(&self) -> Result<Permit, GatewayError> {
        let now = self.clock.now();
        let mut breaker = self.lock();
        let permit = breaker.try_acquire(now);
        publish(breaker.state(now));
        if permit.is_err() {
            metrics::counter!("payment_gateway_fast_failures_total").increment(1);
        }
        permit
    }

    async fn call<T, F>(&self, call: F) -> Result<T, GatewayError>
    where
        F: Future<Output = Result<T, GatewayError>>,
    {
        let permit = self.acquire()?;
        let mut guard = Report {
            gateway: self,
            permit,
            outcome: Outcome::Abandoned,
        };
        let result = call.await;
        guard.outcome = Outcome::of(&result);
        result
    }
}

/// Reports a call's outcome when it ends, or `Abandoned` when its future is dropped.
struct Report<'a, G> {
    gateway: &'a BreakingGateway<G>,
    permit: Permit,
    outcome: Outcome,
}

impl<G> Drop for Report<'_, G> {
    fn drop(&mut self) {
        let now = self.gateway.clock.now();
        let mut breaker = self
            .gateway
            .breaker
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let before = breaker.state(now);
        breaker.record(self.permit, self.outcome, now);
        let after = breaker.state(now);
        if before != after {
            tracing::warn!(from = ?before, to = ?after, "payment gateway circuit changed state");
        }
        publish(after);
    }
}

fn publish(state: CircuitState) {
    metrics::gauge!(STATE_GAUGE).set(f64::from(state.as_gauge()));
}

#[async_trait]
impl<G: PaymentGateway> PaymentGateway for BreakingGateway<G> {
    async fn capture(&self, request: &CaptureRequest) -> Result<Captured, GatewayError> {
        self.call(self.inner.capture(request)).await
    }

    async fn refund(&self, request: &RefundRequest) -> Result<Refunded, GatewayError> {
        self.call(self.inner.refund(request)).await
    }

    async fn lookup(&self, idempotency_key: &str) -> Result<Option<PaymentRecord>, GatewayError> {
        self.call(self.inner.lookup(idempotency_key)).await
    }

    async fn captures(
        &self,
        since: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<LedgerCapture>, GatewayError> {
        self.call(self.inner.captures(since)).await
    }
}

#[cfg(test)]
mod tests;
