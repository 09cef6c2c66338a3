//! Request rates per token subject and per client address.
//!
//! A service keeps one [`RateLimiter`] per group of routes it limits (the command-service's
//! writes, the query-api's consistency-token waits). Each request is counted twice: against its
//! client address (the TCP peer, so a flood without any valid token is limited too) and against
//! its token's subject (so one family cannot write faster than the limit from many addresses).
//! The algorithm is governor's GCRA: a steady rate per minute with a burst allowance, no
//! background task, memory for the keys seen recently only.
//!
//! A refused request is answered `429 Too Many Requests` with `Retry-After` (whole seconds,
//! rounded up) and a problem+json body naming the limit, and counted in
//! `rate_limited_total{scope, key}` (`key` is `subject` or `address`).
//!
//! Settings (`FM_LIMITS__…`, see [`RateLimitSettings`]): a rate of 0 turns that limit off.
//! Tests and the load tools (`compose/soak`, `compose/bench`, `compose/fuzz`) drive many requests
//! with a few tokens from one address, and turn the limits off.

use std::{
    hash::Hash,
    net::{IpAddr, SocketAddr},
    num::NonZeroU32,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use axum::{
    extract::ConnectInfo,
    http::{Extensions, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use governor::{
    DefaultKeyedRateLimiter, Quota,
    clock::{Clock, DefaultClock},
};
use serde::Deserialize;

use crate::problem::{FieldError, Problem};

/// How fast one subject and one address may call the limited routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct RateLimitSettings {
    /// Requests per minute one token subject may make, steady; 0: no limit per subject.
    pub per_subject_per_minute: u32,
    /// Requests one subject may make at once above the steady rate (at least 1).
    pub per_subject_burst: u32,
    /// Requests per minute one client address may make, steady; 0: no limit per address.
    pub per_address_per_minute: u32,
    /// Requests one address may make at once above the steady rate (at least 1).
    pub per_address_burst: u32,
}

impl RateLimitSettings {
    /// No limit at all (tests and load tools).
    pub const UNLIMITED: Self = Self {
        per_subject_per_minute: 0,
        per_subject_burst: 1,
        per_address_per_minute: 0,
        per_address_burst: 1,
    };
}

impl Default for RateLimitSettings {
    /// 60 a minute per subject with a burst of 20; 600 a minute per address with a burst of
    /// 120 (a funeral home's office behind one address has several people at work).
    fn default() -> Self {
        Self {
            per_subject_per_minute: 60,
            per_subject_burst: 20,
            per_address_per_minute: 600,
            per_address_burst: 120,
        }
    }
}

/// Which key a request ran out of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitedBy {
    /// Its token's subject.
    Subject,
    /// Its client address.
    Address,
}

impl LimitedBy {
    /// `subject` or `address`, as in the metric and the problem's field.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Subject => "subject",
            Self::Address => "address",
        }
    }
}

/// A request refused for its rate: answers 429 with `Retry-After` and problem+json.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttled {
    /// Which limit it hit.
    pub by: LimitedBy,
    /// How long until one more request would be let through.
    pub retry_after: Duration,
}

impl Throttled {
    /// `Retry-After` in whole seconds, rounded up, at least 1.
    pub fn retry_after_seconds(&self) -> u64 {
        let seconds = self.retry_after.as_nanos().div_ceil(1_000_000_000);
        u64::try_from(seconds).unwrap_or(u64::MAX).max(1)
    }
}

impl IntoResponse for Throttled {
    fn into_response(self) -> Response {
        let seconds = self.retry_after_seconds();
        let what = self.by.as_str();
        let mut response = Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate-limited",
            "Too many requests",
        )
        .with_detail(format!(
            "Too many requests from this {what}; retry after {seconds} s."
        ))
        .with_errors(vec![FieldError::new(
            what,
            format!("rate_limit.per_{what}"),
            format!("too many requests from this {what} in a short time"),
        )])
        .into_response();
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        response
    }
}

/// One keyed GCRA limiter, or none when its rate is 0.
#[derive(Debug)]
struct Keyed<K: Hash + Eq + Clone> {
    limiter: Option<DefaultKeyedRateLimiter<K>>,
}

impl<K: Hash + Eq + Clone> Keyed<K> {
    fn new(per_minute: u32, burst: u32) -> Self {
        let limiter = NonZeroU32::new(per_minute).map(|rate| {
            let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
            DefaultKeyedRateLimiter::hashmap(Quota::per_minute(rate).allow_burst(burst))
        });
        Self { limiter }
    }

