//! The in-process gateway simulator harness, driven through the real HTTP adapter the saga
//! uses: modes globally and per booking, counting money in the ledger, and taking the gateway
//! down and bringing it back on the same port with its memory.

#![allow(clippy::unwrap_used)] // A test fails loudly on any unexpected error; that is the point.

use std::time::{Duration, Instant};

use domain::values::{BookingId, Currency, Money};
use gateway_simulator::{Behaviour, Mode};
use payment_gateway::{
    BreakerPolicy, BreakingGateway, CaptureRequest, CircuitState, GatewayError, HttpGateway,
    PaymentGateway, RefundRequest,
};
use system_tests::simulator::Simulator;
use uuid::Uuid;

fn gbp(minor: i64) -> Money {
    Money::new(minor, Currency::GBP).unwrap()
}

fn capture(booking: BookingId, minor: i64) -> CaptureRequest {
    CaptureRequest {
        idempotency_key: format!("capture:{booking}"),
        booking_id: booking,
        amount: gbp(minor),
    }
}

fn gateway(sim: &Simulator) -> HttpGateway {
    HttpGateway::new(&sim.gateway_settings()).unwrap()
}

#[tokio::test]
async fn the_ledger_counts_captures_and_refunds_per_booking() {
    let sim = Simulator::spawn().await.unwrap();
    let gateway = gateway(&sim);
    let (kept, refunded) = (BookingId::new(), BookingId::new());
    gateway.capture(&capture(kept, 125_000)).await.unwrap();
    let taken = gateway.capture(&capture(refunded, 90_000)).await.unwrap();
    // A retry with the same key charges nothing more.
    gateway.capture(&capture(kept, 125_000)).await.unwrap();
    gateway
        .refund(&RefundRequest {
            idempotency_key: format!("refund:{refunded}"),
            capture_reference: taken.reference,
            amount: gbp(90_000),
        })
        .await
        .unwrap();

    let ledger = sim.ledger().await.unwrap();
    assert_eq!(ledger.captures.len(), 2);
    assert_eq!(ledger.captures_for(kept.into()).len(), 1);
    assert!(ledger.refunds_for(kept.into()).is_empty());
    assert_eq!(ledger.captures_for(refunded.into()).len(), 1);
    assert_eq!(ledger.refunds_for(refunded.into()).len(), 1);
    assert_eq!(ledger.totals["GBP"].captured_minor, 215_000);
    assert_eq!(ledger.totals["GBP"].refunded_minor, 90_000);
    assert_eq!(ledger.net_minor("GBP"), 125_000);
}

#[tokio::test]
async fn modes_apply_globally_and_per_booking() {
    let sim = Simulator::spawn().await.unwrap();
    let gateway = gateway(&sim);
    let (declined, approved) = (BookingId::new(), BookingId::new());

    sim.set_behaviour(Behaviour {
        mode: Mode::Decline,
        decline_reason: Some("insufficient_funds".to_owned()),
        ..Behaviour::default()
    })
    .await
    .unwrap();
    let control = sim.set_booking_mode(approved, Mode::Approve).await.unwrap();
    assert_eq!(control.global.mode, Mode::Decline);
    assert_eq!(control.bookings[&Uuid::from(approved)].mode, Mode::Approve);

    assert_eq!(
        gateway.capture(&capture(declined, 100)).await.unwrap_err(),
        GatewayError::Declined {
            reason: "insufficient_funds".to_owned()
        }
    );
    gateway.capture(&capture(approved, 100)).await.unwrap();

    sim.clear_booking(approved).await.unwrap();
    assert!(
        sim.clear_booking(approved).await.is_err(),
        "no override left"
    );
    sim.set_booking_mode(declined, Mode::Error5xx)
        .await
        .unwrap();
    let other = BookingId::new();
    assert!(matches!(
        gateway.capture(&capture(declined, 100)).await,
        // The first answer to that key was a decline, and a replay gets it whatever the mode.
        Err(GatewayError::Declined { .. })
    ));
    sim.set_booking_mode(other, Mode::Error5xx).await.unwrap();
    assert_eq!(
        gateway.capture(&capture(other, 100)).await.unwrap_err(),
        GatewayError::Server(500)
    );

    let control = sim.reset_control().await.unwrap();
    assert_eq!(control.global.mode, Mode::Approve);
    assert!(control.bookings.is_empty());
    assert_eq!(sim.control().await.unwrap(), control);
    gateway.capture(&capture(other, 100)).await.unwrap();

    let ledger = sim.ledger().await.unwrap();
    assert_eq!(ledger.declined, 1);
    assert_eq!(
        ledger.net_minor("GBP"),
        200,
        "approved and other, once each"
    );
}

