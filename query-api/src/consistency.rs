//! Read-your-writes: waiting until the read model has applied a log position.
//!
//! A wait does not poll on a clock: each projector commits its batch together with
//! `NOTIFY fm_read_models_advanced` ([`ADVANCED_CHANNEL`]), which PostgreSQL delivers only once
//! the batch is visible, and [`Progress`] turns every such notification into a wake-up of the
//! waits in this process, which then read the offsets again. The re-read every `poll_interval`
//! stays as the fallback for the moments the listening connection is down (notifications sent
//! meanwhile are lost; a reconnection wakes every wait once).
//!
//! A token beyond the end of the log (forged, or from another deployment) is answered at once
//! with 422 `consistency_token.beyond_log` rather than held for the whole wait: before it waits,
//! the query-api asks the log ([`LogEnds`]) for the end of the token's partition (and, if the
//! token is past it, once more half a second later). A command
//! answers only once it has read its own record back, so every token a command returned names
//! an offset below that end.

use std::{sync::Arc, time::Duration};

use axum::http::HeaderMap;
use event_log::{KafkaSettings, Topics};
use platform::shutdown::CancellationToken;
use rdkafka::consumer::StreamConsumer;
use schemas::ConsistencyToken;
use sqlx::{PgPool, postgres::PgListener};
use tokio::{sync::watch, time::Instant};

use crate::{error::ApiError, settings::ConsistencySettings};

/// The header a client presents its token in.
pub(crate) const HEADER: &str = "consistency-token";

/// The channel a projector notifies in the transaction of each batch it commits; the
/// projection-service declares the same name (`projection-service/src/projector.rs`), and
/// `system-tests/tests/consistency_wake.rs` fails when the two differ.
pub(crate) const ADVANCED_CHANNEL: &str = "fm_read_models_advanced";

/// How long the listener waits before connecting again after losing PostgreSQL, at most.
const RELISTEN_MAX_DELAY: Duration = Duration::from_secs(5);

/// The waits' settings and their wake-ups.
#[derive(Debug, Clone)]
pub(crate) struct Consistency {
    pub(crate) settings: ConsistencySettings,
    pub(crate) progress: Progress,
}

/// A counter that moves whenever a projector may have advanced the read models' offsets.
#[derive(Debug, Clone)]
pub(crate) struct Progress {
    advanced: watch::Receiver<u64>,
}

impl Progress {
    /// Listens on [`ADVANCED_CHANNEL`] through `pool`'s database until `shutdown`; while it
    /// cannot connect, it tries again with a growing delay and the waits fall back to their
    /// re-read every `poll_interval`.
    pub(crate) fn listen(pool: PgPool, shutdown: CancellationToken) -> Self {
        let (sender, advanced) = watch::channel(0);
        tokio::spawn(relay_notifications(pool, sender, shutdown));
        Self { advanced }
    }
}

async fn relay_notifications(
    pool: PgPool,
    sender: watch::Sender<u64>,
    shutdown: CancellationToken,
) {
    let wake = || sender.send_modify(|count| *count = count.wrapping_add(1));
    let mut delay = Duration::from_millis(100);
    loop {
        let connect = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.listen(ADVANCED_CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        let connected = tokio::select! {
            () = shutdown.cancelled() => return,
            connected = connect => connected,
        };
        let mut listener = match connected {
            Ok(listener) => listener,
            Err(error) => {
                tracing::debug!(%error, "cannot listen for read-model progress yet; waits poll");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(RELISTEN_MAX_DELAY);
                continue;
            }
        };
        delay = Duration::from_millis(100);
        // Whatever was notified while no connection listened is lost: every wait looks again.
        wake();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                received = listener.try_recv() => match received {
                    Ok(Some(_)) => wake(),
                    // The connection closed; `try_recv` says so once, and the loop reconnects.
                    Ok(None) => break,
                    Err(error) => {
                        tracing::warn!(%error, "lost the read-model progress listener; waits poll until it is back");
                        break;
                    }
                },
            }
        }
    }
}

