//! The privacy job (docs/privacy.md, "Retention" and "Orphan keys"): on a schedule, one replica
//! at a time (a transaction-scoped advisory lock, as the reconciliation takes its own):
//!
//! - **Retention**: with `FM_PRIVACY__ERASE_AFTER` set, every booking whose service ended that
//!   long ago and whose personal data is not erased yet is erased through the command-service's
//!   own `POST /bookings/{id}/erase` (the data key destroyed, then `PersonalDataErased` with a
//!   reason that says retention), exactly as a director's erasure. The saga's facts say which
//!   bookings are due: the slot's end, and whether `PersonalDataErased` has been read. Erasing
//!   twice changes nothing (the key store and the domain are both idempotent), so a replica that
//!   runs while another's erasures are still on their way does no harm.
//! - **Orphan keys**: a data key made for a request the domain then refused (its
//!   `BookingRequested` never reached the log) is removed once it is older than
//!   `FM_PRIVACY__ORPHAN_KEYS_AFTER` (a day by default). A booking reached the log when the
//!   saga has a row for it, or its consumer keeps a record of it parked; the age leaves the
//!   saga's consumer that long to read it.

use std::{sync::Arc, time::Duration};

use platform::shutdown::CancellationToken;
use sqlx::PgPool;
use uuid::Uuid;

use crate::actions::CommandClient;

/// How many bookings one pass looks at, of each kind.
const PASS_LIMIT: i64 = 500;

/// The job and what it needs.
#[derive(Debug, Clone)]
pub struct PrivacyJob {
    pub pool: PgPool,
    pub keys: Arc<privacy::KeyStore>,
    pub commands: CommandClient,
    /// `FM_PRIVACY__ERASE_AFTER`; `None`: no retention rule.
    pub erase_after: Option<Duration>,
    /// `FM_PRIVACY__ORPHAN_KEYS_AFTER`.
    pub orphan_keys_after: Duration,
}

/// What one pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    /// Bookings erased by the retention rule.
    pub erased: u64,
    /// Erasures that failed (tried again at the next pass).
    pub failed: u64,
    /// Orphan data keys removed.
    pub orphan_keys: u64,
}

impl PrivacyJob {
    /// Runs a pass every `interval` until shutdown.
    pub async fn run(self, interval: Duration, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            match self.scheduled_pass().await {
                Ok(Some(swept)) if swept != Swept::default() => tracing::info!(
                    erased = swept.erased,
                    failed = swept.failed,
                    orphan_keys = swept.orphan_keys,
                    "privacy job: personal data past its retention erased, orphan keys removed"
                ),
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(%error, "the privacy job failed; it runs again at the next interval");
                }
            }
        }
    }

    /// One pass, unless another replica is running one (`None`).
    pub async fn scheduled_pass(&self) -> anyhow::Result<Option<Swept>> {
        let mut tx = self.pool.begin().await?;
        let mine: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock(84, 2)")
            .fetch_one(&mut *tx)
            .await?;
        if !mine {
            return Ok(None);
        }
        let swept = self.pass().await?;
        tx.commit().await?;
        Ok(Some(swept))
    }

    async fn pass(&self) -> anyhow::Result<Swept> {
        let mut swept = Swept::default();
        if let Some(erase_after) = self.erase_after {
            for booking in due_for_erasure(&self.pool, erase_after).await? {
                let reason = format!(
                    "retention: {} after the service ended (FM_PRIVACY__ERASE_AFTER)",
                    describe(erase_after)
                );
                match self.commands.erase(booking, &reason).await {
                    Ok(()) => {
                        metrics::counter!("privacy_retention_erasures_total").increment(1);
                        swept.erased += 1;
                    }
                    Err(error) => {
                        tracing::warn!(booking_id = %booking, %error, "retention: the erasure failed; tried again at the next pass");
                        swept.failed += 1;
                    }
                }
            }
        }
        let candidates = self
            .keys
            .live_keys_older_than(self.orphan_keys_after, PASS_LIMIT)
            .await?;
        if !candidates.is_empty() {
            // Known: a saga, or a record the consumer keeps parked (a request it cannot take
            // yet is on the log all the same).
            let known: Vec<Uuid> = sqlx::query_scalar(
                "SELECT booking_id FROM sagas WHERE booking_id = ANY($1) \
                 UNION SELECT aggregate_id FROM parked_records WHERE aggregate_id = ANY($1)",
            )
            .bind(&candidates)
            .fetch_all(&self.pool)
            .await?;
            for booking in candidates.into_iter().filter(|b| !known.contains(b)) {
                if self
                    .keys
                    .remove_orphan(booking, self.orphan_keys_after)
                    .await?
                {
                    tracing::info!(booking_id = %booking, "orphan data key removed: its request never reached the log");
                    metrics::counter!("privacy_orphan_keys_removed_total").increment(1);
                    swept.orphan_keys += 1;
                }
            }
        }
        Ok(swept)
    }
}

/// Bookings whose slot ended more than `erase_after` ago and whose erasure the saga has not
/// read, oldest service first.
async fn due_for_erasure(pool: &PgPool, erase_after: Duration) -> sqlx::Result<Vec<Uuid>> {
    sqlx::query_scalar(
        "SELECT booking_id FROM sagas \
         WHERE (facts->>'personal_data_erased') IS DISTINCT FROM 'true' \
           AND (facts->'request'->'slot'->>'end')::timestamptz < now() - make_interval(secs => $1) \
         ORDER BY (facts->'request'->'slot'->>'end')::timestamptz LIMIT $2",
    )
    .bind(erase_after.as_secs_f64())
    .bind(PASS_LIMIT)
    .fetch_all(pool)
    .await
}

/// `30d`, `12h`, `15m`, `10s` or `500ms`: the largest unit that divides the duration.
fn describe(duration: Duration) -> String {
    let millis = duration.as_millis();
    for (unit, per) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if millis > 0 && millis.is_multiple_of(per) {
            return format!("{}{unit}", millis / per);
        }
    }
    format!("{millis}ms")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::describe;

    #[test]
    fn a_retention_period_is_written_as_it_is_set() {
        assert_eq!(describe(Duration::from_hours(720)), "30d");
        assert_eq!(describe(Duration::from_hours(36)), "36h");
        assert_eq!(describe(Duration::from_secs(90)), "90s");
        assert_eq!(describe(Duration::from_millis(1500)), "1500ms");
    }
}
