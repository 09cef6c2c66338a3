//! The service's HTTP surface beside `/health` and `/metrics`: `/ready`, which also says how
//! many aggregates are parked (docs/evolution.md) without counting them as unready: the
//! projector serves every other aggregate.

use std::time::Duration;

use axum::{Router, extract::State, routing::get};
use platform::http::{ReadyCheck, ReadyReport, probe};
use sqlx::PgPool;

use crate::{
    parking,
    versions::{self, BuildState},
};

/// What the handlers reach.
#[derive(Debug, Clone)]
pub(crate) struct AppState {
    pub(crate) pool: PgPool,
    pub(crate) producer: event_log::EventProducer,
    /// The read-model version this release builds: whose builds' parked aggregates it shows.
    pub(crate) version: i32,
}

/// Every route.
pub(crate) fn router(state: AppState) -> Router {
    Router::new().route("/ready", get(ready)).with_state(state)
}

/// `GET /ready`: Postgres and the broker answer; `parked` is always ok, and its detail names the
/// parked aggregates of this release's builds, if any, and the longest parked.
async fn ready(State(state): State<AppState>) -> ReadyReport {
    let deadline = Duration::from_secs(2);
    let postgres = probe(deadline, async {
        sqlx::query("SELECT 1")
            .execute(&state.pool)
            .await
            .map(|_| ())
    })
    .await;
    let kafka = probe(deadline, state.producer.ping()).await;
    let parked = match tokio::time::timeout(deadline, parked(&state.pool, state.version)).await {
        Ok(Ok(detail)) => detail,
        Ok(Err(error)) => Some(format!("not counted: {error}")),
        Err(_) => Some(format!("not counted within {} ms", deadline.as_millis())),
    };
    ReadyReport::new(vec![
        ReadyCheck::from_result("postgres", postgres),
        ReadyCheck::from_result("kafka", kafka),
        ReadyCheck {
            name: "parked",
            ok: true,
            detail: parked,
        },
    ])
}

/// `None` when nothing is parked; else how many aggregates, and the longest parked.
async fn parked(pool: &PgPool, version: i32) -> Result<Option<String>, sqlx::Error> {
    let mut details = Vec::new();
    for build in versions::builds(pool, version).await? {
        if !matches!(build.state, BuildState::Live | BuildState::Building) {
            continue;
        }
        let parked = parking::parked(pool, &build.schema()).await?;
        if let Some(summary) = batch_consumer::parking::summary(&parked) {
            details.push(format!("build {}: {summary}", build.build));
        }
    }
    Ok((!details.is_empty()).then(|| details.join("; ")))
}
