//! The payment side of the booking saga: what it calls to take and give back money.
//!
//! The saga sees only the [`PaymentGateway`] trait. Production puts a real provider's adapter
//! behind it; locally and in tests [`HttpGateway`] talks to the `gateway-simulator` service.
//! Wrapping any gateway in a [`BreakingGateway`] adds a circuit breaker, so that a broken
//! provider is not hammered. Retrying belongs to the saga's step runner, which takes its delays
//! from a [`Backoff`] policy. `docs/payments.md` tells how the pieces are meant to be used.
//!
//! - [`gateway`] — the trait, its requests and answers, and [`GatewayError`], which keeps a
//!   business "no" (declined) apart from infrastructure failures.
//! - [`http`] — [`HttpGateway`], the adapter over HTTP, and its settings.
//! - [`breaker`] — the pure, clock-injected [`CircuitBreaker`] state machine and the
//!   [`BreakingGateway`] wrapper that applies it.
//! - [`backoff`] — the pure exponential [`Backoff`] policy with jitter.

pub mod backoff;
pub mod breaker;
pub mod gateway;
pub mod http;

pub use backoff::Backoff;
pub use breaker::{BreakerPolicy, BreakingGateway, CircuitBreaker, CircuitState, Clock};
pub use gateway::{
    CaptureRequest, Captured, GatewayError, LedgerCapture, PaymentGateway, PaymentRecord,
    RefundRequest, Refunded,
};
pub use http::{GatewaySettings, HttpGateway};
