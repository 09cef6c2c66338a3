//! Command-to-query latency: from the 202 of `POST /bookings` on the command-service until
//! `GET /bookings/{id}` on the query-api returns the booking, by polling and by presenting the
//! consistency token; beside it, the least a "log → PostgreSQL → HTTP" path can take: a raw
//! produce, a raw consumer `INSERT`ing each record, and the bare server polled the same way,
//! its clock started once another consumer has read the record back (as the command-service
//! reads its record back before its 202).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use reqwest::StatusCode;
use schemas::AggregateType;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use super::write::{booking_body, register_facilities};
use crate::{
    config::Bench,
    kafka::{self, Pipeline, ReadBack},
    load::{Failure, Until, client, closed_loop, expect},
    machine::load_average,
    pg,
    procs::READY_WITHIN,
    stack,
    stats::Load,
};

/// How long a booking may take to become visible before it counts as a failure.
const VISIBLE_WITHIN: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct LatencyRep {
    /// 202 → `GET /bookings/{id}` polled until 200.
    pub poll: Load,
    /// 202 → one `GET /bookings/{id}` with the `Consistency-Token` header.
    pub token: Load,
    /// Raw produce read back by a consumer of the benchmark's → the bare server's
    /// `GET /pipeline/{id}`, polled, returns 200.
    pub pipeline: Load,
    pub order: String,
    pub load_average: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct LatencyResults {
    pub reps: Vec<LatencyRep>,
}

/// Polls `url` every `every` until it answers 200 (a 404 means "not yet"); the time since
/// `since`.
async fn poll_until_found(
    http: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    since: Instant,
    every: Duration,
) -> Result<Duration, Failure> {
    loop {
        let mut request = http.get(url);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        match expect(request, StatusCode::OK).await {
            Ok(_) => return Ok(since.elapsed()),
            Err((status, _)) if status == "404" => {}
            Err(failure) => return Err(failure),
        }
        if since.elapsed() > VISIBLE_WITHIN {
            return Err(("not visible".into(), format!("within {VISIBLE_WITHIN:?}")));
        }
        tokio::time::sleep(every).await;
    }
}

/// What the command-service answered: the booking id and the consistency token.
async fn request_booking(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    body: Vec<u8>,
) -> Result<(String, String), Failure> {
    let answer = expect(
        http.post(url)
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body),
        StatusCode::ACCEPTED,
    )
    .await?;
    let answer: Value = serde_json::from_str(&answer)
        .map_err(|error| ("bad answer".to_owned(), error.to_string()))?;
    match (
        answer["booking_id"].as_str(),
        answer["consistency_token"].as_str(),
    ) {
        (Some(id), Some(consistency)) => Ok((id.to_owned(), consistency.to_owned())),
        _ => Err(("bad answer".to_owned(), answer.to_string())),
    }
}

#[derive(Debug, Clone, Copy)]
enum Mode {
    Poll,
    Token,
    Pipeline,
}

/// Everything one repetition's clients share.
struct Rig {
    http: reqwest::Client,
    token: String,
    command: String,
    query: String,
    bare: String,
    facilities: Vec<String>,
    producer: rdkafka::producer::FutureProducer,
    pipeline_topic: String,
    /// Reads the pipeline's records back, as the command-service reads its own before its 202.
    read_back: Arc<ReadBack>,
    payload: Vec<u8>,
    poll: Duration,
}

async fn measure(rig: &Arc<Rig>, mode: Mode, offset: usize, bench: &Bench) -> anyhow::Result<Load> {
    let rig = rig.clone();
    closed_loop(
        bench.sizes.latency_clients,
        Until::Count(bench.sizes.latency_samples),
        move |i| {
            let rig = rig.clone();
            async move {
                match mode {
                    Mode::Poll | Mode::Token => {
                        let body = booking_body(&rig.facilities, offset + i)
                            .map_err(|error| ("body".to_owned(), error.to_string()))?;
                        let (id, consistency) = request_booking(
                            &rig.http,
                            &format!("{}/bookings", rig.command),
                            &rig.token,
                            body,
                        )
                        .await?;
                        let accepted = Instant::now();
                        let url = format!("{}/bookings/{id}", rig.query);
                        if matches!(mode, Mode::Poll) {
                            poll_until_found(&rig.http, &url, Some(&rig.token), accepted, rig.poll)
                                .await
                                .map(Some)
                        } else {
                            let request = rig
                                .http
                                .get(&url)
                                .bearer_auth(&rig.token)
                                .header("consistency-token", consistency);
                            expect(request, StatusCode::OK)
                                .await
                                .map(|_| Some(accepted.elapsed()))
                        }
                    }
                    Mode::Pipeline => {
                        let id = Uuid::new_v4();
                        let read = rig.read_back.expect(id);
                        kafka::send(&rig.producer, &rig.pipeline_topic, id, &rig.payload)
                            .await
                            .map_err(|error| ("produce".to_owned(), format!("{error:#}")))?;
                        if !matches!(tokio::time::timeout(VISIBLE_WITHIN, read).await, Ok(Ok(()))) {
                            return Err((
                                "not read back".to_owned(),
                                format!("within {VISIBLE_WITHIN:?}"),
                            ));
                        }
                        let read_back = Instant::now();
                        let url = format!("{}/pipeline/{id}", rig.bare);
                        poll_until_found(&rig.http, &url, None, read_back, rig.poll)
                            .await
                            .map(Some)
                    }
                }
            }
        },
    )
    .await
}

