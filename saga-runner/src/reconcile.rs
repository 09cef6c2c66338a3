//! The payment reconciliation: on a schedule, the gateway's ledger (every capture it made in the
//! horizon, with what was refunded of each) is compared with what the log says each booking
//! kept, and any capture that no booking kept is reported — a metric, a log line, a stored
//! report that `GET /reconciliation` and `fmctl payments reconcile` show (docs/payments.md,
//! "Reconciliation").
//!
//! It is the net under the settle window: a provider that completes a capture after even the
//! settle window has passed (breaking its own promise) leaves money for a booking the saga
//! failed. The report names it; and where the capture is under the saga's own key and its
//! booking is not confirmed, the runner also makes the saga look the capture up again, which
//! records it and refunds it (the saga's ordinary compensation), so the family gets its money
//! back without anyone typing a command. A saga an operator resolved by hand is listed as
//! *explained*, with the operator's reason, never as a discrepancy.
//!
//! [`compare`] is pure; [`Reconciler`] reads, compares, heals and stores. One replica runs the
//! schedule at a time (a transaction-scoped advisory lock); `POST /reconciliation` runs one now
//! on whichever replica it reaches.

use std::{collections::HashMap, sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use domain::{booking::BookingStatus, values::BookingId};
use payment_gateway::{LedgerCapture, PaymentGateway};
use platform::shutdown::CancellationToken;
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::{
    actions::capture_key,
    saga::{PaymentFact, Saga},
    store,
};

/// One capture the comparison has something to say about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Finding {
    /// `unrecorded_capture` (the log never learned of it), `kept_by_no_booking` (recorded, but
    /// its booking is not confirmed with it and it was not refunded), `unknown_booking`,
    /// `refunded_outside_the_log` (a confirmed booking's capture given back at the provider),
    /// or `resolved_by_hand` (explained: an operator settled the booking).
    pub kind: String,
    pub booking_id: Uuid,
    pub capture_reference: String,
    pub idempotency_key: String,
    pub amount_minor: i64,
    pub currency: String,
    /// Captured minus refunded at the provider.
    pub kept_minor: i64,
    /// The booking's status as the saga knows it, if it knows the booking.
    pub booking_status: Option<String>,
    pub detail: String,
    /// What the runner does about it, if anything.
    pub action: Option<String>,
}

/// What one run found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Report {
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Captures the provider listed in the horizon.
    pub captures_checked: usize,
    /// Of them, captures whose saga is still working (not compared yet).
    pub in_flight: usize,
    /// Captures that no booking kept as the log says it should: each wants a look.
    pub discrepancies: Vec<Finding>,
    /// Differences an operator explained (resolved by hand).
    pub explained: Vec<Finding>,
}

/// What the comparison needs of one saga.
#[derive(Debug, Clone)]
pub struct Known {
    pub saga: Saga,
    pub done: bool,
}

