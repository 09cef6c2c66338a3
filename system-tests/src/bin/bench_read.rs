//! `bench_read`: the read side's benchmark, one run, figures for `docs/benchmarks.md`.
//!
//! 1. Appends a history of booking stories to fresh topics (`--stories`, 8 events each on
//!    average).
//! 2. Raw Kafka consume: one consumer reads every partition from offset 0 to the end.
//! 3. Replay: a projection-service (in-process) folds the whole log into a fresh database; time
//!    from start to every offset stored, in events/s.
//! 4. Raw PostgreSQL `COPY` of as many booking-shaped rows as there are events.
//! 5. `GET /bookings/{id}` on the query-api against a bare axum + sqlx handler reading the same
//!    row by key, `--clients` concurrent clients for `--seconds` each: requests/s, p50, p99.
//!
//! Run: `FM_TEST_KAFKA_BROKERS=… FM_TEST_DATABASE_URL=… cargo run --release -p system-tests --bin bench_read`

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use axum::{
    Json, Router,
    extract::{Path, State},
    http::StatusCode,
    routing::get,
};
use domain::values::BookingId;
use event_log::{EventProducer, KafkaSettings, consumer};
use futures::StreamExt;
use platform::{
    settings::{DatabaseSettings, HttpSettings},
    shutdown::CancellationToken,
};
use schemas::{Role, fixtures::booking_story};
use secrecy::SecretString;
use serde_json::Value;
use sqlx::{PgPool, postgres::PgPoolOptions};
use uuid::Uuid;

fn arg(name: &str, default: u64) -> u64 {
    let flag = format!("--{name}");
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| *a == flag)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn seed(producer: &EventProducer, stories: usize) -> anyhow::Result<(Vec<BookingId>, u64)> {
    let mut bookings = Vec::with_capacity(stories);
    let mut total = 0;
    let mut all = Vec::with_capacity(stories);
    for i in 0..stories {
        let (booking, events) = booking_story(i);
        bookings.push(booking);
        total += events.len() as u64;
        all.push(events);
    }
    for chunk in all.chunks(128) {
        let results = futures::future::join_all(chunk.iter().map(|events| async move {
            for event in events {
                producer.append(event).await?;
            }
            Ok::<_, event_log::LogError>(())
        }))
        .await;
        for result in results {
            result?;
        }
    }
    Ok((bookings, total))
}

async fn raw_consume(kafka: &KafkaSettings, total: u64) -> anyhow::Result<Duration> {
    let reader = consumer::manual_consumer(kafka, "bench-raw-consume")?;
    let topics = event_log::Topics::new(&kafka.topic_prefix).event_topics();
    let partitions = consumer::partitions(&reader, &topics, kafka)?;
    let started = Instant::now();
    consumer::assign(&reader, &partitions.into_iter().map(|tp| (tp, 0)).collect())?;
    let mut stream = reader.stream();
    let mut seen = 0;
    let mut bytes = 0_usize;
    while seen < total {
        let message = tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .with_context(|| format!("raw consume stalled after {seen} of {total} records"))?
            .context("stream ended")??;
        bytes += rdkafka::Message::payload(&message).map_or(0, <[u8]>::len);
        seen += 1;
    }
    let elapsed = started.elapsed();
    eprintln!("raw consume: {seen} records, {bytes} bytes");
    Ok(elapsed)
}

async fn fresh_database(admin_url: &str) -> anyhow::Result<String> {
    let name = format!("fm_bench_{}", Uuid::new_v4().simple());
    let admin = PgPool::connect(admin_url).await?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await?;
    let (base, _) = admin_url.rsplit_once('/').context("no database name")?;
    Ok(format!("{base}/{name}"))
}