    fn check(&self, key: &K, clock: &DefaultClock) -> Result<(), Duration> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        limiter
            .check_key(key)
            .map_err(|not_until| not_until.wait_time_from(clock.now()))
    }

    fn forget_idle(&self) {
        if let Some(limiter) = &self.limiter {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

/// The limits of one group of routes (`scope`: `writes`, `consistency_waits`).
#[derive(Debug)]
pub struct RateLimiter {
    scope: &'static str,
    subjects: Keyed<String>,
    addresses: Keyed<IpAddr>,
    clock: DefaultClock,
    checks: AtomicU64,
}

/// Every this many checks, keys whose budget is full again are forgotten.
const FORGET_EVERY: u64 = 4096;

impl RateLimiter {
    /// The limiter of the routes in `scope`, with `settings`' rates.
    pub fn new(scope: &'static str, settings: &RateLimitSettings) -> Self {
        metrics::describe_counter!(
            "rate_limited_total",
            "Requests refused 429 for their rate, by route group (scope) and the limit hit (key: subject or address)"
        );
        Self {
            scope,
            subjects: Keyed::new(settings.per_subject_per_minute, settings.per_subject_burst),
            addresses: Keyed::new(settings.per_address_per_minute, settings.per_address_burst),
            clock: DefaultClock::default(),
            checks: AtomicU64::new(0),
        }
    }

    /// Counts one request of `subject` from `address` (none when the server was not given the
    /// peer's address, as in a test that calls the router directly). The address is counted
    /// first, so a subject that floods from one address also uses up that address's budget.
    pub fn check(&self, subject: &str, address: Option<IpAddr>) -> Result<(), Throttled> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % FORGET_EVERY == FORGET_EVERY - 1 {
            self.subjects.forget_idle();
            self.addresses.forget_idle();
        }
        let refused = |by: LimitedBy| {
            move |retry_after| {
                metrics::counter!("rate_limited_total", "scope" => self.scope, "key" => by.as_str())
                    .increment(1);
                Throttled { by, retry_after }
            }
        };
        if let Some(address) = address {
            self.addresses
                .check(&address, &self.clock)
                .map_err(refused(LimitedBy::Address))?;
        }
        self.subjects
            .check(&subject.to_owned(), &self.clock)
            .map_err(refused(LimitedBy::Subject))
    }
}

/// The client's address, if the server records peers (`platform::http` serves with
/// `ConnectInfo`).
pub fn client_address(extensions: &Extensions) -> Option<IpAddr> {
    extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(peer)| peer.ip())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn settings(per_subject_burst: u32, per_address_burst: u32) -> RateLimitSettings {
        RateLimitSettings {
            per_subject_per_minute: 1,
            per_subject_burst,
            per_address_per_minute: 1,
            per_address_burst,
        }
    }

    #[test]
    fn a_subject_gets_its_burst_then_waits() {
        let limiter = RateLimiter::new("test", &settings(3, 100));
        for _ in 0..3 {
            limiter.check("family-1", None).unwrap();
        }
        let throttled = limiter.check("family-1", None).unwrap_err();
        assert_eq!(throttled.by, LimitedBy::Subject);
        assert!(throttled.retry_after > Duration::from_secs(50));
        assert!(throttled.retry_after <= Duration::from_mins(1));
        assert!(
            limiter.check("family-2", None).is_ok(),
            "another subject has its own budget"
        );
    }

    #[test]
    fn an_address_is_limited_whatever_the_subjects() {
        let limiter = RateLimiter::new("test", &settings(100, 2));
        let address = Some(IpAddr::from([10, 0, 0, 1]));
        limiter.check("a", address).unwrap();
        limiter.check("b", address).unwrap();
        let throttled = limiter.check("c", address).unwrap_err();
        assert_eq!(throttled.by, LimitedBy::Address);
        assert!(
            limiter
                .check("c", Some(IpAddr::from([10, 0, 0, 2])))
                .is_ok()
        );
    }

    #[test]
    fn a_rate_of_zero_is_no_limit() {
        let limiter = RateLimiter::new("test", &RateLimitSettings::UNLIMITED);
        for _ in 0..10_000 {
            limiter
                .check("family-1", Some(IpAddr::from([127, 0, 0, 1])))
                .unwrap();
        }
    }

    #[test]
    fn retry_after_is_whole_seconds_rounded_up() {
        let after = |millis| Throttled {
            by: LimitedBy::Subject,
            retry_after: Duration::from_millis(millis),
        };
        assert_eq!(after(0).retry_after_seconds(), 1);
        assert_eq!(after(1).retry_after_seconds(), 1);
        assert_eq!(after(1000).retry_after_seconds(), 1);
        assert_eq!(after(1001).retry_after_seconds(), 2);
        assert_eq!(after(59_999).retry_after_seconds(), 60);
    }
}