/// Compares the provider's captures with the sagas' facts (pure). A capture is kept correctly
/// when the provider kept its whole amount and its booking is confirmed with exactly this
/// capture, or the provider kept nothing of it; a saga still working is not judged yet.
pub fn compare<S: std::hash::BuildHasher>(
    captures: &[LedgerCapture],
    known: &HashMap<Uuid, Known, S>,
) -> Report {
    let mut report = Report {
        captures_checked: captures.len(),
        ..Report::default()
    };
    for capture in captures {
        let booking = *capture.booking_id.as_uuid();
        let kept = capture.amount.amount_minor() - capture.refunded_minor;
        let finding = |kind: &str, status: Option<String>, detail: String| Finding {
            kind: kind.to_owned(),
            booking_id: booking,
            capture_reference: capture.reference.clone(),
            idempotency_key: capture.idempotency_key.clone(),
            amount_minor: capture.amount.amount_minor(),
            currency: capture.amount.currency().code().to_owned(),
            kept_minor: kept,
            booking_status: status,
            detail,
            action: None,
        };
        let Some(Known { saga, done }) = known.get(&booking) else {
            report.discrepancies.push(finding(
                "unknown_booking",
                None,
                "the provider captured for a booking the saga never read".to_owned(),
            ));
            continue;
        };
        if !done {
            report.in_flight += 1;
            continue;
        }
        let status = saga.status.map(|status| status.as_str().to_owned());
        let recorded_here = matches!(&saga.payment, PaymentFact::Captured { reference, .. } if *reference == capture.reference);
        let expected = if saga.status == Some(BookingStatus::Confirmed) && recorded_here {
            capture.amount.amount_minor()
        } else {
            0
        };
        if kept == expected {
            continue;
        }
        if let Some(resolved) = &saga.control.resolved {
            let by = resolved.by.as_deref().unwrap_or("an operator");
            report.explained.push(finding(
                "resolved_by_hand",
                status,
                format!("resolved by hand by {by}: {}", resolved.reason),
            ));
            continue;
        }
        let mut found = if kept < expected {
            finding(
                "refunded_outside_the_log",
                status,
                format!(
                    "the booking is confirmed with this capture, but the provider kept only {kept} of {expected}"
                ),
            )
        } else if saga.payment == PaymentFact::None {
            finding(
                "unrecorded_capture",
                status,
                "the provider captured, and the log never recorded it: no booking kept this money"
                    .to_owned(),
            )
        } else {
            finding(
                "kept_by_no_booking",
                status,
                "the provider kept this capture, and no confirmed booking holds it".to_owned(),
            )
        };
        if found.kind == "unrecorded_capture"
            && saga.status != Some(BookingStatus::Confirmed)
            && capture.idempotency_key == capture_key(BookingId::from_uuid(booking))
        {
            found.action =
                Some("the saga looks the capture up again, records it and refunds it".to_owned());
        }
        report.discrepancies.push(found);
    }
    report
}

/// Runs the comparison on a schedule, and on demand.
#[derive(Clone)]
pub struct Reconciler {
    pub pool: PgPool,
    pub gateway: Arc<dyn PaymentGateway>,
    /// How far back captures are compared.
    pub horizon: Duration,
}

impl std::fmt::Debug for Reconciler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reconciler")
            .field("horizon", &self.horizon)
            .finish_non_exhaustive()
    }
}

impl Reconciler {
    /// Every `interval` (the first run after one interval), on the replica that gets the
    /// reconciliation lock, until shut down.
    pub async fn run(self, interval: Duration, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            match self.scheduled_run().await {
                Ok(Some(report)) => {
                    if report.discrepancies.is_empty() {
                        tracing::info!(
                            checked = report.captures_checked,
                            "payments reconciled: every capture is kept as the log says"
                        );
                    }
                }
                Ok(None) => {}
                Err(error) => {
                    metrics::counter!("payment_reconciliation_runs_total", "result" => "failed")
                        .increment(1);
                    tracing::warn!(%error, "payment reconciliation failed; it runs again at the next interval");
                }
            }
        }
    }

    /// One scheduled run, unless another replica is running one.
    async fn scheduled_run(&self) -> anyhow::Result<Option<Report>> {
        let mut tx = self.pool.begin().await?;
        let mine: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock(84, 1)")
            .fetch_one(&mut *tx)
            .await?;
        if !mine {
            return Ok(None);
        }
        let report = self.reconcile(&mut tx).await?;
        tx.commit().await?;
        Ok(Some(report))
    }

    /// One run now (`POST /reconciliation`).
    pub async fn run_now(&self) -> anyhow::Result<Report> {
        let mut tx = self.pool.begin().await?;
        let report = self.reconcile(&mut tx).await?;
        tx.commit().await?;
        Ok(report)
    }

    /// Reads the provider's captures and the sagas, compares, heals what the saga can heal,
    /// stores the report and publishes the metrics.
    async fn reconcile(&self, tx: &mut PgConnection) -> anyhow::Result<Report> {
        let started_at = Utc::now();
        let since = started_at
            - chrono::TimeDelta::from_std(self.horizon).unwrap_or(chrono::TimeDelta::days(30));
        let captures = self.gateway.captures(since).await?;
        let bookings: Vec<Uuid> = captures
            .iter()
            .map(|capture| *capture.booking_id.as_uuid())
            .collect();
        let rows: Vec<(Uuid, sqlx::types::Json<Saga>, bool)> =
            sqlx::query_as("SELECT booking_id, facts, done FROM sagas WHERE booking_id = ANY($1)")
                .bind(&bookings)
                .fetch_all(&mut *tx)
                .await?;
        let known: HashMap<Uuid, Known> = rows
            .into_iter()
            .map(|(id, facts, done)| {
                (
                    id,
                    Known {
                        saga: facts.0,
                        done,
                    },
                )
            })
            .collect();
        let mut report = compare(&captures, &known);
        report.started_at = Some(started_at);
        report.finished_at = Some(Utc::now());
        for finding in &report.discrepancies {
            tracing::error!(
                booking_id = %finding.booking_id,
                capture_reference = %finding.capture_reference,
                kind = %finding.kind,
                kept_minor = finding.kept_minor,
                currency = %finding.currency,
                "payment reconciliation: {}", finding.detail
            );
            if finding.action.is_some() {
                store::doubt_capture_again(&mut *tx, finding.booking_id).await?;
            }
        }
        save_report(&mut *tx, &report).await?;
        #[allow(clippy::cast_precision_loss)]
        metrics::gauge!("payment_reconciliation_discrepancies")
            .set(report.discrepancies.len() as f64);
        #[allow(clippy::cast_precision_loss)]
        metrics::gauge!("payment_reconciliation_last_run_timestamp_seconds")
            .set(Utc::now().timestamp() as f64);
        metrics::counter!("payment_reconciliation_runs_total", "result" => "ok").increment(1);
        Ok(report)
    }
}

