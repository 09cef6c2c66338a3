//! kill -9 at every step: for each step of every path of the flow, the runner is started with a
//! crash point (`FM_SAGA__CRASH_AFTER`) so that it SIGKILLs itself right after performing that
//! step's effect — the gateway charged, the command appended, the mail accepted — and before it
//! records that it did. A fresh runner then takes over. Each booking must still end where its
//! path ends, with money moved exactly once and one mail per outcome.
//!
//! Mail is the one effect without an idempotency key (SMTP has none): a crash after the server
//! accepted a mail and before the saga recorded it sends it again with the same Message-ID,
//! which mail clients collapse. The test counts distinct Message-IDs and checks a duplicate
//! only ever appears in exactly that case (docs/saga.md, "Durable state, effectively once").

#![allow(clippy::unwrap_used)] // A test fails loudly on any unexpected error; that is the point.

use std::{collections::BTreeSet, os::unix::process::ExitStatusExt, path::Path, time::Duration};

use gateway_simulator::{Behaviour, Mode};
use system_tests::saga_stack::{SagaOptions, SagaStack, performed_steps};
use uuid::Uuid;

const PRICE: i64 = 99_000;
const WITHIN: Duration = Duration::from_mins(1);

/// How a booking's story goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Story {
    /// Approved: confirmed.
    Confirmed,
    /// Declined: failed.
    Declined,
    /// The capture's answer is lost after the money moved; the deadline passes; looked up.
    LookedUp,
    /// The slot is taken: rejected.
    Rejected,
    /// Confirmed, then cancelled: refunded and released.
    CancelledAfterConfirmation,
}

struct Case {
    crash_after: &'static str,
    story: Story,
}

const CASES: &[Case] = &[
    Case {
        crash_after: "reserve_slot",
        story: Story::Confirmed,
    },
    Case {
        crash_after: "mark_slot_held",
        story: Story::Confirmed,
    },
    Case {
        crash_after: "capture",
        story: Story::Confirmed,
    },
    Case {
        crash_after: "confirm",
        story: Story::Confirmed,
    },
    Case {
        crash_after: "notify_confirmation",
        story: Story::Confirmed,
    },
    Case {
        crash_after: "capture",
        story: Story::Declined,
    },
    Case {
        crash_after: "release_slot",
        story: Story::Declined,
    },
    Case {
        crash_after: "fail",
        story: Story::Declined,
    },
    Case {
        crash_after: "notify_failure",
        story: Story::Declined,
    },
    Case {
        crash_after: "lookup_capture",
        story: Story::LookedUp,
    },
    Case {
        crash_after: "reject",
        story: Story::Rejected,
    },
    Case {
        crash_after: "notify_rejection",
        story: Story::Rejected,
    },
    Case {
        crash_after: "refund",
        story: Story::CancelledAfterConfirmation,
    },
    Case {
        crash_after: "notify_cancellation",
        story: Story::CancelledAfterConfirmation,
    },
];

impl Story {
    fn status(self) -> &'static str {
        match self {
            Self::Confirmed | Self::LookedUp => "confirmed",
            Self::Declined => "failed",
            Self::Rejected => "rejected",
            Self::CancelledAfterConfirmation => "cancelled",
        }
    }

    /// (captures, refunds, net minor units) at the gateway for the booking.
    fn money(self) -> (usize, usize, i64) {
        match self {
            Self::Confirmed | Self::LookedUp => (1, 0, PRICE),
            Self::Declined | Self::Rejected => (0, 0, 0),
            Self::CancelledAfterConfirmation => (1, 1, 0),
        }
    }

    fn mails(self, booking: Uuid) -> BTreeSet<String> {
        let kinds: &[&str] = match self {
            Self::Confirmed | Self::LookedUp => &["confirmation"],
            Self::Declined => &["failure"],
            Self::Rejected => &["rejection"],
            Self::CancelledAfterConfirmation => &["confirmation", "cancellation"],
        };
        kinds
            .iter()
            .map(|kind| format!("<{kind}.{booking}@funeral-manager>"))
            .collect()
    }
}

