//! Acting on the facts: claims sagas whose next step is due and performs it, one booking at a
//! time. A pass's transaction claims its saga (`store::claim`: the booking's transaction-scoped
//! advisory lock, taken on the soonest due saga no other pass holds), so replicas take disjoint
//! sagas instead of racing for the same ones, and a crashed worker's claims die with its
//! connections (docs/saga.md, "Sharing the work between runners").
//!
//! One pass over a saga: decide from its facts, perform the step, re-read the facts under the
//! row lock (the consumer may have applied events meanwhile), add what acting taught, decide
//! again and store the new schedule — all in the one transaction that holds the lock. A crash
//! anywhere loses only the record of the step, never the step's idempotency, so the step is
//! simply performed again.
//!
//! Scheduling: a failed step is retried after an exponential backoff with jitter; a performed
//! step whose effect arrives as an event (every command) waits for it, up to `await_event`, then
//! is performed again (a no-op if it had worked); anything else is decided again at once.

use std::{collections::HashSet, time::Duration};

use chrono::{DateTime, TimeDelta, Utc};
use payment_gateway::Backoff;
use platform::shutdown::CancellationToken;
use sqlx::{PgPool, Postgres, Transaction, postgres::PgListener};
use tokio::task::JoinSet;
use tracing::Instrument;
use uuid::Uuid;

use crate::{
    actions::{Effects, Failure, StepOutcome},
    saga::{Deadlines, Decision, Learned, Saga, Stage, Step},
    store::{self, HistoryEntry, Schedule},
};

/// How the worker schedules.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Sagas acted on at once by this replica.
    pub concurrency: usize,
    /// How long a performed command's event is waited for before the command is sent again.
    pub await_event: Duration,
    /// How often due sagas are looked for when nothing wakes the worker.
    pub poll_interval: Duration,
    pub backoff: Backoff,
    /// See `SagaSettings::crash_after`.
    pub crash_after: Option<String>,
    pub deadlines: Deadlines,
    /// This runner's name in the sagas' history (`FM_SAGA__INSTANCE`).
    pub instance: String,
}

/// Acts on due sagas until shut down; finishes the steps in hand first.
#[derive(Debug, Clone)]
pub struct Worker {
    pub pool: PgPool,
    pub effects: Effects,
    pub config: WorkerConfig,
}

/// Far enough ahead to mean "not until an event wakes it".
fn idle_until(now: DateTime<Utc>) -> DateTime<Utc> {
    now + TimeDelta::days(3650)
}