#[tokio::test]
async fn a_stopped_gateway_refuses_connections_and_comes_back_on_its_port_with_its_ledger() {
    let mut sim = Simulator::spawn().await.unwrap();
    let url = sim.url();
    let gateway = gateway(&sim);
    let before = BookingId::new();
    let first = gateway.capture(&capture(before, 500)).await.unwrap();

    sim.stop().await.unwrap();
    assert!(!sim.is_running());
    let down = gateway.capture(&capture(BookingId::new(), 500)).await;
    assert!(
        matches!(down, Err(GatewayError::Unavailable(_))),
        "{down:?}"
    );
    assert!(sim.ledger().await.is_err(), "nothing answers while stopped");
    sim.stop().await.unwrap(); // stopping twice is harmless

    sim.restart().await.unwrap();
    assert!(sim.is_running());
    assert_eq!(sim.url(), url);
    // Same memory: the old capture is counted, and its key still gets the first answer.
    let replay = gateway.capture(&capture(before, 500)).await.unwrap();
    assert_eq!(replay.reference, first.reference);
    gateway
        .capture(&capture(BookingId::new(), 700))
        .await
        .unwrap();
    let ledger = sim.ledger().await.unwrap();
    assert_eq!(ledger.captures.len(), 2);
    assert_eq!(ledger.net_minor("GBP"), 1200);
}

#[tokio::test]
async fn the_breaker_opens_while_the_gateway_is_down_and_closes_when_it_is_back() {
    let mut sim = Simulator::spawn().await.unwrap();
    let policy = BreakerPolicy {
        failure_threshold: 2,
        cool_down: Duration::from_millis(200),
    };
    let gateway = BreakingGateway::new(gateway(&sim), policy);

    sim.stop().await.unwrap();
    for _ in 0..2 {
        let result = gateway.capture(&capture(BookingId::new(), 100)).await;
        assert!(
            matches!(result, Err(GatewayError::Unavailable(_))),
            "{result:?}"
        );
    }
    assert_eq!(gateway.state(), CircuitState::Open);
    assert_eq!(
        gateway
            .capture(&capture(BookingId::new(), 100))
            .await
            .unwrap_err(),
        GatewayError::CircuitOpen
    );

    sim.restart().await.unwrap();
    tokio::time::sleep(policy.cool_down).await;
    let booking = BookingId::new();
    gateway.capture(&capture(booking, 100)).await.unwrap();
    assert_eq!(gateway.state(), CircuitState::Closed);
    let ledger = sim.ledger().await.unwrap();
    assert_eq!(
        ledger.captures.len(),
        1,
        "only the probe after the outage took money"
    );
    assert_eq!(ledger.captures_for(booking.into()).len(), 1);
}

#[tokio::test]
async fn stopping_ends_a_hanging_capture_at_once() {
    let mut sim = Simulator::spawn().await.unwrap();
    sim.set_mode(Mode::Timeout).await.unwrap();
    let gateway = gateway(&sim);
    let booking = BookingId::new();
    let hanging = tokio::spawn(async move { gateway.capture(&capture(booking, 100)).await });
    // Let the request reach the simulator and start hanging.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!hanging.is_finished());

    let started = Instant::now();
    sim.stop().await.unwrap();
    let answer = hanging.await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "stop took {:?}",
        started.elapsed()
    );
    assert!(
        matches!(answer, Err(ref error) if error.is_infrastructure()),
        "{answer:?}"
    );

    sim.restart().await.unwrap();
    let ledger = sim.ledger().await.unwrap();
    assert!(ledger.captures.is_empty(), "a timeout records nothing");
    assert_eq!(
        sim.control().await.unwrap().global.mode,
        Mode::Timeout,
        "behaviours survive"
    );
}