/// Waits until the read models have applied the position in the request's `Consistency-Token`
/// header, if there is one. Past `max_wait` the answer is a 503 that says so. Each wait counts
/// in `query_consistency_waits_total{result}` (`caught_up`, `timed_out`, `beyond_log`) and
/// `query_consistency_wait_seconds{result}`.
///
/// The offsets are read through the `projection_offsets` view of this release's read-model version
/// (the connections' `search_path`), so during a rebuild the wait follows whichever build
/// answers the query; a switch only ever moves to a build at least as far along every
/// partition. A token is a log position, so it means the same to every version.
pub(crate) async fn wait_for_token(
    headers: &HeaderMap,
    pool: &PgPool,
    consistency: &Consistency,
    log: &LogEnds,
) -> Result<(), ApiError> {
    let settings = &consistency.settings;
    let Some(value) = headers.get(HEADER) else {
        return Ok(());
    };
    let token: ConsistencyToken = value
        .to_str()
        .ok()
        .and_then(|text| text.parse().ok())
        .ok_or(ApiError::MalformedToken)?;
    let started = Instant::now();
    let deadline = started + settings.max_wait;
    let record = |result: &'static str| {
        metrics::counter!("query_consistency_waits_total", "result" => result).increment(1);
        metrics::histogram!("query_consistency_wait_seconds", "result" => result)
            .record(started.elapsed().as_secs_f64());
    };
    // Is it anywhere? A question to the log of at most ASK_TIMEOUT (and half a second more for
    // a token past the end), so a log in trouble costs the wait little.
    log.refuse_beyond_end(&token)
        .await
        .inspect_err(|_| record("beyond_log"))?;
    let mut advanced = consistency.progress.advanced.clone();
    let mut listening = true;
    loop {
        // Marked seen before the read, so a batch committed after the read still wakes us.
        advanced.borrow_and_update();
        let applied: Option<i64> = sqlx::query_scalar(
            "SELECT next_offset FROM projection_offsets WHERE topic = $1 AND partition = $2",
        )
        .bind(&token.topic)
        .bind(token.partition)
        .fetch_optional(pool)
        .await?;
        if applied.is_some_and(|next_offset| next_offset > token.offset) {
            record("caught_up");
            return Ok(());
        }
        if Instant::now() >= deadline {
            record("timed_out");
            return Err(ApiError::NotCaughtUp {
                waited: settings.max_wait,
            });
        }
        let recheck = (Instant::now() + settings.poll_interval).min(deadline);
        tokio::select! {
            changed = advanced.changed(), if listening => listening = changed.is_ok(),
            () = tokio::time::sleep_until(recheck) => {}
        }
    }
}

/// How long one question to the log may take before the token is simply waited for.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// How long after a first "beyond the end" the log is asked again.
const RECHECK_AFTER: Duration = Duration::from_millis(500);

/// The log's end, asked for once per wait (twice for a token beyond it); without Kafka settings, nothing is asked.
#[derive(Clone)]
pub(crate) struct LogEnds {
    log: Option<Arc<(StreamConsumer, KafkaSettings, Vec<String>)>>,
}

impl std::fmt::Debug for LogEnds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogEnds")
            .field("asks_the_log", &self.log.is_some())
            .finish()
    }
}

impl LogEnds {
    /// A reader of the log's ends on `kafka`'s brokers (a consumer that never subscribes); none
    /// when there are no settings or the client cannot be made (then tokens are only waited
    /// for, as before).
    pub(crate) fn new(kafka: Option<&KafkaSettings>) -> Self {
        let log = kafka.and_then(|kafka| {
            // One quick question per wait: an unanswered one leaves the token to the wait.
            let kafka = KafkaSettings {
                request_timeout: kafka.request_timeout.min(Duration::from_secs(1)),
                ..kafka.clone()
            };
            match event_log::consumer::manual_consumer(&kafka, "query-api-log-ends") {
                Ok(consumer) => {
                    let topics = Topics::new(&kafka.topic_prefix).event_topics();
                    Some(Arc::new((consumer, kafka, topics)))
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot ask the log for its end; tokens beyond it wait the whole wait");
                    None
                }
            }
        });
        Self { log }
    }

    /// Refuses a token that names a topic of no event stream of this deployment, or an offset at
    /// or past its partition's end twice, [`RECHECK_AFTER`] apart: a partition's new leader
    /// may report a high watermark a moment behind the old one's, and a token a command
    /// returned must never be refused. When the log does not answer within [`ASK_TIMEOUT`], the
    /// token is waited for as usual (the question costs the wait at most that).
    async fn refuse_beyond_end(&self, token: &ConsistencyToken) -> Result<(), ApiError> {
        let Some(log) = self.log.clone() else {
            return Ok(());
        };
        if !log.2.contains(&token.topic) {
            return Err(ApiError::TokenBeyondLog);
        }
        if !Self::beyond_end(&log, token).await {
            return Ok(());
        }
        tokio::time::sleep(RECHECK_AFTER).await;
        if Self::beyond_end(&log, token).await {
            Err(ApiError::TokenBeyondLog)
        } else {
            Ok(())
        }
    }

    /// Whether the log says the token's offset is at or past its partition's end; `false` when
    /// it does not answer.
    async fn beyond_end(
        log: &Arc<(StreamConsumer, KafkaSettings, Vec<String>)>,
        token: &ConsistencyToken,
    ) -> bool {
        let log = log.clone();
        let partition = (token.topic.clone(), token.partition);
        let asked = tokio::task::spawn_blocking(move || {
            event_log::consumer::end_offsets(&log.0, &[partition], &log.1)
        });
        match tokio::time::timeout(ASK_TIMEOUT, asked).await {
            Ok(Ok(Ok(ends))) => ends.values().next().is_some_and(|end| token.offset >= *end),
            Ok(Ok(Err(error))) => {
                tracing::debug!(%error, "the log's end is unknown; waiting for the token");
                false
            }
            Ok(Err(_)) | Err(_) => false,
        }
    }
}
