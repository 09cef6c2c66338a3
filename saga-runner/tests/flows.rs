//! The saga's flows end to end, on the real broker and PostgreSQL, the gateway simulator and
//! an SMTP sink, with the runner as a real process: each outcome of PRODUCT.md's saga, with
//! money and mail counted.

#![allow(clippy::unwrap_used)] // A test fails loudly on any unexpected error; that is the point.

use std::{path::Path, time::Duration};

use gateway_simulator::{Behaviour, Mode};
use system_tests::saga_stack::{SagaOptions, SagaStack, performed_steps as steps};
use uuid::Uuid;

const PRICE: i64 = 125_000;
const DONE_WITHIN: Duration = Duration::from_mins(1);

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_saga-runner"))
}

async fn spawn(options: SagaOptions) -> SagaStack {
    SagaStack::spawn(binary(), options).await.unwrap()
}

fn message_id(kind: &str, booking: Uuid) -> String {
    format!("<{kind}.{booking}@funeral-manager>")
}

/// Captured minus refunded for one booking, in minor units.
async fn net_money(saga: &SagaStack, booking: Uuid) -> (usize, usize, i64) {
    let ledger = saga.simulator.ledger().await.unwrap();
    let captures = ledger.captures_for(booking);
    let refunds = ledger.refunds_for(booking);
    let net = captures
        .iter()
        .map(|c| c.amount.amount_minor())
        .sum::<i64>()
        - refunds.iter().map(|r| r.amount.amount_minor()).sum::<i64>();
    (captures.len(), refunds.len(), net)
}