async fn replay(
    kafka: &KafkaSettings,
    database_url: &str,
    shutdown: &CancellationToken,
) -> anyhow::Result<(Duration, PgPool)> {
    let reader = consumer::manual_consumer(kafka, "bench-ends")?;
    let topics = event_log::Topics::new(&kafka.topic_prefix).event_topics();
    let partitions = consumer::partitions(&reader, &topics, kafka)?;
    let ends = consumer::end_offsets(&reader, &partitions, kafka)?;
    let settings = projection_service::Settings {
        http: HttpSettings::on_port(0),
        kafka: kafka.clone(),
        database: DatabaseSettings {
            url: SecretString::from(database_url.to_owned()),
            ..DatabaseSettings::default()
        },
        ..projection_service::Settings::default()
    };
    let pool = PgPool::connect(database_url).await?;
    let started = Instant::now();
    let app = projection_service::Application::build(settings, shutdown.clone()).await?;
    tokio::spawn(app.run_until_stopped());
    loop {
        let stored: BTreeMap<(String, i32), i64> = sqlx::query_as::<_, (String, i32, i64)>(
            "SELECT topic, partition, next_offset FROM live.projection_offsets",
        )
        .fetch_all(&pool)
        .await?
        .into_iter()
        .map(|(t, p, o)| ((t, p), o))
        .collect();
        if ends
            .iter()
            .all(|(tp, end)| *end == 0 || stored.get(tp) == Some(end))
        {
            return Ok((started.elapsed(), pool));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// COPYs `rows` booking-shaped rows (what the projector writes, one per event) into a fresh
/// table.
async fn raw_copy(pool: &PgPool, rows: u64) -> anyhow::Result<Duration> {
    sqlx::query("CREATE TABLE bench_copy (LIKE live.bookings INCLUDING ALL)")
        .execute(pool)
        .await?;
    let sample: String = sqlx::query_scalar(
        "SELECT concat_ws(E'\\t', facility_id, service_type, status, slot_start, slot_end, slot, deceased, \
         family_contacts, price_amount_minor, price_currency, requested_by, requested_by_role, \
         coalesce(status_reason, '\\N'), saga, version, requested_at, updated_at) FROM live.bookings LIMIT 1",
    )
    .fetch_one(pool)
    .await?;
    let mut data = String::new();
    for _ in 0..rows {
        data.push_str(&Uuid::new_v4().to_string());
        data.push('\t');
        data.push_str(&sample);
        data.push('\n');
    }
    let started = Instant::now();
    let mut conn = pool.acquire().await?;
    let mut copy = conn
        .copy_in_raw(
            "COPY bench_copy (booking_id, facility_id, service_type, status, slot_start, slot_end, slot, deceased, \
             family_contacts, price_amount_minor, price_currency, requested_by, requested_by_role, status_reason, \
             saga, version, requested_at, updated_at) FROM STDIN",
        )
        .await?;
    copy.send(data.as_bytes()).await?;
    copy.finish().await?;
    Ok(started.elapsed())
}

/// The baseline: one row by key, serialised as JSON, no auth, no consistency wait.
async fn bare_handler(
    State(pool): State<PgPool>,
    Path(id): Path<Uuid>,
) -> Result<Json<Value>, StatusCode> {
    sqlx::query_scalar::<_, Value>("SELECT to_jsonb(b) FROM live.bookings b WHERE booking_id = $1")
        .bind(id)
        .fetch_optional(&pool)
        .await
        .map_err(|_| StatusCode::SERVICE_UNAVAILABLE)?
        .map(Json)
        .ok_or(StatusCode::NOT_FOUND)
}

struct Load {
    requests: usize,
    elapsed: Duration,
    p50: Duration,
    p99: Duration,
}

async fn load(
    base: String,
    token: Option<String>,
    ids: Arc<Vec<BookingId>>,
    clients: usize,
    seconds: u64,
) -> anyhow::Result<Load> {
    let http = reqwest::Client::new();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let tasks: Vec<_> = (0..clients)
        .map(|client| {
            let (http, base, token, ids) = (http.clone(), base.clone(), token.clone(), ids.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut i = client * 7919;
                while Instant::now() < deadline {
                    let id = ids[i % ids.len()];
                    i += 1;
                    let mut request = http.get(format!("{base}/{id}"));
                    if let Some(token) = &token {
                        request = request.bearer_auth(token);
                    }
                    let sent = Instant::now();
                    let response = request.send().await?;
                    let ok = response.status() == StatusCode::OK;
                    response.bytes().await?;
                    anyhow::ensure!(ok, "a request failed");
                    latencies.push(sent.elapsed());
                }
                Ok::<_, anyhow::Error>(latencies)
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await??);
    }
    let elapsed = started.elapsed();
    all.sort();
    let at = |q: f64| {
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let index = ((all.len() as f64 * q) as usize).min(all.len().saturating_sub(1));
        all.get(index).copied().unwrap_or_default()
    };
    Ok(Load {
        requests: all.len(),
        elapsed,
        p50: at(0.50),
        p99: at(0.99),
    })
}

#[allow(clippy::cast_precision_loss)] // Rates for people to read.
fn rate(count: u64, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let stories = usize::try_from(arg("stories", 5000))?;
    let clients = usize::try_from(arg("clients", 32))?;
    let seconds = arg("seconds", 10);
    let kafka = system_tests::fresh_kafka().await?;
    let admin_url = system_tests::required_env("FM_TEST_DATABASE_URL")?;
    let producer = EventProducer::new(&kafka)?;
    let shutdown = CancellationToken::new();

    let seeding = Instant::now();
    let (bookings, events) = seed(&producer, stories).await?;
    eprintln!("seeded {events} events in {:.1?}", seeding.elapsed());

    let consume = raw_consume(&kafka, events).await?;
    let database_url = fresh_database(&admin_url).await?;
    let (replayed, pool) = replay(&kafka, &database_url, &shutdown).await?;
    let copied = raw_copy(&pool, events).await?;

    // Query side: the query-api and a bare axum + sqlx handler, on the same database.
    let mut settings = query_api::Settings::new(
        system_tests::TEST_SECRET,
        DatabaseSettings {
            url: SecretString::from(database_url.clone()),
            max_connections: 16,
            ..DatabaseSettings::default()
        },
    );
    settings.http = HttpSettings::on_port(0);
    let api = query_api::Application::build(settings, shutdown.clone()).await?;
    let api_base = format!("http://127.0.0.1:{}/bookings", api.port());
    tokio::spawn(api.run_until_stopped());
    let bare_pool = PgPoolOptions::new()
        .max_connections(16)
        .connect(&database_url)
        .await?;
    let bare = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let bare_base = format!("http://{}/b", bare.local_addr()?);
    tokio::spawn(async move {
        let router = Router::new()
            .route("/b/{id}", get(bare_handler))
            .with_state(bare_pool);
        axum::serve(bare, router).await
    });
    let keys =
        platform::auth::TokenKeys::from_secret(&SecretString::from(system_tests::TEST_SECRET))?;
    let token = keys.mint("bench", Role::Director, chrono::Duration::hours(1))?;
    let ids = Arc::new(bookings);
    // Warm both up, then measure one after the other.
    load(
        api_base.clone(),
        Some(token.clone()),
        ids.clone(),
        clients,
        1,
    )
    .await?;
    load(bare_base.clone(), None, ids.clone(), clients, 1).await?;
    let api_load = load(api_base, Some(token), ids.clone(), clients, seconds).await?;
    let bare_load = load(bare_base, None, ids, clients, seconds).await?;
    shutdown.cancel();

    let (consume_rate, replay_rate, copy_rate) = (
        rate(events, consume),
        rate(events, replayed),
        rate(events, copied),
    );
    let api_rate = rate(api_load.requests as u64, api_load.elapsed);
    let bare_rate = rate(bare_load.requests as u64, bare_load.elapsed);
    println!("| Measure | Figure |");
    println!("|---|---|");
    println!("| events in the log | {events} ({stories} booking stories) |");
    println!("| raw Kafka consume | {consume_rate:.0} events/s ({consume:.2?}) |");
    println!(
        "| replay into the read models | {replay_rate:.0} events/s ({replayed:.2?}), {:.2} x raw consume |",
        replay_rate / consume_rate
    );
    println!(
        "| raw PostgreSQL COPY, one booking row per event | {copy_rate:.0} rows/s ({copied:.2?}); replay = {:.2} x COPY |",
        replay_rate / copy_rate
    );
    println!(
        "| query-api GET /bookings/{{id}}, {clients} clients | {api_rate:.0} req/s, p50 {:.2?}, p99 {:.2?} |",
        api_load.p50, api_load.p99
    );
    println!(
        "| bare axum + sqlx, same row by key | {bare_rate:.0} req/s, p50 {:.2?}, p99 {:.2?}; query-api = {:.2} x bare |",
        bare_load.p50,
        bare_load.p99,
        api_rate / bare_rate
    );
    Ok(())
}