/// Stores a run's report (table `reconciliations`), keeping the last hundred.
pub async fn save_report(conn: &mut PgConnection, report: &Report) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO reconciliations (started_at, discrepancies, report) VALUES ($1, $2, $3)",
    )
    .bind(report.started_at.unwrap_or_else(Utc::now))
    .bind(i32::try_from(report.discrepancies.len()).unwrap_or(i32::MAX))
    .bind(sqlx::types::Json(report))
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "DELETE FROM reconciliations WHERE id NOT IN \
         (SELECT id FROM reconciliations ORDER BY finished_at DESC LIMIT 100)",
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// The last reconciliation's report, if one ran.
pub async fn last_report(pool: &PgPool) -> anyhow::Result<Option<Report>> {
    let row: Option<sqlx::types::Json<Report>> = sqlx::query_scalar(
        "SELECT report FROM reconciliations ORDER BY finished_at DESC, id DESC LIMIT 1",
    )
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|report| report.0))
}

#[cfg(test)]
mod tests {
    use domain::{
        booking::BookingEvent,
        fixtures,
        saga::SagaEvent,
        values::{Currency, Money},
    };

    use super::*;
    use crate::saga::Observed;

    fn observed<E>(event: E) -> Observed<E> {
        Observed {
            event,
            event_id: Uuid::new_v4(),
            correlation_id: Uuid::from_u128(7),
            occurred_at: fixtures::now(),
            traceparent: None,
            actor: "ops-1 (ops)".to_owned(),
        }
    }

    fn capture(booking: BookingId, reference: &str, refunded_minor: i64) -> LedgerCapture {
        LedgerCapture {
            reference: reference.to_owned(),
            idempotency_key: capture_key(booking),
            booking_id: booking,
            amount: Money::new(125_000, Currency::GBP).unwrap(),
            refunded_minor,
            created_at: fixtures::now(),
        }
    }

    fn saga(status: BookingEvent, captured: Option<&str>) -> Saga {
        let mut saga = Saga::new(fixtures::booking_id());
        saga.on_booking(&observed(fixtures::booking_requested()));
        saga.on_booking(&observed(status));
        if let Some(reference) = captured {
            saga.on_payment(&observed(domain::payment::PaymentEvent::PaymentCaptured {
                payment_id: fixtures::payment_id(),
                booking_id: fixtures::booking_id(),
                amount: fixtures::price(),
                gateway_reference: reference.to_owned(),
            }));
        }
        saga
    }

