//! The breaker's state machine, driven by hand with an injected time; no test sleeps.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use domain::values::{BookingId, Currency, Money};

use super::*;

const COOL_DOWN: Duration = Duration::from_secs(30);
const JUST_SHORT: Duration = Duration::from_millis(29_999);

fn breaker(threshold: u32) -> CircuitBreaker {
    CircuitBreaker::new(BreakerPolicy {
        failure_threshold: threshold,
        cool_down: COOL_DOWN,
    })
}

/// Makes one call at `now` with the given outcome.
fn call(breaker: &mut CircuitBreaker, now: Instant, outcome: Outcome) -> Result<(), GatewayError> {
    let permit = breaker.try_acquire(now)?;
    breaker.record(permit, outcome, now);
    Ok(())
}

fn opened(threshold: u32, t0: Instant) -> CircuitBreaker {
    let mut breaker = breaker(threshold);
    for _ in 0..threshold {
        call(&mut breaker, t0, Outcome::Failed).unwrap();
    }
    assert_eq!(breaker.state(t0), CircuitState::Open);
    breaker
}

#[test]
fn stays_closed_below_the_failure_threshold() {
    let t0 = Instant::now();
    let mut breaker = breaker(3);
    call(&mut breaker, t0, Outcome::Failed).unwrap();
    call(&mut breaker, t0, Outcome::Failed).unwrap();
    assert_eq!(breaker.state(t0), CircuitState::Closed);
    assert!(breaker.try_acquire(t0).is_ok());
}

#[test]
fn opens_after_n_consecutive_infrastructure_failures() {
    let t0 = Instant::now();
    let mut breaker = breaker(3);
    for _ in 0..3 {
        call(&mut breaker, t0, Outcome::Failed).unwrap();
    }
    assert_eq!(breaker.state(t0), CircuitState::Open);
}

#[test]
fn a_success_resets_the_count_of_consecutive_failures() {
    let t0 = Instant::now();
    let mut breaker = breaker(3);
    call(&mut breaker, t0, Outcome::Failed).unwrap();
    call(&mut breaker, t0, Outcome::Failed).unwrap();
    call(&mut breaker, t0, Outcome::Answered).unwrap();
    call(&mut breaker, t0, Outcome::Failed).unwrap();
    call(&mut breaker, t0, Outcome::Failed).unwrap();
    assert_eq!(breaker.state(t0), CircuitState::Closed);
}

#[test]
fn a_decline_is_an_answer_and_never_opens_the_circuit() {
    let declined: Result<(), _> = Err(GatewayError::Declined {
        reason: "card expired".to_owned(),
    });
    assert_eq!(Outcome::of(&declined), Outcome::Answered);
    let rejected: Result<(), _> = Err(GatewayError::Rejected {
        status: 422,
        detail: String::new(),
    });
    assert_eq!(Outcome::of(&rejected), Outcome::Answered);
    assert_eq!(
        Outcome::of::<()>(&Err(GatewayError::Timeout)),
        Outcome::Failed
    );
    assert_eq!(
        Outcome::of::<()>(&Err(GatewayError::Server(500))),
        Outcome::Failed
    );
}

#[test]
fn fails_fast_while_open() {
    let t0 = Instant::now();
    let mut breaker = opened(2, t0);
    let just_before = t0 + JUST_SHORT;
    assert_eq!(breaker.try_acquire(t0), Err(GatewayError::CircuitOpen));
    assert_eq!(
        breaker.try_acquire(just_before),
        Err(GatewayError::CircuitOpen)
    );
    assert_eq!(breaker.state(just_before), CircuitState::Open);
}

#[test]
fn half_opens_when_the_cool_down_has_passed() {
    let t0 = Instant::now();
    let breaker = opened(2, t0);
    assert_eq!(breaker.state(t0 + COOL_DOWN), CircuitState::HalfOpen);
}

#[test]
fn lets_one_probe_through_at_a_time_when_half_open() {
    let t0 = Instant::now();
    let mut breaker = opened(2, t0);
    let later = t0 + COOL_DOWN;
    let probe = breaker.try_acquire(later).unwrap();
    assert_eq!(breaker.try_acquire(later), Err(GatewayError::CircuitOpen));
    assert_eq!(breaker.state(later), CircuitState::HalfOpen);
    breaker.record(probe, Outcome::Answered, later);
    assert!(breaker.try_acquire(later).is_ok());
}

