//! Two saga runners on one database, as compose/k8s deploys them (docs/saga.md, "Replicas").
//! Every replica's workers act on due sagas, each pass holding its saga's lock, so a saga is
//! handled by one runner at a time; one replica at a time, the one holding the consumer lock,
//! reads the log while the others stand by and take over when it dies.
//!
//! Under a load of 500 bookings each runner is killed (SIGKILL) in turn while sagas are in flight and
//! started again. Then every saga finishes; no booking is captured twice and each keeps exactly
//! its price if confirmed and nothing otherwise; each outcome has its mail; both runners
//! performed steps; and no two passes over one saga, by whichever runners, overlap in time.

#![allow(clippy::unwrap_used)] // A test fails loudly on any unexpected error; that is the point.

use std::{collections::BTreeSet, path::Path, time::Duration};

use chrono::{DateTime, Utc};
use futures::{StreamExt, stream};
use gateway_simulator::{Behaviour, Mode};
use serde_json::Value;
use system_tests::saga_stack::{FinishedSaga, SagaOptions, SagaStack};
use uuid::Uuid;

const BOOKINGS: usize = 500;
const CLIENTS: usize = 32;
const FACILITIES: usize = 5;

/// What the test asks of the gateway for booking `i`.
fn behaviour(i: usize) -> Option<Behaviour> {
    match i % 10 {
        6 | 7 => Some(Behaviour {
            mode: Mode::Decline,
            ..Behaviour::default()
        }),
        8 => Some(Behaviour::once(Mode::CaptureThenTimeout)),
        9 => Some(Behaviour {
            mode: Mode::Error5xx,
            times: Some(2),
            ..Behaviour::default()
        }),
        _ => None,
    }
}

/// Requests bookings `range` (each on a slot of its own) and sets their gateway behaviour.
async fn request(
    saga: &SagaStack,
    facilities: &[Uuid],
    range: std::ops::Range<usize>,
) -> Vec<(Uuid, i64)> {
    stream::iter(range)
        .map(|i| async move {
            let facility = facilities[i % FACILITIES];
            let day = 20 + i64::try_from(i / FACILITIES / 8).unwrap();
            let index = u32::try_from((i / FACILITIES) % 8).unwrap();
            let price = 40_000 + i64::try_from(i).unwrap() * 100;
            let booking = saga
                .request_booking(facility, day, index, price)
                .await
                .unwrap();
            if let Some(behaviour) = behaviour(i) {
                saga.simulator
                    .set_booking_behaviour(booking, behaviour)
                    .await
                    .unwrap();
            }
            (booking, price)
        })
        .buffer_unordered(CLIENTS)
        .collect()
        .await
}

/// One pass of one saga as its history records it.
struct Pass {
    runner: String,
    began: DateTime<Utc>,
    at: DateTime<Utc>,
}

fn passes(history: &Value) -> Vec<Pass> {
    let mut passes: Vec<Pass> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| Pass {
            runner: entry["runner"].as_str().unwrap().to_owned(),
            began: entry["began"].as_str().unwrap().parse().unwrap(),
            at: entry["at"].as_str().unwrap().parse().unwrap(),
        })
        .collect();
    passes.sort_by_key(|pass| pass.began);
    passes
}

#[tokio::test]
#[allow(clippy::too_many_lines)] // One story: book and kill, wait, then check every invariant.
async fn two_runners_killed_in_turn_under_load_handle_each_saga_once_at_a_time() {
    let mut saga = SagaStack::spawn(
        Path::new(env!("CARGO_BIN_EXE_saga-runner")),
        SagaOptions {
            capture_deadline: Duration::from_secs(30),
            concurrency: 16,
            ..SagaOptions::default()
        },
    )
    .await
    .unwrap();
    let second = saga.add_runner().await.unwrap();
    let mut facilities = Vec::new();
    for _ in 0..FACILITIES {
        facilities.push(saga.register_facility().await.unwrap());
    }

    // A third of the bookings, then the first runner (which took the consumer lock, having
    // started first) is killed while their sagas are in flight; another third, then the second.
    let started = std::time::Instant::now();
    let third = BOOKINGS / 3;
    let mut booked = request(&saga, &facilities, 0..third).await;
    saga.kill_runner_at(0).await.unwrap();
    booked.extend(request(&saga, &facilities, third..2 * third).await);
    saga.start_runner_at(0, None).await.unwrap();
    saga.kill_runner_at(second).await.unwrap();
    booked.extend(request(&saga, &facilities, 2 * third..BOOKINGS).await);
    saga.start_runner_at(second, None).await.unwrap();
    println!("{BOOKINGS} bookings requested in {:?}", started.elapsed());

    let rows = saga
        .wait_all_done(BOOKINGS, Duration::from_mins(5))
        .await
        .unwrap();
    println!("every saga done after {:?}", started.elapsed());

    // One runner at a time per saga; both runners did work.
    let mut runners = BTreeSet::new();
    for FinishedSaga {
        booking_id: booking,
        history,
        ..
    } in &rows
    {
        let passes = passes(history);
        for pair in passes.windows(2) {
            assert!(
                pair[1].began >= pair[0].at,
                "{booking}: a pass by {} began at {} while one by {} ran until {}",
                pair[1].runner,
                pair[1].began,
                pair[0].runner,
                pair[0].at
            );
        }
        runners.extend(passes.into_iter().map(|pass| pass.runner));
    }
    assert!(
        runners.len() >= 2,
        "steps were performed by {runners:?} only"
    );

    // Money and mail: each booking captured at most once, keeping its price if confirmed and
    // nothing otherwise; its outcome mailed (a mail accepted just before a kill may be sent
    // again with the same Message-ID, which mail clients collapse: counted as one).
    let ledger = saga.simulator.ledger().await.unwrap();
    let mails: BTreeSet<String> = saga
        .sink
        .messages()
        .into_iter()
        .map(|mail| mail.message_id)
        .collect();
    let statuses: std::collections::BTreeMap<Uuid, String> = rows
        .into_iter()
        .map(|saga| (saga.booking_id, saga.status))
        .collect();
    let mut confirmed = 0;
    for (booking, price) in &booked {
        let status = statuses[booking].as_str();
        let captures = ledger.captures_for(*booking);
        assert!(captures.len() <= 1, "{booking} captured twice");
        let kept: i64 = captures
            .iter()
            .map(|c| c.amount.amount_minor())
            .sum::<i64>()
            - ledger
                .refunds_for(*booking)
                .iter()
                .map(|r| r.amount.amount_minor())
                .sum::<i64>();
        let expected = if status == "confirmed" { *price } else { 0 };
        assert_eq!(kept, expected, "{booking} is {status}");
        let mail = match status {
            "confirmed" => "confirmation",
            "failed" => "failure",
            other => panic!("{booking} ended {other}"),
        };
        assert!(
            mails.contains(&format!("<{mail}.{booking}@funeral-manager>")),
            "{booking} {status} without its mail"
        );
        if status == "confirmed" {
            confirmed += 1;
        }
        // A declined card never confirms. The other plans mostly confirm, but may fail
        // cleanly: a capture deadline can pass while the breaker is open after the 5xx plans,
        // or while the runner holding the saga is dead; never with money kept (checked above).
        let plan = usize::try_from((price - 40_000) / 100).unwrap();
        if behaviour(plan).is_some_and(|b| b.mode == Mode::Decline) {
            assert_eq!(status, "failed", "{booking} was declined");
        }
    }
    println!(
        "runners {runners:?}; {confirmed} confirmed; {} mails",
        mails.len()
    );
}