async fn one_rep(bench: &Bench, rep: usize) -> anyhow::Result<LatencyRep> {
    let sizes = &bench.sizes;
    let http = &client()?;
    let tag = format!("latency-{rep}");
    let kafka = bench.kafka("latency");
    bench.topics(&kafka).await?;
    let database_url = pg::fresh_database(&bench.admin_url, "latency").await?;
    let mut projection = stack::projection_service(bench, &kafka, &database_url, &tag)?;
    projection.wait_ready(http, READY_WITHIN).await?;
    let mut command = stack::command_service(bench, &kafka, &tag, None)?;
    command.wait_ready(http, READY_WITHIN).await?;
    let mut query = stack::query_api(bench, &database_url, &tag)?;
    query.wait_ready(http, READY_WITHIN).await?;
    let mut bare = stack::bare_server(bench, &database_url, &tag)?;
    bare.wait_ready(http, READY_WITHIN).await?;

    let pipeline_kafka = bench.kafka("pipeline");
    bench.topics(&pipeline_kafka).await?;
    let pipeline_topic =
        event_log::Topics::new(&pipeline_kafka.topic_prefix).events(AggregateType::Booking);
    let pool = PgPool::connect(&database_url).await?;
    let _pipeline = Pipeline::start(&pipeline_kafka, &pipeline_topic, pool).await?;
    let read_back = Arc::new(ReadBack::start(&pipeline_kafka, &pipeline_topic).await?);

    let token = stack::director_token()?;
    let facilities = register_facilities(http, &command.base(), &token, sizes.facilities).await?;
    let rig = Arc::new(Rig {
        http: http.clone(),
        token,
        command: command.base(),
        query: query.base(),
        bare: bare.base(),
        facilities,
        producer: kafka::producer(&pipeline_kafka)?,
        pipeline_topic,
        read_back,
        payload: kafka::booking_requested_record()?,
        poll: Duration::from_millis(sizes.poll_interval_ms),
    });
    let load_before = load_average();
    // A short warm-up of every path, then the modes in an order that changes every repetition.
    for (i, mode) in [Mode::Poll, Mode::Token, Mode::Pipeline]
        .into_iter()
        .enumerate()
    {
        let mut warm = bench.clone();
        warm.sizes.latency_samples = sizes.latency_clients;
        measure(&rig, mode, 1_000_000 + i * 1000, &warm).await?;
    }
    let order = match rep % 3 {
        0 => [Mode::Poll, Mode::Token, Mode::Pipeline],
        1 => [Mode::Pipeline, Mode::Poll, Mode::Token],
        _ => [Mode::Token, Mode::Pipeline, Mode::Poll],
    };
    let (mut polled, mut with_token, mut pipeline) = (None, None, None);
    for (i, mode) in order.into_iter().enumerate() {
        let load = measure(&rig, mode, i * sizes.latency_samples, bench).await?;
        eprintln!(
            "    {mode:?}: p50 {:.1} ms, p99 {:.1} ms, {} failed",
            load.p50_ms,
            load.p99_ms,
            load.failed()
        );
        match mode {
            Mode::Poll => polled = Some(load),
            Mode::Token => with_token = Some(load),
            Mode::Pipeline => pipeline = Some(load),
        }
    }
    for process in [command, query, projection, bare] {
        process.stop().await?;
    }
    Ok(LatencyRep {
        poll: polled.context("poll mode not measured")?,
        token: with_token.context("token mode not measured")?,
        pipeline: pipeline.context("pipeline not measured")?,
        order: order
            .iter()
            .map(|mode| format!("{mode:?}").to_lowercase())
            .collect::<Vec<_>>()
            .join(", "),
        load_average: format!("{load_before} → {}", load_average()),
    })
}

pub(crate) async fn run(bench: &Bench) -> anyhow::Result<LatencyResults> {
    let mut reps = Vec::new();
    for rep in 0..bench.sizes.repetitions {
        eprintln!(
            "  command-to-query latency, repetition {} of {}",
            rep + 1,
            bench.sizes.repetitions
        );
        reps.push(one_rep(bench, rep).await?);
    }
    Ok(LatencyResults { reps })
}