#[test]
fn closes_when_the_probe_succeeds() {
    let t0 = Instant::now();
    let mut breaker = opened(2, t0);
    let later = t0 + COOL_DOWN;
    call(&mut breaker, later, Outcome::Answered).unwrap();
    assert_eq!(breaker.state(later), CircuitState::Closed);
    // The failure count starts again from zero.
    call(&mut breaker, later, Outcome::Failed).unwrap();
    assert_eq!(breaker.state(later), CircuitState::Closed);
}

#[test]
fn opens_again_for_a_whole_cool_down_when_the_probe_fails() {
    let t0 = Instant::now();
    let mut breaker = opened(2, t0);
    let t1 = t0 + COOL_DOWN + Duration::from_secs(5);
    call(&mut breaker, t1, Outcome::Failed).unwrap();
    assert_eq!(breaker.state(t1), CircuitState::Open);
    assert_eq!(breaker.state(t1 + JUST_SHORT), CircuitState::Open);
    assert_eq!(breaker.state(t1 + COOL_DOWN), CircuitState::HalfOpen);
}

#[test]
fn an_abandoned_probe_lets_the_next_caller_probe() {
    let t0 = Instant::now();
    let mut breaker = opened(1, t0);
    let later = t0 + COOL_DOWN;
    let probe = breaker.try_acquire(later).unwrap();
    breaker.record(probe, Outcome::Abandoned, later);
    assert_eq!(breaker.state(later), CircuitState::HalfOpen);
    assert!(breaker.try_acquire(later).is_ok());
}

#[test]
fn a_late_result_from_before_a_transition_is_ignored() {
    let t0 = Instant::now();
    let mut breaker = breaker(1);
    let slow = breaker.try_acquire(t0).unwrap();
    call(&mut breaker, t0, Outcome::Failed).unwrap(); // opens
    let later = t0 + COOL_DOWN;
    let probe = breaker.try_acquire(later).unwrap();
    breaker.record(probe, Outcome::Answered, later); // closes
    breaker.record(slow, Outcome::Failed, later); // the slow call from the first closed period
    assert_eq!(breaker.state(later), CircuitState::Closed);
}

#[test]
fn a_threshold_of_zero_means_one() {
    let t0 = Instant::now();
    let mut breaker = breaker(0);
    assert!(breaker.try_acquire(t0).is_ok());
    call(&mut breaker, t0, Outcome::Failed).unwrap();
    assert_eq!(breaker.state(t0), CircuitState::Open);
}

#[test]
fn the_gauge_values_are_zero_one_two() {
    assert_eq!(CircuitState::Closed.as_gauge(), 0);
    assert_eq!(CircuitState::Open.as_gauge(), 1);
    assert_eq!(CircuitState::HalfOpen.as_gauge(), 2);
}

// The wrapper, over a scripted gateway and a clock moved by hand.

#[derive(Debug)]
struct ManualClock {
    start: Instant,
    offset: Mutex<Duration>,
}

impl ManualClock {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            start: Instant::now(),
            offset: Mutex::new(Duration::ZERO),
        })
    }

    fn advance(&self, by: Duration) {
        *self.offset.lock().unwrap() += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.start + *self.offset.lock().unwrap()
    }
}

/// Answers every call with `answer` and counts the calls.
#[derive(Debug)]
struct Scripted {
    answer: Mutex<Result<(), GatewayError>>,
    calls: AtomicU32,
    /// Never answer (a provider that hangs).
    hang: AtomicBool,
}

impl Scripted {
    fn answering(answer: Result<(), GatewayError>) -> Self {
        Self {
            answer: Mutex::new(answer),
            calls: AtomicU32::new(0),
            hang: AtomicBool::new(false),
        }
    }

    async fn answer(&self) -> Result<(), GatewayError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.hang.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        self.answer.lock().unwrap().clone()
    }
}