/// Sets the gateway and the runner up for a path and starts the booking; returns its id once
/// the runner has crashed at the case's step.
async fn run_until_crash(saga: &mut SagaStack, facility: Uuid, day: i64, case: &Case) -> Uuid {
    saga.simulator.reset_control().await.unwrap();
    saga.options.capture_deadline = Duration::from_secs(20);
    let booking = match case.story {
        Story::Confirmed | Story::Declined | Story::LookedUp => {
            match case.story {
                Story::Declined => {
                    saga.simulator.set_mode(Mode::Decline).await.unwrap();
                }
                Story::LookedUp => {
                    saga.options.capture_deadline = Duration::from_secs(1);
                    saga.simulator
                        .set_behaviour(Behaviour::once(Mode::CaptureThenTimeout))
                        .await
                        .unwrap();
                }
                _ => {}
            }
            restart(saga, Some(case.crash_after)).await;
            saga.request_booking(facility, day, 0, PRICE).await.unwrap()
        }
        Story::Rejected => {
            restart(saga, None).await;
            let holder = saga.request_booking(facility, day, 0, PRICE).await.unwrap();
            saga.wait_done(holder, WITHIN).await.unwrap();
            restart(saga, Some(case.crash_after)).await;
            saga.request_booking(facility, day, 0, PRICE).await.unwrap()
        }
        Story::CancelledAfterConfirmation => {
            restart(saga, None).await;
            let booking = saga.request_booking(facility, day, 0, PRICE).await.unwrap();
            saga.wait_done(booking, WITHIN).await.unwrap();
            saga.booking_with_status(booking, "confirmed")
                .await
                .unwrap();
            restart(saga, Some(case.crash_after)).await;
            saga.cancel(booking).await.unwrap();
            booking
        }
    };
    let status = saga.wait_runner_exit(WITHIN).await.unwrap_or_else(|error| {
        panic!(
            "crash point {} was never reached: {error}; logs in {}",
            case.crash_after,
            saga.log_dir().display()
        )
    });
    assert_eq!(
        status.signal(),
        Some(9),
        "killed by SIGKILL at {}",
        case.crash_after
    );
    booking
}

async fn restart(saga: &mut SagaStack, crash_after: Option<&str>) {
    saga.kill_runner().await.unwrap();
    saga.start_runner(crash_after).await.unwrap();
}

#[tokio::test]
async fn a_runner_killed_at_any_step_leaves_every_booking_finished_with_money_and_mail_counted_once()
 {
    let mut saga = SagaStack::spawn(
        Path::new(env!("CARGO_BIN_EXE_saga-runner")),
        SagaOptions::default(),
    )
    .await
    .unwrap();
    let facility = saga.register_facility().await.unwrap();

    for (day, case) in (10..).zip(CASES) {
        let booking = run_until_crash(&mut saga, facility, day, case).await;
        // A new runner (no crash point) takes over from whatever the dead one left.
        saga.simulator.reset_control().await.unwrap();
        saga.start_runner(None).await.unwrap();
        let done = saga.wait_done(booking, WITHIN).await.unwrap();
        let context = format!(
            "crash after {} on {:?}: {done}",
            case.crash_after, case.story
        );

        saga.booking_with_status(booking, case.story.status())
            .await
            .unwrap_or_else(|error| panic!("{context}: {error}"));
        let ledger = saga.simulator.ledger().await.unwrap();
        let captures = ledger.captures_for(booking);
        let refunds = ledger.refunds_for(booking);
        let net = captures
            .iter()
            .map(|c| c.amount.amount_minor())
            .sum::<i64>()
            - refunds.iter().map(|r| r.amount.amount_minor()).sum::<i64>();
        assert_eq!(
            (captures.len(), refunds.len(), net),
            case.story.money(),
            "{context}"
        );

        let mails = saga.mails_for(booking);
        let distinct: BTreeSet<String> = mails.iter().cloned().collect();
        assert_eq!(distinct, case.story.mails(booking), "{context}");
        let resent = mails.len() - distinct.len();
        let crashed_after_a_mail = case.crash_after.starts_with("notify_");
        assert!(
            resent == 0 || (crashed_after_a_mail && resent == 1),
            "{context}: {mails:?}"
        );
        // Nothing of this booking is left for the runner to do.
        assert_eq!(done["done"], true, "{context}");
    }
    let in_flight = saga.sagas("in_flight").await.unwrap();
    assert_eq!(
        in_flight["sagas"].as_array().unwrap().len(),
        0,
        "{in_flight}"
    );
}