impl Worker {
    pub async fn run(self, shutdown: CancellationToken) {
        let mut listener = match PgListener::connect_with(&self.pool).await {
            Ok(mut listener) => match listener.listen(store::WAKE_CHANNEL).await {
                Ok(()) => Some(listener),
                Err(error) => {
                    tracing::warn!(%error, "cannot listen for new facts; polling only");
                    None
                }
            },
            Err(error) => {
                tracing::warn!(%error, "cannot listen for new facts; polling only");
                None
            }
        };
        let capacity = self.config.concurrency.max(1);
        let mut in_flight: HashSet<Uuid> = HashSet::new();
        let mut tasks: JoinSet<Uuid> = JoinSet::new();
        while !shutdown.is_cancelled() {
            // Claim while there is room and something is claimable; each claim is the pass's
            // own transaction, handed to the task that performs it.
            while in_flight.len() < capacity && !shutdown.is_cancelled() {
                match self.claim(&in_flight, capacity).await {
                    Ok(Some((booking_id, tx))) => {
                        in_flight.insert(booking_id);
                        let worker = self.clone();
                        tasks.spawn(async move {
                            worker.pass(tx, booking_id).await;
                            booking_id
                        });
                    }
                    Ok(None) => break,
                    Err(error) => {
                        tracing::warn!(%error, "cannot claim due sagas");
                        break;
                    }
                }
            }
            let wake = async {
                match listener.as_mut() {
                    Some(listener) => {
                        if let Err(error) = listener.recv().await {
                            tracing::debug!(%error, "listener interrupted; it reconnects");
                            tokio::time::sleep(self.config.poll_interval).await;
                        }
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => {}
                Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                    if let Ok(booking_id) = done {
                        in_flight.remove(&booking_id);
                    }
                    while let Some(done) = tasks.try_join_next() {
                        if let Ok(booking_id) = done {
                            in_flight.remove(&booking_id);
                        }
                    }
                }
                () = wake => {}
                () = tokio::time::sleep(self.config.poll_interval) => {}
            }
            // A task that panicked leaves its id behind: forget ids of finished tasks.
            if tasks.is_empty() {
                in_flight.clear();
            }
        }
        while tasks.join_next().await.is_some() {}
        tracing::info!("saga worker stopped");
    }

    /// Begins a pass: a transaction holding the claim on the soonest due saga that neither this
    /// runner (`in_hand`) nor another pass holds, or `None` when there is none.
    async fn claim(
        &self,
        in_hand: &HashSet<Uuid>,
        capacity: usize,
    ) -> anyhow::Result<Option<(Uuid, Transaction<'static, Postgres>)>> {
        let mut tx = self.pool.begin().await?;
        let skip: Vec<Uuid> = in_hand.iter().copied().collect();
        // Far enough down the queue to pass the sagas other replicas hold (each holds at most
        // its own concurrency) and still find one.
        let look_ahead = i64::try_from(capacity.saturating_mul(8)).unwrap_or(i64::MAX);
        if let Some(booking_id) = store::claim(&mut tx, &skip, look_ahead).await? {
            Ok(Some((booking_id, tx)))
        } else {
            tx.rollback().await?;
            Ok(None)
        }
    }

    /// One pass over one claimed saga; errors are logged and the saga is tried again when due.
    async fn pass(&self, tx: Transaction<'static, Postgres>, booking_id: Uuid) {
        if let Err(error) = self.try_pass(tx, booking_id).await {
            metrics::counter!("saga_runner_errors_total", "part" => "worker").increment(1);
            tracing::warn!(%booking_id, %error, "saga pass failed; it will be retried");
        }
    }

    #[allow(clippy::too_many_lines)] // One pass, in the one transaction that holds its claim.
    async fn try_pass(
        &self,
        mut tx: Transaction<'static, Postgres>,
        booking_id: Uuid,
    ) -> anyhow::Result<()> {
        // Read again under the claim: the claim's snapshot predates its lock, so another pass
        // may have finished this saga in between (counted: `saga_claims_total{outcome}`).
        let Some(row) = store::scheduled(&mut tx, booking_id).await? else {
            metrics::counter!("saga_claims_total", "outcome" => "stale").increment(1);
            return Ok(());
        };
        let now = Utc::now();
        if row.done || row.next_attempt_at > now {
            metrics::counter!("saga_claims_total", "outcome" => "stale").increment(1);
            return Ok(());
        }
        metrics::counter!("saga_claims_total", "outcome" => "due").increment(1);
        let mut saga = row.facts.0;
        // Passes on one booking take turns (the claim): a capture mark found now was left
        // by a pass that never recorded its outcome.
        let lost_capture_attempt = saga.capture.attempting;
        saga.arm_deadlines(now, &self.config.deadlines);
        let decision = saga.decide(now);
        let Decision::Do(step) = &decision else {
            // Waiting for an event, parked, or done: nothing is due until the facts change. The
            // facts were read without the row lock; if the consumer changed them since (an
            // operator's resolve read right after the park), writing these back would lose its
            // change and idle the saga: leave the newer facts, whose change made it due again.
            let newer = store::facts_for_update(&mut tx, booking_id)
                .await?
                .is_none_or(|(_, version)| version != row.facts_version);
            if newer {
                return Ok(());
            }
            let schedule = Schedule {
                saga: &saga,
                decision: &decision,
                attempts: 0,
                next_attempt_at: idle_until(now),
                last_error: None,
                compensated: false,
                performed: None,
            };
            store::save_schedule(&mut tx, &schedule).await?;
            tx.commit().await?;
            return Ok(());
        };

        if *step == Step::Capture {
            // Committed before the request goes out, so that losing this pass's record (a
            // crash, a broken connection) can never make the saga forget it may have taken money,
            // nor when it may have done so (the settle window runs from then).
            store::mark_capture_attempt(&self.pool, booking_id, now).await?;
        }
        let began = now;
        let outcome = self.perform(&saga, step, now).await;

        // The consumer may have applied events while the step ran: act on the newest facts.
        let (mut current, version) = store::facts_for_update(&mut tx, booking_id)
            .await?
            .ok_or_else(|| anyhow::anyhow!("saga {booking_id} vanished"))?;
        let facts_moved = version != row.facts_version;
        // The clock of the step just tried started when this pass began, not now.
        current.arm_deadlines(now, &self.config.deadlines);
        let now = Utc::now();
        current.performed(step, lost_capture_attempt, began);
        let (learned, error) = match &outcome {
            StepOutcome::Performed { learned } => (*learned, None),
            StepOutcome::Failed { error, learned, .. } => (*learned, Some(error.as_str())),
        };
        if let Some(learned) = learned {
            current.learn_at(learned, now, &self.config.deadlines);
        }
        if let StepOutcome::Failed {
            failure: Failure::Permanent,
            error,
            ..
        } = &outcome
        {
            metrics::counter!("saga_parks_total", "step" => step.name()).increment(1);
            tracing::error!(%booking_id, step = step.name(), %error, "saga step failed for good; parking the saga for an operator");
            current.park_for_good(step, error);
        }
        let next = current.decide(now);
        let (attempts, next_attempt_at) = next_attempt(
            &Tried {
                step,
                outcome: &outcome,
                next: &next,
                facts_moved,
                attempts_before: row.attempts,
                settles_at: current.capture.settles_at(self.config.deadlines.settle),
            },
            &self.config,
            now,
        );
        let performed = matches!(outcome, StepOutcome::Performed { .. });
        if performed && let Some(kind) = step.compensation() {
            metrics::counter!("saga_compensations_total", "kind" => kind).increment(1);
        }
        if let Some(error) = error {
            tracing::warn!(%booking_id, step = step.name(), attempts, %error, "saga step failed; retrying after a backoff");
        } else {
            tracing::info!(%booking_id, step = step.name(), next = Stage::of(&next).as_str(), "saga step performed");
        }
        let schedule = Schedule {
            saga: &current,
            decision: &next,
            attempts,
            next_attempt_at,
            last_error: error,
            compensated: performed && step.compensation().is_some(),
            performed: Some(HistoryEntry {
                step: step.name(),
                outcome: outcome.label(),
                at: now,
                began,
                runner: &self.config.instance,
                error,
            }),
        };
        store::save_schedule(&mut tx, &schedule).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Performs one step inside a span that continues the trace of the event that made it due
    /// (so one booking reads as one trace across the services), and counts it.
    async fn perform(&self, saga: &Saga, step: &Step, now: DateTime<Utc>) -> StepOutcome {
        let span = tracing::info_span!(
            "saga.step",
            booking_id = %saga.booking_id,
            step = step.name(),
            trace_id = tracing::field::Empty
        );
        platform::trace::continue_trace(
            &span,
            saga.traceparent
                .as_deref()
                .and_then(|traceparent| platform::trace::parse_traceparent(traceparent, None)),
        );
        let started = std::time::Instant::now();
        let outcome = self.effects.perform(saga, step, now).instrument(span).await;
        metrics::histogram!("saga_step_duration_seconds", "step" => step.name())
            .record(started.elapsed().as_secs_f64());
        metrics::counter!("saga_steps_total", "step" => step.name(), "outcome" => outcome.label())
            .increment(1);
        if self.config.crash_after.as_deref() == Some(step.name()) {
            crash(step.name());
        }
        outcome
    }
}

/// SIGKILLs this process (fault injection; see `SagaSettings::crash_after`).
fn crash(step: &str) -> ! {
    tracing::warn!(
        step,
        "crash point reached: killing this process with SIGKILL"
    );
    let pid = std::process::id().to_string();
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &pid])
        .status();
    std::process::abort()
}

