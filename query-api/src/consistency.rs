//! Read-your-writes: waiting until the read model has applied a log position.

use axum::http::HeaderMap;
use schemas::ConsistencyToken;
use sqlx::PgPool;
use tokio::time::Instant;

use crate::{error::ApiError, settings::ConsistencySettings};

/// The header a client presents its token in.
pub(crate) const HEADER: &str = "consistency-token";

/// The projection whose offsets the read models follow.
const PROJECTION: &str = "read_models";

/// Waits until the read models have applied the position in the request's `Consistency-Token`
/// header, if there is one. Past `max_wait` the answer is a 503 that says so.
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
    let deadline = Instant::now() + settings.max_wait;
    loop {
        let applied: Option<i64> = sqlx::query_scalar(
            "SELECT next_offset FROM projection_offsets WHERE projection = $1 AND topic = $2 AND partition = $3",
        )
        .bind(PROJECTION)
        .bind(&token.topic)
        .bind(token.partition)
        .fetch_optional(pool)
        .await?;
        if applied.is_some_and(|next_offset| next_offset > token.offset) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(ApiError::NotCaughtUp {
                waited: settings.max_wait,
            });
        }
        tokio::time::sleep(settings.poll_interval).await;
    }
}