    fn known(saga: Saga, done: bool) -> HashMap<Uuid, Known> {
        [(*fixtures::booking_id().as_uuid(), Known { saga, done })].into()
    }

    fn failed() -> BookingEvent {
        BookingEvent::BookingFailed {
            reason: "the payment could not be taken in time".to_owned(),
        }
    }

    #[test]
    fn a_confirmed_booking_keeping_its_capture_and_a_refunded_one_are_in_order() {
        let booking = fixtures::booking_id();
        let confirmed = known(saga(BookingEvent::BookingConfirmed {}, Some("cap_1")), true);
        let report = compare(&[capture(booking, "cap_1", 0)], &confirmed);
        assert!(report.discrepancies.is_empty(), "{report:?}");
        let cancelled = known(
            saga(
                BookingEvent::BookingCancelled {
                    reason: None,
                    was_confirmed: true,
                },
                Some("cap_1"),
            ),
            true,
        );
        let report = compare(&[capture(booking, "cap_1", 125_000)], &cancelled);
        assert!(report.discrepancies.is_empty(), "{report:?}");
        assert_eq!(report.captures_checked, 1);
    }

    #[test]
    fn a_capture_completed_after_the_booking_failed_is_reported_and_healed() {
        let booking = fixtures::booking_id();
        let report = compare(
            &[capture(booking, "cap_late", 0)],
            &known(saga(failed(), None), true),
        );
        assert_eq!(report.discrepancies.len(), 1, "{report:?}");
        let finding = &report.discrepancies[0];
        assert_eq!(finding.kind, "unrecorded_capture");
        assert_eq!(finding.kept_minor, 125_000);
        assert_eq!(finding.booking_status.as_deref(), Some("failed"));
        assert!(finding.action.is_some(), "the saga refunds it");
    }

    #[test]
    fn a_saga_still_working_is_not_judged_and_an_unknown_booking_is_reported() {
        let booking = fixtures::booking_id();
        let report = compare(
            &[capture(booking, "cap_1", 0)],
            &known(saga(failed(), None), false),
        );
        assert_eq!(report.in_flight, 1);
        assert!(report.discrepancies.is_empty());
        let report = compare(&[capture(booking, "cap_1", 0)], &HashMap::new());
        assert_eq!(report.discrepancies[0].kind, "unknown_booking");
        assert!(report.discrepancies[0].action.is_none());
    }

    #[test]
    fn a_second_capture_of_a_confirmed_booking_is_kept_by_no_booking() {
        let booking = fixtures::booking_id();
        let confirmed = known(saga(BookingEvent::BookingConfirmed {}, Some("cap_1")), true);
        let report = compare(
            &[capture(booking, "cap_1", 0), capture(booking, "cap_2", 0)],
            &confirmed,
        );
        assert_eq!(report.discrepancies.len(), 1, "{report:?}");
        assert_eq!(report.discrepancies[0].capture_reference, "cap_2");
        assert_eq!(report.discrepancies[0].kind, "kept_by_no_booking");
    }

    #[test]
    fn a_booking_resolved_by_hand_is_explained_not_a_discrepancy() {
        let booking = fixtures::booking_id();
        let mut resolved = saga(failed(), Some("cap_1"));
        resolved.on_saga(
            &observed(SagaEvent::SagaResolvedByHand {
                booking_id: booking,
                reason: "refunded outside the system".to_owned(),
            }),
            1,
        );
        let report = compare(&[capture(booking, "cap_1", 0)], &known(resolved, true));
        assert!(report.discrepancies.is_empty(), "{report:?}");
        assert_eq!(report.explained.len(), 1);
        assert!(
            report.explained[0]
                .detail
                .contains("refunded outside the system")
        );
        assert!(report.explained[0].detail.contains("ops-1 (ops)"));
    }
}