/// A step just tried, as far as scheduling the saga's next pass is concerned.
struct Tried<'a> {
    step: &'a Step,
    outcome: &'a StepOutcome,
    /// What the saga decided after it.
    next: &'a Decision,
    /// Whether the consumer changed the facts while the step ran.
    facts_moved: bool,
    /// Failed attempts of this step in a row before this one.
    attempts_before: i32,
    /// When a lookup that finds nothing will be believed.
    settles_at: Option<DateTime<Utc>>,
}

/// When the saga is due again after `tried`, and its failed attempts in a row.
fn next_attempt(
    tried: &Tried<'_>,
    config: &WorkerConfig,
    now: DateTime<Utc>,
) -> (i32, DateTime<Utc>) {
    let same_step = matches!(tried.next, Decision::Do(next_step) if next_step == tried.step);
    match (tried.outcome, tried.next) {
        (_, Decision::Wait | Decision::Done | Decision::Parked) => (0, idle_until(now)),
        _ if tried.facts_moved && !same_step => (0, now),
        // A lookup that found nothing while the last request may still be in flight: look
        // again now and then, and once the window has passed (when nothing is believed).
        (
            StepOutcome::Performed {
                learned: Some(Learned::NothingFound),
            },
            _,
        ) if same_step && *tried.step == Step::LookupCapture => {
            let again = now + to_delta(config.backoff.max);
            let settles = tried.settles_at.unwrap_or(again);
            (0, again.min(settles.max(now)))
        }
        // Its event is on its way (a lookup that found the capture has recorded it too): wait
        // for it before doing the step again. Without this wait a recorded capture whose event
        // did not arrive was looked up again at once, in a loop, for ever.
        (StepOutcome::Performed { .. }, _) if same_step => (0, now + to_delta(config.await_event)),
        (StepOutcome::Performed { .. }, _) => (0, now),
        (StepOutcome::Failed { .. }, _) => {
            let attempts = if same_step {
                tried.attempts_before + 1
            } else {
                1
            };
            let delay = config.backoff.delay(
                u32::try_from(attempts - 1).unwrap_or(0),
                rand::random::<f64>(),
            );
            (attempts, now + to_delta(delay))
        }
    }
}

