//! Booking commands: `POST /bookings` through a command-service process, against a raw
//! produce of records of the same size, and a raw produce that also waits to read its record
//! back (the write path's own work: `docs/consistency.md`).

use std::sync::Arc;

use anyhow::Context;
use reqwest::StatusCode;
use schemas::AggregateType;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{
    config::Bench,
    kafka::{self, ReadBack},
    load::{Until, client, closed_loop, expect},
    machine::load_average,
    procs::READY_WITHIN,
    stack,
    stats::Load,
};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct WriteRep {
    /// `POST /bookings`, 202 answers.
    pub http: Load,
    pub raw_produce: Load,
    pub produce_read_back: Load,
    /// Which ran first: the broker's store grows during a run, so repetitions alternate.
    pub order: String,
    pub load_average: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct WriteResults {
    /// Size of the raw baselines' records (a real `BookingRequested` record).
    pub record_bytes: usize,
    pub reps: Vec<WriteRep>,
}

/// Publishes the price list of the facilities' home (the deployment's default home: the
/// benchmark's shared-secret director names none), then registers `count` facilities; returns
/// their ids.
pub(crate) async fn register_facilities(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    count: usize,
) -> anyhow::Result<Vec<String>> {
    let home = platform::settings::TenancySettings::LOCAL_HOME_A;
    expect(
        http.put(format!("{base}/homes/{home}/price-list"))
            .bearer_auth(token)
            .json(&system_tests::bodies::price_list()),
        StatusCode::OK,
    )
    .await
    .map_err(|(status, detail)| anyhow::anyhow!("PUT the price list: {status} {detail}"))?;
    let mut ids = Vec::with_capacity(count);
    for _ in 0..count {
        let body = expect(
            http.post(format!("{base}/facilities"))
                .bearer_auth(token)
                .json(&system_tests::bodies::facility()),
            StatusCode::CREATED,
        )
        .await
        .map_err(|(status, detail)| anyhow::anyhow!("POST /facilities: {status} {detail}"))?;
        let body: Value = serde_json::from_str(&body)?;
        ids.push(
            body["facility_id"]
                .as_str()
                .context("POST /facilities answered no facility_id")?
                .to_owned(),
        );
    }
    Ok(ids)
}

/// The body of the `i`-th booking request: facilities in turn, a day further every round.
pub(crate) fn booking_body(facilities: &[String], i: usize) -> anyhow::Result<Vec<u8>> {
    let days_ahead = i64::try_from(1 + (i / facilities.len()) % 365)?;
    Ok(serde_json::to_vec(&system_tests::bodies::booking(
        &facilities[i % facilities.len()],
        days_ahead,
    ))?)
}

/// `POST /bookings` from `clients` clients, each body once.
pub(crate) async fn post_bookings(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    bodies: Vec<Vec<u8>>,
    clients: usize,
) -> anyhow::Result<Load> {
    post_bookings_to(http, &[url.to_owned()], token, bodies, clients).await
}

/// [`post_bookings`], the `i`-th request to `urls[i % urls.len()]` (replicas in turn).
pub(crate) async fn post_bookings_to(
    http: &reqwest::Client,
    urls: &[String],
    token: &str,
    bodies: Vec<Vec<u8>>,
    clients: usize,
) -> anyhow::Result<Load> {
    anyhow::ensure!(
        !urls.is_empty(),
        "no command-service to post the bookings to"
    );
    let (http, urls, token, bodies) = (
        http.clone(),
        Arc::new(urls.to_vec()),
        Arc::new(token.to_owned()),
        Arc::new(bodies),
    );
    let count = bodies.len();
    closed_loop(clients, Until::Count(count), move |i| {
        let (http, urls, token, bodies) =
            (http.clone(), urls.clone(), token.clone(), bodies.clone());
        async move {
            let request = http
                .post(urls[i % urls.len()].as_str())
                .bearer_auth(token.as_str())
                .header("content-type", "application/json")
                .body(bodies[i].clone());
            expect(request, StatusCode::ACCEPTED).await.map(|_| None)
        }
    })
    .await
}

async fn http_load(bench: &Bench, rep: usize) -> anyhow::Result<Load> {
    let sizes = &bench.sizes;
    let http = &client()?;
    let kafka = bench.kafka("write");
    bench.topics(&kafka).await?;
    let mut service = stack::command_service(bench, &kafka, &format!("write-{rep}"), None)?;
    service.wait_ready(http, READY_WITHIN).await?;
    let token = stack::director_token()?;
    let base = service.base();
    let facilities = register_facilities(http, &base, &token, sizes.facilities).await?;
    let bodies = |range: std::ops::Range<usize>| {
        range
            .map(|i| booking_body(&facilities, i))
            .collect::<anyhow::Result<Vec<_>>>()
    };
    let url = format!("{base}/bookings");
    let warm_up =
        post_bookings(http, &url, &token, bodies(0..sizes.clients)?, sizes.clients).await?;
    if warm_up.failed() > 0 {
        eprintln!("    warm-up failures: {:?}", warm_up.first_failure);
    }
    let measured = bodies(sizes.clients..sizes.clients + sizes.booking_requests)?;
    let load = post_bookings(http, &url, &token, measured, sizes.clients).await?;
    service.stop().await?;
    Ok(load)
}

/// Raw produce (or produce + read back) of `booking_requests` records on fresh topics, after a
/// warm-up of one record per client.
async fn raw_load(bench: &Bench, payload: &Arc<Vec<u8>>, read_back: bool) -> anyhow::Result<Load> {
    let sizes = &bench.sizes;
    let kafka = bench.kafka("raw");
    bench.topics(&kafka).await?;
    let topic = event_log::Topics::new(&kafka.topic_prefix).events(AggregateType::Booking);
    let producer = kafka::producer(&kafka)?;
    let reader = if read_back {
        Some(Arc::new(ReadBack::start(&kafka, &topic).await?))
    } else {
        None
    };
    kafka::produce_load(
        &producer,
        &topic,
        payload,
        sizes.clients,
        sizes.clients,
        reader.as_ref(),
    )
    .await?;
    kafka::produce_load(
        &producer,
        &topic,
        payload,
        sizes.booking_requests,
        sizes.clients,
        reader.as_ref(),
    )
    .await
}

pub(crate) async fn run(bench: &Bench) -> anyhow::Result<WriteResults> {
    let payload = Arc::new(kafka::booking_requested_record()?);
    let mut reps = Vec::new();
    for rep in 0..bench.sizes.repetitions {
        let http_first = rep % 2 == 0;
        eprintln!(
            "  write, repetition {} of {} ({} first)",
            rep + 1,
            bench.sizes.repetitions,
            if http_first { "HTTP" } else { "raw" }
        );
        let load_before = load_average();
        let (http_load, raw_produce, produce_read_back) = if http_first {
            let h = http_load(bench, rep).await?;
            let r = raw_load(bench, &payload, false).await?;
            let b = raw_load(bench, &payload, true).await?;
            (h, r, b)
        } else {
            let b = raw_load(bench, &payload, true).await?;
            let r = raw_load(bench, &payload, false).await?;
            let h = http_load(bench, rep).await?;
            (h, r, b)
        };
        eprintln!(
            "    HTTP {:.0}/s p50 {:.1} ms p99 {:.1} ms; raw produce {:.0}/s; produce + read back {:.0}/s",
            http_load.rate(),
            http_load.p50_ms,
            http_load.p99_ms,
            raw_produce.rate(),
            produce_read_back.rate()
        );
        reps.push(WriteRep {
            http: http_load,
            raw_produce,
            produce_read_back,
            order: if http_first {
                "HTTP, raw produce, produce + read back".into()
            } else {
                "produce + read back, raw produce, HTTP".into()
            },
            load_average: format!("{load_before} → {}", load_average()),
        });
    }
    Ok(WriteResults {
        record_bytes: payload.len(),
        reps,
    })
}
