//! Read-your-writes: waiting until the read model has applied a log position.

use axum::http::HeaderMap;
use schemas::ConsistencyToken;
use sqlx::PgPool;
use tokio::time::Instant;

use crate::{error::ApiError, settings::ConsistencySettings};

/// The header a client presents its token in.
pub(crate) const HEADER: &str = "consistency-token";

/// Waits until the read models have applied the position in the request's `Consistency-Token`
/// header, if there is one. Past `max_wait` the answer is a 503 that says so. Each wait counts
/// in `query_consistency_waits_total{result}` (`caught_up`, `timed_out`) and
/// `query_consistency_wait_seconds{result}`.
///
/// The offsets are read through the `projection_offsets` view of this release's read-model version
/// (the connections' `search_path`), so during a rebuild the wait follows whichever build
/// answers the query; a switch only ever moves to a build at least as far along every
/// partition. A token is a log position, so it means the same to every version.
pub(crate) async fn wait_for_token(
    headers: &HeaderMap,
    pool: &PgPool,
    settings: &ConsistencySettings,
) -> Result<(), ApiError> {
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
    loop {
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
        tokio::time::sleep(settings.poll_interval).await;
    }
}