#[tokio::test]
async fn a_booking_is_held_paid_confirmed_and_the_family_told_once() {
    let saga = spawn(SagaOptions::default()).await;
    let facility = saga.register_facility().await.unwrap();
    let booking = saga.request_booking(facility, 3, 0, PRICE).await.unwrap();

    let done = saga.wait_done(booking, DONE_WITHIN).await.unwrap();
    assert_eq!(
        steps(&done),
        [
            "reserve_slot",
            "mark_slot_held",
            "capture",
            "confirm",
            "notify_confirmation"
        ]
    );
    assert_eq!(done["compensated"], false);
    let read = saga
        .booking_with_status(booking, "confirmed")
        .await
        .unwrap();
    assert_eq!(read["status"], "confirmed");
    // The query-api shows the saga's progress with the booking.
    let progress = &read["saga_progress"];
    assert_eq!(progress["stage"], "done", "{read}");
    assert_eq!(progress["done"], true, "{read}");
    assert_eq!(steps(progress), steps(&done), "{read}");
    assert_eq!(net_money(&saga, booking).await, (1, 0, PRICE));
    saga.sink
        .wait_for(1, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(
        saga.mails_for(booking),
        [message_id("confirmation", booking)]
    );
    let mail = &saga.sink.messages()[0];
    assert_eq!(mail.to, ["byron@example.org"]);
}

#[tokio::test]
async fn a_declined_payment_releases_the_slot_fails_the_booking_and_keeps_no_money() {
    let saga = spawn(SagaOptions::default()).await;
    saga.simulator.set_mode(Mode::Decline).await.unwrap();
    let facility = saga.register_facility().await.unwrap();
    let booking = saga.request_booking(facility, 3, 1, PRICE).await.unwrap();

    let done = saga.wait_done(booking, DONE_WITHIN).await.unwrap();
    assert_eq!(
        steps(&done),
        [
            "reserve_slot",
            "mark_slot_held",
            "capture",
            "release_slot",
            "fail",
            "notify_failure"
        ]
    );
    assert_eq!(done["compensated"], true);
    let read = saga.booking_with_status(booking, "failed").await.unwrap();
    assert_eq!(read["status"], "failed");
    assert_eq!(net_money(&saga, booking).await, (0, 0, 0));
    saga.sink
        .wait_for(1, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(saga.mails_for(booking), [message_id("failure", booking)]);

    // The slot was given back: the same slot can be booked, and this time it is paid for.
    saga.simulator.set_mode(Mode::Approve).await.unwrap();
    let again = saga.request_booking(facility, 3, 1, PRICE).await.unwrap();
    saga.wait_done(again, DONE_WITHIN).await.unwrap();
    saga.booking_with_status(again, "confirmed").await.unwrap();
}

#[tokio::test]
async fn a_capture_answered_after_its_deadline_confirms_the_booking_and_keeps_the_money() {
    // The gateway takes the money but answers only after the capture deadline. The saga
    // records the capture; until it reads the payment's event it must wait for it, not fail
    // the booking (and refund the family) because the deadline passed with "nothing" taken.
    // Found by the kill -9 test: a crash after a lookup that found the capture, with the
    // restarted consumer behind the worker.
    let saga = spawn(SagaOptions {
        capture_deadline: Duration::from_secs(1),
        gateway_timeout: Duration::from_secs(5),
        ..SagaOptions::default()
    })
    .await;
    saga.simulator
        .set_behaviour(Behaviour {
            delay_ms: Some(2_000),
            ..Behaviour::once(Mode::Slow)
        })
        .await
        .unwrap();
    let facility = saga.register_facility().await.unwrap();
    let booking = saga.request_booking(facility, 3, 6, PRICE).await.unwrap();

    let done = saga.wait_done(booking, DONE_WITHIN).await.unwrap();
    let performed = steps(&done);
    assert_eq!(performed.first().unwrap(), "reserve_slot", "{performed:?}");
    assert_eq!(performed.last().unwrap(), "notify_confirmation", "{done}");
    for compensation in ["release_slot", "fail", "refund"] {
        assert!(
            !performed.iter().any(|step| step == compensation),
            "{compensation} in {performed:?}"
        );
    }
    assert_eq!(done["compensated"], false, "{done}");
    saga.booking_with_status(booking, "confirmed")
        .await
        .unwrap();
    assert_eq!(net_money(&saga, booking).await, (1, 0, PRICE));
    assert_eq!(
        saga.mails_for(booking),
        [message_id("confirmation", booking)]
    );
}

#[tokio::test]
async fn a_capture_whose_answer_times_out_is_looked_up_and_the_booking_confirmed() {
    // The first capture hangs after taking the money; the capture deadline passes before any
    // retry, so the saga must ask the gateway what happened instead of failing the booking.
    let saga = spawn(SagaOptions {
        capture_deadline: Duration::from_secs(1),
        gateway_timeout: Duration::from_millis(1500),
        ..SagaOptions::default()
    })
    .await;
    saga.simulator
        .set_behaviour(Behaviour::once(Mode::CaptureThenTimeout))
        .await
        .unwrap();
    let facility = saga.register_facility().await.unwrap();
    let booking = saga.request_booking(facility, 3, 2, PRICE).await.unwrap();

    let done = saga.wait_done(booking, DONE_WITHIN).await.unwrap();
    let performed = steps(&done);
    assert!(
        performed.contains(&"lookup_capture".to_owned()),
        "{performed:?}"
    );
    assert_eq!(performed.last().unwrap(), "notify_confirmation");
    let failed_capture = done["history"]
        .as_array()
        .unwrap()
        .iter()
        .any(|entry| entry["step"] == "capture" && entry["outcome"] == "failed");
    assert!(
        failed_capture,
        "the first capture's answer was lost: {done}"
    );
    saga.booking_with_status(booking, "confirmed")
        .await
        .unwrap();
    assert_eq!(net_money(&saga, booking).await, (1, 0, PRICE));
    assert_eq!(
        saga.mails_for(booking),
        [message_id("confirmation", booking)]
    );
}

/// Issue 14: a real provider finishes a capture whose client gave up. The simulator's
/// `detached_capture` works on it for 4 s, past the runner's 1.5 s request timeout and its 1 s
/// capture deadline, and meanwhile a lookup finds nothing. Believing that "nothing" at once
/// would fail the booking and leave the family charged; the runner believes it only after its
/// settle window (8 s here), so it finds the capture, records it and confirms.
#[tokio::test]
async fn a_capture_the_provider_finishes_after_its_client_gave_up_is_found_and_confirmed() {
    let saga = spawn(SagaOptions {
        capture_deadline: Duration::from_secs(1),
        gateway_timeout: Duration::from_millis(1500),
        settle_window: Some(Duration::from_secs(8)),
        ..SagaOptions::default()
    })
    .await;
    saga.simulator
        .set_behaviour(Behaviour {
            delay_ms: Some(4_000),
            ..Behaviour::once(Mode::DetachedCapture)
        })
        .await
        .unwrap();
    let facility = saga.register_facility().await.unwrap();
    let booking = saga.request_booking(facility, 3, 4, PRICE).await.unwrap();

    let done = saga.wait_done(booking, DONE_WITHIN).await.unwrap();
    let performed = steps(&done);
    for compensation in ["release_slot", "fail", "refund"] {
        assert!(
            !performed.iter().any(|step| step == compensation),
            "{compensation} in {performed:?}"
        );
    }
    assert!(
        performed.contains(&"lookup_capture".to_owned()),
        "the capture's answer was lost, so the runner had to look it up: {performed:?}"
    );
    assert_eq!(performed.last().unwrap(), "notify_confirmation", "{done}");
    saga.booking_with_status(booking, "confirmed")
        .await
        .unwrap();
    assert_eq!(net_money(&saga, booking).await, (1, 0, PRICE));
    assert_eq!(
        saga.mails_for(booking),
        [message_id("confirmation", booking)]
    );
}

#[tokio::test]
async fn with_the_gateway_down_the_breaker_opens_bookings_fail_cleanly_and_it_closes_again() {
    let saga_options = SagaOptions {
        capture_deadline: Duration::from_secs(4),
        breaker_threshold: 3,
        breaker_cool_down: Duration::from_secs(1),
        ..SagaOptions::default()
    };
    let mut saga = spawn(saga_options).await;
    let facility = saga.register_facility().await.unwrap();
    saga.simulator.stop().await.unwrap();

    let mut bookings = Vec::new();
    for index in 0..3 {
        bookings.push(
            saga.request_booking(facility, 4, index, PRICE)
                .await
                .unwrap(),
        );
    }
    // While the bookings wait for their deadline, the breaker opens.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let list = saga.sagas("in_flight").await.unwrap();
        if list["gateway_circuit"] != "closed" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the breaker never opened: {list}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for &booking in &bookings {
        let done = saga.wait_done(booking, DONE_WITHIN).await.unwrap();
        let performed = steps(&done);
        assert_eq!(
            performed[performed.len() - 3..],
            ["release_slot", "fail", "notify_failure"],
            "{done}"
        );
        saga.booking_with_status(booking, "failed").await.unwrap();
        assert_eq!(saga.mails_for(booking), [message_id("failure", booking)]);
    }

    // The gateway comes back: a new booking goes through and the breaker is closed again.
    saga.simulator.restart().await.unwrap();
    let ledger = saga.simulator.ledger().await.unwrap();
    assert!(ledger.captures.is_empty(), "no money moved: {ledger:?}");
    let after = saga.request_booking(facility, 4, 0, PRICE).await.unwrap();
    saga.wait_done(after, DONE_WITHIN).await.unwrap();
    saga.booking_with_status(after, "confirmed").await.unwrap();
    let list = saga.sagas("all").await.unwrap();
    assert_eq!(list["gateway_circuit"], "closed", "{list}");
}

#[tokio::test]
async fn a_cancellation_after_confirmation_refunds_once_releases_the_slot_and_tells_the_family() {
    let saga = spawn(SagaOptions::default()).await;
    let facility = saga.register_facility().await.unwrap();
    let booking = saga.request_booking(facility, 5, 3, PRICE).await.unwrap();
    saga.wait_done(booking, DONE_WITHIN).await.unwrap();
    saga.booking_with_status(booking, "confirmed")
        .await
        .unwrap();

    saga.cancel(booking).await.unwrap();
    saga.booking_with_status(booking, "cancelled")
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + DONE_WITHIN;
    let done = loop {
        let done = saga.wait_done(booking, DONE_WITHIN).await.unwrap();
        if steps(&done).last().map(String::as_str) == Some("notify_cancellation") {
            break done;
        }
        assert!(tokio::time::Instant::now() < deadline, "{done}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let performed = steps(&done);
    assert_eq!(
        performed[performed.len() - 3..],
        ["refund", "release_slot", "notify_cancellation"]
    );
    assert_eq!(net_money(&saga, booking).await, (1, 1, 0));
    saga.sink
        .wait_for(2, Duration::from_secs(10))
        .await
        .unwrap();
    let mut mails = saga.mails_for(booking);
    mails.sort();
    assert_eq!(
        mails,
        [
            message_id("cancellation", booking),
            message_id("confirmation", booking)
        ]
    );
    // The slot is free again.
    let again = saga.request_booking(facility, 5, 3, PRICE).await.unwrap();
    saga.wait_done(again, DONE_WITHIN).await.unwrap();
    saga.booking_with_status(again, "confirmed").await.unwrap();
}

#[tokio::test]
async fn a_slot_the_facility_refuses_rejects_the_booking_without_taking_money() {
    let saga = spawn(SagaOptions::default()).await;
    let facility = saga.register_facility().await.unwrap();
    let first = saga.request_booking(facility, 6, 4, PRICE).await.unwrap();
    saga.wait_done(first, DONE_WITHIN).await.unwrap();
    let second = saga.request_booking(facility, 6, 4, PRICE).await.unwrap();

    let done = saga.wait_done(second, DONE_WITHIN).await.unwrap();
    assert_eq!(steps(&done), ["reserve_slot", "reject", "notify_rejection"]);
    let read = saga.booking_with_status(second, "rejected").await.unwrap();
    assert_eq!(read["status"], "rejected");
    assert_eq!(net_money(&saga, second).await, (0, 0, 0));
    assert_eq!(saga.mails_for(second), [message_id("rejection", second)]);
    // The first booking keeps its slot and its money.
    saga.booking_with_status(first, "confirmed").await.unwrap();
    assert_eq!(net_money(&saga, first).await, (1, 0, PRICE));
}

/// Issue 14: a record that passes every schema but does not decode into a domain event (here a
/// facility in a time zone that does not exist) made the runner fail its whole batch and retry
/// it for ever, so no booking made afterwards was reserved, charged or confirmed. Now the
/// runner dead-letters it under its own name and goes on.
#[tokio::test]
async fn a_record_that_passes_its_schemas_but_does_not_decode_is_dead_lettered_and_sagas_go_on() {
    use event_log::{EventProducer, producer::headers};
    use futures::StreamExt;
    use rdkafka::{Message, message::Headers, message::OwnedHeaders};
    use schemas::AggregateType;

    let saga = spawn(SagaOptions::default()).await;
    let poison_id = Uuid::new_v4();
    let poison = serde_json::json!({
        "event_id": Uuid::new_v4(), "event_type": "FacilityRegistered", "event_version": 1,
        "aggregate_type": "facility", "aggregate_id": poison_id, "sequence": 1,
        "occurred_at": "2027-01-05T09:30:00Z", "correlation_id": Uuid::new_v4(),
        "causation_id": Uuid::new_v4(), "actor": {"subject": "d", "role": "director"},
        "data": {
            "facility_id": poison_id, "name": "Chapel on Mars", "kind": "chapel",
            "capacity": 40, "time_zone": "Mars/Olympus_Mons",
            "opening_hours": [{"weekday": "mon", "opens": "09:00", "closes": "17:00"}],
            "turnaround_minutes": 30
        }
    });
    let producer = EventProducer::new(&saga.stack.kafka).unwrap();
    let facility_topic = producer.topics().events(AggregateType::Facility);
    let origin = producer
        .send(
            &facility_topic,
            Some(poison_id.to_string().as_bytes()),
            &serde_json::to_vec(&poison).unwrap(),
            OwnedHeaders::new(),
        )
        .await
        .unwrap();

    // Everything after the poison still flows.
    let facility = saga.register_facility().await.unwrap();
    let booking = saga.request_booking(facility, 3, 0, PRICE).await.unwrap();
    let done = saga.wait_done(booking, DONE_WITHIN).await.unwrap();
    assert_eq!(done["facts"]["status"], "confirmed", "{done}");
    assert_eq!(net_money(&saga, booking).await, (1, 0, PRICE));

    // The runner dead-lettered the poison itself, naming itself and why.
    let reader =
        event_log::consumer::manual_consumer(&saga.stack.kafka, "saga-poison-test").unwrap();
    let dead_letters = producer.topics().dead_letter();
    let partitions = event_log::consumer::partitions(
        &reader,
        std::slice::from_ref(&dead_letters),
        &saga.stack.kafka,
    )
    .unwrap();
    event_log::consumer::assign(&reader, &partitions.into_iter().map(|tp| (tp, 0)).collect())
        .unwrap();
    let mut stream = reader.stream();
    let header = |message: &rdkafka::message::BorrowedMessage<'_>, name: &str| {
        message
            .headers()
            .and_then(|all| all.iter().find(|h| h.key == name).and_then(|h| h.value))
            .map(|v| String::from_utf8_lossy(v).into_owned())
    };
    let reason = loop {
        let message = tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .expect("the runner's dead letter arrives")
            .unwrap()
            .unwrap();
        if header(&message, headers::DEAD_LETTER_READER).as_deref() == Some("saga-runner") {
            assert_eq!(
                header(&message, headers::ORIGIN_TOPIC).as_deref(),
                Some(facility_topic.as_str())
            );
            assert_eq!(
                header(&message, headers::ORIGIN_OFFSET),
                Some(origin.offset.to_string())
            );
            break header(&message, headers::DEAD_LETTER_REASON).unwrap();
        }
    };
    assert!(
        reason.starts_with("FacilityRegistered v1"),
        "the reason names the event: {reason}"
    );
}

#[tokio::test]
async fn a_booking_erased_mid_saga_is_confirmed_but_no_letter_goes_to_its_erased_contacts() {
    let saga = spawn(SagaOptions::default()).await;
    // The capture takes 3 s: time to erase while the saga is under way.
    saga.simulator
        .set_behaviour(Behaviour {
            delay_ms: Some(3_000),
            ..Behaviour::once(Mode::Slow)
        })
        .await
        .unwrap();
    let facility = saga.register_facility().await.unwrap();
    let booking = saga.request_booking(facility, 3, 1, PRICE).await.unwrap();
    saga.booking_with_status(booking, "slot_held")
        .await
        .unwrap();
    let response = saga
        .stack
        .http
        .post(format!(
            "{}/bookings/{booking}/erase",
            saga.stack.command_url
        ))
        .bearer_auth(saga.director().await)
        .json(&serde_json::json!({"reason": "the family asked"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());

    let done = saga.wait_done(booking, DONE_WITHIN).await.unwrap();
    assert_eq!(done["compensated"], false, "{done}");
    // Nothing else about the booking changed: it is paid and confirmed, its personal data gone.
    let read = saga
        .booking_with_status(booking, "confirmed")
        .await
        .unwrap();
    assert_eq!(read["deceased"], "erased", "{read}");
    assert_eq!(read["family_contacts"], "erased", "{read}");
    assert_eq!(net_money(&saga, booking).await, (1, 0, PRICE));

    // A booking nobody erased gets its letter: the sink would have seen the erased one's.
    let other = saga.request_booking(facility, 3, 2, PRICE).await.unwrap();
    saga.wait_done(other, DONE_WITHIN).await.unwrap();
    saga.sink
        .wait_for(1, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(saga.mails_for(other), [message_id("confirmation", other)]);
    assert!(
        saga.mails_for(booking).is_empty(),
        "{:?}",
        saga.mails_for(booking)
    );
}

/// The test server's key table (`privacy.data_keys`), connected before the story starts so a
/// change lands in milliseconds.
async fn key_table() -> sqlx::PgPool {
    let url = system_tests::required_env("FM_TEST_DATABASE_URL").unwrap();
    sqlx::PgPool::connect(&url).await.unwrap()
}

/// The booking's data-key row changed by `update` (SQL after `SET`); returns the key's id.
async fn change_key_row(keys: &sqlx::PgPool, booking: Uuid, update: &str) -> Uuid {
    sqlx::query_scalar(&format!(
        "UPDATE privacy.data_keys SET {update} WHERE booking_id = $1 RETURNING key_id"
    ))
    .bind(booking)
    .fetch_one(keys)
    .await
    .unwrap()
}

/// The next capture takes 3 s (as in the mid-saga erasure): time to change a key row before the
/// saga reaches its letter.
async fn slow_next_capture(saga: &SagaStack) {
    saga.simulator
        .set_behaviour(Behaviour {
            delay_ms: Some(3_000),
            ..Behaviour::once(Mode::Slow)
        })
        .await
        .unwrap();
}

/// Polls the runner's view of the saga until `until` holds; returns it.
async fn wait_saga(
    saga: &SagaStack,
    booking: Uuid,
    until: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + DONE_WITHIN;
    loop {
        let view = saga.saga(booking).await.unwrap();
        if let Some(view) = view.filter(|view| until(view)) {
            return view;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the saga of {booking} never got there; runner log in {}",
            saga.log_dir().display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn recipients_that_do_not_open_send_no_letter_a_missing_master_key_waits_a_tampered_key_parks()
 {
    let saga = spawn(SagaOptions::default()).await;
    let facility = saga.register_facility().await.unwrap();
    let keys = key_table().await;

    // The master key that wraps the booking's data key is not in the runner's settings (as if
    // it were not configured): the letter waits, retried, its error naming the key. (The key
    // row is changed while the capture takes its 3 s, before the saga opens it.)
    slow_next_capture(&saga).await;
    let waiting = saga.request_booking(facility, 3, 1, PRICE).await.unwrap();
    let key_id = change_key_row(&keys, waiting, "master_key_id = 'absent'").await;
    assert!(
        saga.mails_for(waiting).is_empty(),
        "the letter went before the key changed"
    );
    let view = wait_saga(&saga, waiting, |view| {
        view["last_error"]
            .as_str()
            .is_some_and(|error| error.contains("absent"))
    })
    .await;
    let error = view["last_error"].as_str().unwrap();
    assert!(error.contains(&key_id.to_string()), "{error}");
    assert_eq!(view["done"], false, "{view}");
    assert_ne!(view["stage"], "parked", "{view}");
    assert!(saga.mails_for(waiting).is_empty());
    // The master key is back: the letter goes, without an operator.
    change_key_row(&keys, waiting, "master_key_id = 'test-1'").await;
    saga.wait_done(waiting, DONE_WITHIN).await.unwrap();
    saga.sink
        .wait_for(1, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(
        saga.mails_for(waiting),
        [message_id("confirmation", waiting)]
    );

    // A data key that fails authentication (one byte of the wrapped key changed) opens under no
    // settings: the saga parks for an operator, the reason naming the key and the cause.
    slow_next_capture(&saga).await;
    let tampered = saga.request_booking(facility, 3, 2, PRICE).await.unwrap();
    let key_id = change_key_row(
        &keys,
        tampered,
        "wrapped_key = set_byte(wrapped_key, 30, (get_byte(wrapped_key, 30) + 1) % 256)",
    )
    .await;
    let view = wait_saga(&saga, tampered, |view| view["stage"] == "parked").await;
    let shown = view.to_string();
    assert!(
        shown.contains(&key_id.to_string()) && shown.contains("fails authentication"),
        "{shown}"
    );
    for plaintext in ["Ada", "Lovelace", "byron@example.org", "+447700900123"] {
        assert!(!shown.contains(plaintext), "{shown}");
    }
    assert!(saga.mails_for(tampered).is_empty());
    // It blocks no other saga.
    let other = saga.request_booking(facility, 3, 3, PRICE).await.unwrap();
    saga.wait_done(other, DONE_WITHIN).await.unwrap();
    saga.sink
        .wait_for(2, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(saga.mails_for(other), [message_id("confirmation", other)]);
    assert!(saga.mails_for(tampered).is_empty());
}

/// Every record of the booking topic, as JSON envelopes, read from the beginning to its end.
async fn booking_records(saga: &SagaStack) -> Vec<serde_json::Value> {
    use futures::StreamExt as _;
    use rdkafka::Message as _;
    let kafka = saga.stack.kafka.clone();
    let topic = event_log::Topics::new(&kafka.topic_prefix).events(schemas::AggregateType::Booking);
    let reader = event_log::consumer::manual_consumer(&kafka, "flows-test").unwrap();
    let partitions = event_log::consumer::partitions(&reader, &[topic], &kafka).unwrap();
    let marks = event_log::consumer::watermarks(&reader, &partitions, &kafka).unwrap();
    let mut pending: std::collections::BTreeMap<_, _> = marks
        .iter()
        .filter(|(_, (low, high))| low < high)
        .map(|(tp, (_, high))| (tp.clone(), *high))
        .collect();
    let starts = marks
        .iter()
        .map(|(tp, (low, _))| (tp.clone(), *low))
        .collect();
    event_log::consumer::assign(&reader, &starts).unwrap();
    let mut stream = reader.stream();
    let mut records = Vec::new();
    while !pending.is_empty() {
        let message = tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let tp = (message.topic().to_owned(), message.partition());
        if let Some(end) = pending.get(&tp).copied() {
            records.push(serde_json::from_slice(message.payload().unwrap()).unwrap());
            if message.offset() + 1 >= end {
                pending.remove(&tp);
            }
        }
    }
    records
}

#[tokio::test]
#[allow(clippy::too_many_lines)] // One story, told in order.
async fn the_retention_rule_erases_a_booking_once_after_its_service_and_the_job_removes_orphan_keys()
 {
    let mut saga = spawn(SagaOptions {
        env: vec![
            ("FM_PRIVACY__ERASE_AFTER".to_owned(), "1d".to_owned()),
            ("FM_PRIVACY__SWEEP_INTERVAL".to_owned(), "200".to_owned()),
        ],
        ..SagaOptions::default()
    })
    .await;
    // Two replicas run the job: one erasure all the same.
    saga.add_runner().await.unwrap();
    let facility = saga.register_facility().await.unwrap();
    let old = saga.request_booking(facility, 3, 1, PRICE).await.unwrap();
    let recent = saga.request_booking(facility, 3, 2, PRICE).await.unwrap();
    saga.wait_done(old, DONE_WITHIN).await.unwrap();
    saga.wait_done(recent, DONE_WITHIN).await.unwrap();
    // Keys for requests that never reached the log: one made two days ago, one an hour ago.
    let (stale_orphan, young_orphan) = (Uuid::new_v4(), Uuid::new_v4());
    let keys = sqlx::PgPool::connect(&system_tests::required_env("FM_TEST_DATABASE_URL").unwrap())
        .await
        .unwrap();
    for (booking, age) in [(stale_orphan, "2 days"), (young_orphan, "1 hour")] {
        sqlx::query(&format!(
            "INSERT INTO privacy.data_keys (booking_id, key_id, wrapped_key, master_key_id, created_at) \
             VALUES ($1, $2, '\\x00', 'test-1', now() - interval '{age}')"
        ))
        .bind(booking)
        .bind(Uuid::new_v4())
        .execute(&keys)
        .await
        .unwrap();
    }
    let key_rows = |booking: Uuid| {
        let keys = keys.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM privacy.data_keys WHERE booking_id = $1",
            )
            .bind(booking)
            .fetch_one(&keys)
            .await
            .unwrap()
        }
    };

    // The old booking's service ended three days ago (its slot moved back in the saga's facts,
    // which is all the job reads).
    let sagas = sqlx::PgPool::connect(&saga.stack.database_url)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE saga.sagas SET facts = jsonb_set(facts, '{request,slot}', \
         jsonb_build_object('start', to_char((now() - interval '3 days') AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:00:00\"Z\"'), \
                            'end', to_char((now() - interval '3 days' + interval '1 hour') AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:00:00\"Z\"'))) \
         WHERE booking_id = $1",
    )
    .bind(old)
    .execute(&sagas)
    .await
    .unwrap();

    // Erased through the command: the read model says so, the key is a tombstone.
    let deadline = tokio::time::Instant::now() + DONE_WITHIN;
    loop {
        let read = saga.booking_with_status(old, "confirmed").await.unwrap();
        if read["deceased"] == "erased" {
            assert_eq!(read["family_contacts"], "erased", "{read}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not erased: {read}; runner logs in {}",
            saga.log_dir().display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The stale orphan goes; the young one and the bookings' keys stay.
    let deadline = tokio::time::Instant::now() + DONE_WITHIN;
    while key_rows(stale_orphan).await != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stale orphan key stayed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(key_rows(young_orphan).await, 1);
    assert_eq!(key_rows(recent).await, 1);
    assert_eq!(key_rows(old).await, 1, "the tombstone stays");

    // Wait until both runners have read the erasure (then neither job picks the booking again).
    let deadline = tokio::time::Instant::now() + DONE_WITHIN;
    loop {
        let erased_read: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM saga.sagas WHERE booking_id = $1 AND facts->>'personal_data_erased' = 'true'",
        )
        .bind(old)
        .fetch_one(&sagas)
        .await
        .unwrap();
        if erased_read == 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the saga never read the erasure"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Erasing again (a director, or the job once more) appends nothing: exactly one
    // PersonalDataErased, saying retention; the recent booking is untouched.
    let response = saga
        .stack
        .http
        .post(format!("{}/bookings/{old}/erase", saga.stack.command_url))
        .bearer_auth(saga.director().await)
        .json(&serde_json::json!({"reason": "again"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let written: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        written["version"], 4,
        "requested, held, confirmed, erased: {written}"
    );
    let records = booking_records(&saga).await;
    let erasures: Vec<_> = records
        .iter()
        .filter(|r| r["event_type"] == "PersonalDataErased")
        .collect();
    assert_eq!(erasures.len(), 1, "{erasures:?}");
    assert_eq!(erasures[0]["aggregate_id"], old.to_string());
    let reason = erasures[0]["data"]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("retention: 1d after the service ended"),
        "{reason}"
    );
    let read = saga.booking_with_status(recent, "confirmed").await.unwrap();
    assert_ne!(read["deceased"], "erased", "{read}");
}