/// Found by the soak (docs/reliability.md, finding 7): a capture request went out, the gateway
/// took the money, and the pass that sent it never recorded anything (in the soak PostgreSQL
/// restarted under the pass; here the runner is killed while the gateway holds its answer
/// back). An earlier attempt that could not reach the gateway had started the capture
/// deadline, so when a runner comes back the deadline has passed and nothing on the log says
/// money moved. The saga must look the capture up and confirm, not fail the booking with the
/// money kept: the attempt's write-ahead mark (`capture.attempting`) is what tells it.
#[tokio::test]
async fn a_capture_whose_sender_died_before_recording_it_is_found_after_the_deadline() {
    const DEADLINE: Duration = Duration::from_secs(10);
    let mut saga = SagaStack::spawn(
        Path::new(env!("CARGO_BIN_EXE_saga-runner")),
        SagaOptions {
            capture_deadline: DEADLINE,
            gateway_timeout: Duration::from_mins(1),
            ..SagaOptions::default()
        },
    )
    .await
    .unwrap();
    let facility = saga.register_facility().await.unwrap();
    saga.simulator.stop().await.unwrap();
    let booking = saga.request_booking(facility, 9, 3, PRICE).await.unwrap();

    // The first attempts cannot reach the gateway; the first of them starts the deadline.
    let first_attempt = tokio::time::Instant::now();
    let failed_capture = |saga: &serde_json::Value| {
        saga["history"].as_array().is_some_and(|history| {
            history
                .iter()
                .any(|entry| entry["step"] == "capture" && entry["outcome"] == "failed")
        })
    };
    loop {
        if let Some(view) = saga.saga(booking).await.unwrap()
            && failed_capture(&view)
        {
            break;
        }
        assert!(first_attempt.elapsed() < WITHIN, "no capture was attempted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The gateway comes back; the next attempt reaches it, the money moves, no answer comes.
    saga.simulator.restart().await.unwrap();
    saga.simulator
        .set_behaviour(Behaviour::once(Mode::CaptureThenTimeout))
        .await
        .unwrap();
    loop {
        let ledger = saga.simulator.ledger().await.unwrap();
        if !ledger.captures_for(booking).is_empty() {
            break;
        }
        assert!(
            first_attempt.elapsed() < DEADLINE,
            "no capture reached the gateway before the deadline; logs in {}",
            saga.log_dir().display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    saga.kill_runner().await.unwrap();

    // A runner comes back after the deadline: nothing on the log says money moved.
    tokio::time::sleep_until(first_attempt + DEADLINE + Duration::from_secs(1)).await;
    saga.start_runner(None).await.unwrap();
    let done = saga.wait_done(booking, WITHIN).await.unwrap();
    saga.booking_with_status(booking, "confirmed")
        .await
        .unwrap_or_else(|error| panic!("{error}: {done}"));
    let ledger = saga.simulator.ledger().await.unwrap();
    assert_eq!(ledger.captures_for(booking).len(), 1, "{done}");
    assert!(ledger.refunds_for(booking).is_empty(), "{done}");
    assert_eq!(done["compensated"], false, "{done}");
    assert!(
        performed_steps(&done).contains(&"lookup_capture".to_owned()),
        "{done}"
    );
    assert_eq!(
        saga.mails_for(booking),
        [format!("<confirmation.{booking}@funeral-manager>")]
    );
}
