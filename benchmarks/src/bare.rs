//! The bare baseline server (`fm-bench bare-server`): axum and sqlx with nothing else: no
//! token, no middleware, no consistency wait. It reads the same rows as the query-api with the
//! same indexes and builds the JSON in PostgreSQL, so that the ratio query-api ÷ bare is what
//! the service adds to a plain handler. It runs as its own process, like the query-api.

use std::time::Duration;

use anyhow::Context;
use axum::{
    Json, Router,
    extract::{Path, State},
    http::StatusCode,
    routing::get,
};
use serde_json::Value;
use sqlx::{PgPool, postgres::PgPoolOptions};
use uuid::Uuid;

/// The pool size of the query-api's default settings, so both have as many connections.
const POOL: u32 = 10;

/// One booking and its payment, as one JSON object.
const BY_ID: &str = "SELECT to_jsonb(b) || jsonb_build_object('payment', \
     (SELECT to_jsonb(p) FROM live.payments p WHERE p.booking_id = b.booking_id)) \
     FROM live.bookings b WHERE b.booking_id = $1";

/// The first page of 50 by service start, as the query-api's default `GET /bookings`.
const PAGE: &str = "SELECT coalesce(jsonb_agg(x.j), '[]'::jsonb) FROM (\
     SELECT to_jsonb(b) || jsonb_build_object('payment', \
       (SELECT to_jsonb(p) FROM live.payments p WHERE p.booking_id = b.booking_id)) AS j \
     FROM live.bookings b ORDER BY b.slot_start, b.booking_id LIMIT 51) x";

/// The latency baseline's table (written by the benchmark's raw consumer).
const PIPELINE: &str = "SELECT payload FROM bench_pipeline WHERE id = $1";

async fn one(pool: &PgPool, sql: &str, id: Option<Uuid>) -> Result<Json<Value>, StatusCode> {
    let mut query = sqlx::query_scalar::<_, Value>(sql);
    if let Some(id) = id {
        query = query.bind(id);
    }
    query
        .fetch_optional(pool)
        .await
        .map_err(|_| StatusCode::SERVICE_UNAVAILABLE)?
        .map(Json)
        .ok_or(StatusCode::NOT_FOUND)
}

async fn booking(
    State(pool): State<PgPool>,
    Path(id): Path<Uuid>,
) -> Result<Json<Value>, StatusCode> {
    one(&pool, BY_ID, Some(id)).await
}

async fn page(State(pool): State<PgPool>) -> Result<Json<Value>, StatusCode> {
    one(&pool, PAGE, None).await
}

async fn pipeline(
    State(pool): State<PgPool>,
    Path(id): Path<Uuid>,
) -> Result<Json<Value>, StatusCode> {
    one(&pool, PIPELINE, Some(id)).await
}

/// Serves until killed, on `FM_HTTP__PORT` against `FM_DATABASE__URL`.
pub(crate) async fn serve() -> anyhow::Result<()> {
    let port: u16 = std::env::var("FM_HTTP__PORT")
        .context("FM_HTTP__PORT is not set")?
        .parse()
        .context("FM_HTTP__PORT is not a port")?;
    let url = std::env::var("FM_DATABASE__URL").context("FM_DATABASE__URL is not set")?;
    let pool = PgPoolOptions::new()
        .max_connections(POOL)
        .acquire_timeout(Duration::from_secs(5))
        .connect(&url)
        .await
        .context("Failed to connect to PostgreSQL")?;
    let router = Router::new()
        .route("/ready", get(|| async { StatusCode::OK }))
        .route("/bookings", get(page))
        .route("/bookings/{id}", get(booking))
        .route("/pipeline/{id}", get(pipeline))
        .with_state(pool);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .with_context(|| format!("Failed to listen on 127.0.0.1:{port}"))?;
    axum::serve(listener, router).await?;
    Ok(())
}