#[async_trait]
impl PaymentGateway for Scripted {
    async fn capture(&self, _: &CaptureRequest) -> Result<Captured, GatewayError> {
        self.answer().await.map(|()| Captured {
            reference: "cap_1".to_owned(),
        })
    }

    async fn refund(&self, _: &RefundRequest) -> Result<Refunded, GatewayError> {
        self.answer().await.map(|()| Refunded {
            reference: "ref_1".to_owned(),
        })
    }

    async fn lookup(&self, _: &str) -> Result<Option<PaymentRecord>, GatewayError> {
        self.answer().await.map(|()| None)
    }

    async fn captures(
        &self,
        _: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<crate::gateway::LedgerCapture>, GatewayError> {
        self.answer().await.map(|()| Vec::new())
    }
}

fn capture() -> CaptureRequest {
    CaptureRequest {
        idempotency_key: "k".to_owned(),
        booking_id: BookingId::new(),
        amount: Money::new(100, Currency::GBP).unwrap(),
    }
}

fn block_on<F: Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
        .block_on(future)
}

#[test]
fn the_wrapper_fails_fast_without_calling_the_provider_while_open() {
    let clock = ManualClock::new();
    let gateway = BreakingGateway::with_clock(
        Scripted::answering(Err(GatewayError::Server(503))),
        BreakerPolicy {
            failure_threshold: 2,
            cool_down: COOL_DOWN,
        },
        clock.clone(),
    );
    block_on(async {
        for _ in 0..2 {
            assert_eq!(
                gateway.capture(&capture()).await,
                Err(GatewayError::Server(503))
            );
        }
        assert_eq!(gateway.state(), CircuitState::Open);
        assert_eq!(
            gateway.capture(&capture()).await,
            Err(GatewayError::CircuitOpen)
        );
        assert_eq!(gateway.lookup("k").await, Err(GatewayError::CircuitOpen));
        assert_eq!(gateway.inner().calls.load(Ordering::SeqCst), 2);

        clock.advance(COOL_DOWN);
        assert_eq!(gateway.state(), CircuitState::HalfOpen);
        *gateway.inner().answer.lock().unwrap() = Ok(());
        assert!(gateway.capture(&capture()).await.is_ok());
        assert_eq!(gateway.state(), CircuitState::Closed);
        assert_eq!(gateway.inner().calls.load(Ordering::SeqCst), 3);
    });
}

#[test]
fn the_wrapper_passes_declines_through_and_stays_closed() {
    let gateway = BreakingGateway::with_clock(
        Scripted::answering(Err(GatewayError::Declined {
            reason: "no".to_owned(),
        })),
        BreakerPolicy {
            failure_threshold: 1,
            cool_down: COOL_DOWN,
        },
        ManualClock::new(),
    );
    block_on(async {
        for _ in 0..3 {
            assert!(matches!(
                gateway.capture(&capture()).await,
                Err(GatewayError::Declined { .. })
            ));
        }
    });
    assert_eq!(gateway.state(), CircuitState::Closed);
}

#[test]
fn the_wrapper_frees_the_probe_when_the_caller_gives_up_on_it() {
    let clock = ManualClock::new();
    let gateway = BreakingGateway::with_clock(
        Scripted::answering(Err(GatewayError::Timeout)),
        BreakerPolicy {
            failure_threshold: 1,
            cool_down: COOL_DOWN,
        },
        clock.clone(),
    );
    block_on(async {
        assert_eq!(gateway.lookup("k").await, Err(GatewayError::Timeout));
        clock.advance(COOL_DOWN);
        gateway.inner().hang.store(true, Ordering::SeqCst);
        // The probe never answers; the caller's deadline drops it.
        let request = capture();
        let gave_up = tokio::time::timeout(Duration::from_millis(5), gateway.capture(&request));
        assert!(gave_up.await.is_err());
        assert_eq!(gateway.state(), CircuitState::HalfOpen);
        gateway.inner().hang.store(false, Ordering::SeqCst);
        *gateway.inner().answer.lock().unwrap() = Ok(());
        assert!(gateway.capture(&capture()).await.is_ok());
    });
    assert_eq!(gateway.state(), CircuitState::Closed);
}
