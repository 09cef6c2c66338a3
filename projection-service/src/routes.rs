//! The service's HTTP surface beside `/health` and `/metrics`: `/ready`.

use std::time::Duration;

use axum::{Router, extract::State, routing::get};
use platform::http::{ReadyCheck, ReadyReport, probe};
use sqlx::PgPool;

/// What the handlers reach.
#[derive(Debug, Clone)]
pub(crate) struct AppState {
    pub(crate) pool: PgPool,
    pub(crate) producer: event_log::EventProducer,
}

/// Every route.
pub(crate) fn router(state: AppState) -> Router {
    Router::new().route("/ready", get(ready)).with_state(state)
}

/// `GET /ready`: Postgres and the broker answer.
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
    ReadyReport::new(vec![
        ReadyCheck::from_result("postgres", postgres),
        ReadyCheck::from_result("kafka", kafka),
    ])
}