fn to_delta(duration: Duration) -> TimeDelta {
    TimeDelta::from_std(duration).unwrap_or(TimeDelta::MAX)
}

/// Publishes `sagas_in_flight{stage}`, `saga_stuck` and `saga_parked` every `interval`.
pub async fn publish_gauges(pool: PgPool, interval: Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(interval);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match store::counts(&pool).await {
            Ok(counts) => {
                for stage in Stage::ALL {
                    let count = counts.by_stage.get(stage.as_str()).copied().unwrap_or(0);
                    #[allow(clippy::cast_precision_loss)]
                    metrics::gauge!("sagas_in_flight", "stage" => stage.as_str()).set(count as f64);
                }
                #[allow(clippy::cast_precision_loss)]
                metrics::gauge!("saga_stuck").set(counts.stuck as f64);
                let parked = counts
                    .by_stage
                    .get(Stage::Parked.as_str())
                    .copied()
                    .unwrap_or(0);
                #[allow(clippy::cast_precision_loss)]
                metrics::gauge!("saga_parked").set(parked as f64);
            }
            Err(error) => tracing::debug!(%error, "cannot count sagas"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chrono::{TimeDelta, Utc};

    use super::{Tried, WorkerConfig, next_attempt, to_delta};
    use crate::{
        actions::StepOutcome,
        saga::{Deadlines, Decision, Learned, Step},
    };

    fn config() -> WorkerConfig {
        WorkerConfig {
            concurrency: 1,
            await_event: Duration::from_secs(3),
            poll_interval: Duration::from_secs(1),
            backoff: payment_gateway::Backoff::default(),
            crash_after: None,
            deadlines: Deadlines::default(),
            instance: "test".to_owned(),
        }
    }

    fn lookup_again_after(learned: Learned, settles_in: TimeDelta) -> TimeDelta {
        let now = Utc::now();
        let config = config();
        let outcome = StepOutcome::Performed {
            learned: Some(learned),
        };
        let (attempts, due) = next_attempt(
            &Tried {
                step: &Step::LookupCapture,
                outcome: &outcome,
                next: &Decision::Do(Step::LookupCapture),
                facts_moved: false,
                attempts_before: 0,
                settles_at: Some(now + settles_in),
            },
            &config,
            now,
        );
        assert_eq!(attempts, 0);
        due - now
    }

    #[test]
    fn a_lookup_that_recorded_the_capture_waits_for_its_event_even_past_the_settle_window() {
        // The soak's hot loop: the capture was found and recorded, its event had not arrived,
        // and the lookup ran again at once, ten times a second, for minutes.
        let wait = lookup_again_after(Learned::CaptureRecorded, TimeDelta::seconds(-60));
        assert_eq!(wait, to_delta(config().await_event));
    }

    #[test]
    fn a_lookup_that_found_nothing_looks_again_when_the_window_settles() {
        assert_eq!(
            lookup_again_after(Learned::NothingFound, TimeDelta::seconds(-1)),
            TimeDelta::zero(),
            "past the window: at once, when nothing is believed"
        );
        assert_eq!(
            lookup_again_after(Learned::NothingFound, TimeDelta::seconds(2)),
            TimeDelta::seconds(2),
            "the window ends before the backoff's longest delay"
        );
        assert_eq!(
            lookup_again_after(Learned::NothingFound, TimeDelta::minutes(5)),
            to_delta(config().backoff.max),
            "now and then while the window is long"
        );
    }
}
