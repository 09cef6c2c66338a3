//! `bench_write`: the write side's benchmark, one run, figures for `docs/benchmarks.md`.
//!
//! 1. HTTP: a command-service (in-process, fresh topics), `--facilities` facilities, then
//!    `--clients` concurrent clients send `--requests` valid `POST /bookings` (spread over the
//!    facilities and future days): commands/s, p50/p99/max of the 202 answers, every non-202
//!    answer counted and printed. Rounds alternate the order of 1 and 3 (the broker slows as its
//!    store grows).
//! 2. Raw produce: an rdkafka `FutureProducer` with the service's producer settings (idempotent,
//!    `acks=all`, `linger.ms=1`) sends as many records of the size of a real `BookingRequested`
//!    record (same key and headers) to a fresh topic, `--clients` sends in flight.
//! 3. Raw produce + read back: the same, and each send waits until a consumer
//!    (`fetch.wait.max.ms=10`, like the service's tailer) has read its record back. This is what
//!    the write path does (`docs/consistency.md`), without HTTP, auth, validation or the domain.
//! 4. Start time against history (after `--rounds` rounds of 1 to 3, default 2, to show the
//!    noise): a command-service on topics holding 0, `--history` and 10 × `--history`
//!    `BookingRequested` events (default `--history` = `--requests`), timed from
//!    `Application::build` until `/ready` answers 200: once replaying the whole log, once
//!    restoring the snapshot (`FM_COMMANDS__SNAPSHOT_PATH`) that the replaying replica wrote at
//!    its shutdown, at the end of the log. Beside them, a plain consumer reading the same log.
//!
//! Run: `FM_TEST_KAFKA_BROKERS=127.0.0.1:49392 cargo run --release -p system-tests --bin bench_write`

use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use domain::{booking::BookingEvent, fixtures, values::BookingId};
use event_log::{EventProducer, KafkaSettings, consumer, producer::headers};
use futures::StreamExt;
use platform::{auth::TokenKeys, settings::HttpSettings, shutdown::CancellationToken};
use rdkafka::{
    ClientConfig, Message,
    message::{Header, OwnedHeaders},
    producer::{FutureProducer, FutureRecord},
};
use reqwest::StatusCode;
use schemas::{Actor, AggregateType, EventEnvelope, EventMetadata, Role};
use secrecy::SecretString;
use serde_json::Value;
use tokio::sync::oneshot;
use uuid::Uuid;

/// The subject of the director token the HTTP clients use (and of the raw records' actor).
const DIRECTOR: &str = "bench-director";
/// How long a raw record may take to be read back, as the service's outcome timeout.
const READ_BACK_TIMEOUT: Duration = Duration::from_secs(10);

fn arg(name: &str, default: u64) -> u64 {
    let flag = format!("--{name}");
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| *a == flag)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A `BookingRequested` envelope as the command-service writes it for a director's request.
fn booking_requested() -> anyhow::Result<EventEnvelope> {
    let BookingEvent::BookingRequested {
        facility_id,
        service_type,
        slot,
        deceased,
        family_contacts,
        price,
        ..
    } = fixtures::booking_requested()
    else {
        bail!("the fixture is a request")
    };
    let booking = BookingId::new();
    let command_id = Uuid::new_v4();
    let metadata = EventMetadata {
        correlation_id: command_id,
        causation_id: command_id,
        actor: Actor {
            subject: DIRECTOR.to_owned(),
            role: Role::Director,
        },
        occurred_at: chrono::Utc::now(),
        idempotency: None,
    };
    let event = BookingEvent::BookingRequested {
        booking_id: booking,
        facility_id,
        service_type,
        slot,
        deceased,
        family_contacts,
        price,
    };
    Ok(EventEnvelope::wrap(
        AggregateType::Booking,
        *booking.as_uuid(),
        1,
        &event,
        &metadata,
    )?)
}

/// Appends `events` `BookingRequested` events (one new booking each), 256 in flight.
async fn seed(producer: &EventProducer, events: usize) -> anyhow::Result<()> {
    let envelopes = (0..events)
        .map(|_| booking_requested())
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut appends =
        futures::stream::iter(envelopes.iter().map(|e| producer.append(e))).buffer_unordered(256);
    while let Some(result) = appends.next().await {
        result.context("Failed to append a history event")?;
    }
    Ok(())
}

/// A started command-service: its URL, how to stop it, and the task that ends once it has
/// stopped (after writing its last snapshot, if it keeps one).
struct Running {
    base: String,
    shutdown: CancellationToken,
    stopped: tokio::task::JoinHandle<anyhow::Result<()>>,
    /// `Application::build`: connect, restore a snapshot, metadata and end offsets.
    built: Duration,
    /// From the start of `build` until `/ready` answered 200.
    ready: Duration,
    startup: command_service::startup::StartupReport,
}

impl Running {
    async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.stopped
            .await
            .context("the command-service panicked")?
            .context("the command-service failed")
    }
}

/// Starts a command-service on `kafka` (keeping its snapshot at `snapshot`, if given) and waits
/// for `/ready`.
async fn start_service(
    kafka: &KafkaSettings,
    http: &reqwest::Client,
    snapshot: Option<&Path>,
) -> anyhow::Result<Running> {
    let shutdown = CancellationToken::new();
    let mut settings = command_service::Settings::with_secret(system_tests::TEST_SECRET);
    settings.http = HttpSettings::on_port(0);
    settings.kafka = kafka.clone();
    settings.commands.snapshot_path = snapshot.map(Path::to_path_buf);
    let started = Instant::now();
    let app = command_service::Application::build(settings, shutdown.clone())
        .await
        .context("The command-service did not build")?;
    let built = started.elapsed();
    let startup = app.startup();
    let base = format!("http://127.0.0.1:{}", app.port());
    let stopped = tokio::spawn(app.run_until_stopped());
    let deadline = started + Duration::from_mins(5);
    loop {
        let response = http.get(format!("{base}/ready")).send().await;
        if response
            .as_ref()
            .is_ok_and(|r| r.status() == StatusCode::OK)
        {
            return Ok(Running {
                base,
                shutdown,
                stopped,
                built,
                ready: started.elapsed(),
                startup,
            });
        }
        if Instant::now() > deadline {
            let detail = match response {
                Ok(response) => response.text().await.unwrap_or_default(),
                Err(error) => error.to_string(),
            };
            bail!("the command-service at {base} was not ready within 300 s: {detail}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// One consumer reads every event topic from offset 0 until it has `events` records: what the
/// broker can deliver, for comparison with the replay.
async fn raw_consume(kafka: &KafkaSettings, events: usize) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let settings = kafka.clone();
    let reader = tokio::task::spawn_blocking(move || {
        let reader = consumer::manual_consumer(&settings, "bench-raw-consume")?;
        let topics = event_log::Topics::new(&settings.topic_prefix).event_topics();
        let partitions = consumer::partitions(&reader, &topics, &settings)?;
        consumer::assign(&reader, &partitions.into_iter().map(|tp| (tp, 0)).collect())?;
        Ok::<_, event_log::LogError>(reader)
    })
    .await
    .context("the raw consumer's set-up panicked")?
    .context("Failed to assign the raw consumer")?;
    let mut stream = reader.stream();
    for _ in 0..events {
        tokio::time::timeout(Duration::from_mins(5), stream.next())
            .await
            .context("the raw consumer read nothing for 5 minutes")?
            .context("the raw consumer's stream ended")?
            .context("the raw consumer failed")?;
    }
    Ok(started.elapsed())
}

/// A start from a snapshot.
#[derive(Debug)]
struct SnapshotStart {
    built: Duration,
    ready: Duration,
    /// The snapshot file's size.
    bytes: u64,
    /// Records between the snapshot and the end of the log.
    backlog: i64,
}

/// Times the start of a replica that restores the snapshot at `path`.
async fn snapshot_start(
    kafka: &KafkaSettings,
    http: &reqwest::Client,
    path: &Path,
) -> anyhow::Result<SnapshotStart> {
    let bytes = std::fs::metadata(path)
        .with_context(|| format!("no snapshot was written to {}", path.display()))?
        .len();
    let restored = start_service(kafka, http, Some(path)).await?;
    if !restored.startup.restored_from_snapshot {
        bail!(
            "the command-service did not restore its snapshot {}",
            path.display()
        );
    }
    let start = SnapshotStart {
        built: restored.built,
        ready: restored.ready,
        bytes,
        backlog: restored.startup.backlog,
    };
    restored.stop().await?;
    Ok(start)
}

async fn register_facilities(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    count: usize,
) -> anyhow::Result<Vec<String>> {
    let mut ids = Vec::with_capacity(count);
    for _ in 0..count {
        let response = http
            .post(format!("{base}/facilities"))
            .bearer_auth(token)
            .json(&system_tests::bodies::facility())
            .send()
            .await
            .context("POST /facilities failed")?;
        let status = response.status();
        let body: Value = response
            .json()
            .await
            .context("POST /facilities answered no JSON")?;
        if status != StatusCode::CREATED {
            bail!("POST /facilities answered {status}: {body}");
        }
        ids.push(
            body["facility_id"]
                .as_str()
                .context("POST /facilities answered no facility_id")?
                .to_owned(),
        );
    }
    Ok(ids)
}

/// What one client measured: the latencies of its successes, and its failures (status, detail).
type ClientResult = (Vec<Duration>, Vec<(u16, String)>);

/// What one load run measured: the latencies of the successes, and every failure by kind.
struct Load {
    latencies: Vec<Duration>,
    elapsed: Duration,
    /// Status (0 for a transport error) → how many, and the first body or error.
    failures: BTreeMap<u16, (usize, String)>,
}

impl Load {
    fn collect(elapsed: Duration, results: Vec<ClientResult>) -> Self {
        let mut latencies = Vec::new();
        let mut failures: BTreeMap<u16, (usize, String)> = BTreeMap::new();
        for (ok, failed) in results {
            latencies.extend(ok);
            for (status, detail) in failed {
                failures.entry(status).or_insert((0, detail)).0 += 1;
            }
        }
        latencies.sort();
        Self {
            latencies,
            elapsed,
            failures,
        }
    }

    fn at(&self, q: f64) -> Duration {
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let index = ((self.latencies.len() as f64 * q) as usize)
            .min(self.latencies.len().saturating_sub(1));
        self.latencies.get(index).copied().unwrap_or_default()
    }

    #[allow(clippy::cast_precision_loss)] // Rates for people to read.
    fn rate(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }

    fn failed(&self) -> usize {
        self.failures.values().map(|(count, _)| count).sum()
    }

    fn describe(&self, unit: &str) -> String {
        format!(
            "{:.0} {unit}/s, p50 {:.2?}, p99 {:.2?}, max {:.2?} ({} in {:.2?})",
            self.rate(),
            self.at(0.50),
            self.at(0.99),
            self.latencies.last().copied().unwrap_or_default(),
            self.latencies.len(),
            self.elapsed,
        )
    }
}

/// `clients` concurrent clients send the prepared bodies, each taking the next one, until all
/// are sent.
async fn http_load(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    bodies: Arc<Vec<Vec<u8>>>,
    clients: usize,
) -> anyhow::Result<Load> {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (http, url, token, bodies, next) = (
                http.clone(),
                url.to_owned(),
                token.to_owned(),
                bodies.clone(),
                next.clone(),
            );
            tokio::spawn(async move {
                let mut ok = Vec::new();
                let mut failed = Vec::new();
                while let Some(body) = bodies.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let sent = Instant::now();
                    let response = http
                        .post(&url)
                        .bearer_auth(&token)
                        .header("content-type", "application/json")
                        .body(body.clone())
                        .send()
                        .await;
                    match response {
                        Ok(response) => {
                            let status = response.status();
                            let text = response.text().await.unwrap_or_default();
                            if status == StatusCode::ACCEPTED {
                                ok.push(sent.elapsed());
                            } else {
                                failed.push((status.as_u16(), text));
                            }
                        }
                        Err(error) => failed.push((0, error.to_string())),
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    let mut results = Vec::with_capacity(clients);
    for task in tasks {
        results.push(task.await.context("an HTTP client task panicked")?);
    }
    Ok(Load::collect(started.elapsed(), results))
}

/// A producer configured as `event_log::EventProducer` configures its own.
fn raw_producer(kafka: &KafkaSettings) -> anyhow::Result<FutureProducer> {
    ClientConfig::new()
        .set("bootstrap.servers", &kafka.brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "1")
        .set(
            "message.timeout.ms",
            kafka.delivery_timeout.as_millis().to_string(),
        )
        .create()
        .context("Failed to create the raw producer")
}

/// The four headers the service puts on every record, with values of the same length.
fn record_headers() -> OwnedHeaders {
    let (version, correlation, causation) = (
        "1".to_owned(),
        Uuid::new_v4().to_string(),
        Uuid::new_v4().to_string(),
    );
    OwnedHeaders::new()
        .insert(Header {
            key: headers::EVENT_TYPE,
            value: Some("BookingRequested"),
        })
        .insert(Header {
            key: headers::EVENT_VERSION,
            value: Some(version.as_str()),
        })
        .insert(Header {
            key: headers::CORRELATION_ID,
            value: Some(correlation.as_str()),
        })
        .insert(Header {
            key: headers::CAUSATION_ID,
            value: Some(causation.as_str()),
        })
}

type Waiting = Arc<Mutex<HashMap<Uuid, oneshot::Sender<()>>>>;

/// Reads `topic` from offset 0 and resolves the waiter of every record's key.
async fn read_back(
    kafka: &KafkaSettings,
    topic: &str,
) -> anyhow::Result<(Waiting, CancellationToken)> {
    let settings = KafkaSettings {
        fetch_wait: Duration::from_millis(10),
        ..kafka.clone()
    };
    let (reader, partitions) = {
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || {
            let reader = consumer::manual_consumer(&settings, "bench-read-back")?;
            let partitions = consumer::partitions(&reader, &[topic], &settings)?;
            consumer::assign(
                &reader,
                &partitions.iter().map(|tp| (tp.clone(), 0)).collect(),
            )?;
            Ok::<_, event_log::LogError>((reader, partitions))
        })
        .await
        .context("the read-back set-up panicked")?
        .context("Failed to assign the read-back consumer")?
    };
    eprintln!("read back: {} partitions of {topic}", partitions.len());
    let waiting: Waiting = Arc::default();
    let stop = CancellationToken::new();
    let (map, token) = (waiting.clone(), stop.clone());
    tokio::spawn(async move {
        let mut stream = reader.stream();
        loop {
            let message = tokio::select! {
                () = token.cancelled() => break,
                message = stream.next() => message,
            };
            let Some(Ok(message)) = message else { continue };
            let id = message
                .key()
                .and_then(|key| std::str::from_utf8(key).ok())
                .and_then(|key| key.parse::<Uuid>().ok());
            if let Some(id) = id {
                let waiter = map
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&id);
                if let Some(waiter) = waiter {
                    let _ = waiter.send(());
                }
            }
        }
    });
    Ok((waiting, stop))
}

/// `clients` tasks send `records` records of `payload` to `topic`, one in flight each; with
/// `waiting`, each send also waits until its record is read back.
async fn raw_load(
    producer: &FutureProducer,
    topic: &str,
    payload: Arc<Vec<u8>>,
    records: usize,
    clients: usize,
    waiting: Option<Waiting>,
) -> anyhow::Result<Load> {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (producer, topic, payload, next, waiting) = (
                producer.clone(),
                topic.to_owned(),
                payload.clone(),
                next.clone(),
                waiting.clone(),
            );
            tokio::spawn(async move {
                let mut ok = Vec::new();
                let mut failed = Vec::new();
                while next.fetch_add(1, Ordering::Relaxed) < records {
                    let id = Uuid::new_v4();
                    let key = id.to_string();
                    let read = waiting.as_ref().map(|waiting| {
                        let (sender, receiver) = oneshot::channel();
                        waiting
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .insert(id, sender);
                        receiver
                    });
                    let sent = Instant::now();
                    let record = FutureRecord::to(&topic)
                        .key(key.as_bytes())
                        .payload(payload.as_slice())
                        .headers(record_headers());
                    if let Err((error, _)) = producer.send(record, READ_BACK_TIMEOUT).await {
                        failed.push((0, format!("produce failed: {error}")));
                        continue;
                    }
                    if let Some(read) = read {
                        let read_back = tokio::time::timeout(READ_BACK_TIMEOUT, read).await;
                        if !matches!(read_back, Ok(Ok(()))) {
                            failed.push((1, "not read back within 10 s".to_owned()));
                            continue;
                        }
                    }
                    ok.push(sent.elapsed());
                }
                (ok, failed)
            })
        })
        .collect();
    let mut results = Vec::with_capacity(clients);
    for task in tasks {
        results.push(task.await.context("a raw producer task panicked")?);
    }
    Ok(Load::collect(started.elapsed(), results))
}

fn print_failures(what: &str, load: &Load) {
    if load.failures.is_empty() {
        eprintln!("{what}: no failures");
    }
    for (status, (count, first)) in &load.failures {
        println!(
            "{what}: {count} answers with status {status} (0 = transport error, 1 = not read back); first: {first}"
        );
    }
}

/// Raw produce + read back on fresh topics (after a warm-up of `clients` records).
async fn read_back_load(
    producer: &FutureProducer,
    payload: &Arc<Vec<u8>>,
    requests: usize,
    clients: usize,
) -> anyhow::Result<Load> {
    let back_kafka = system_tests::fresh_kafka().await?;
    let back_topic =
        event_log::Topics::new(&back_kafka.topic_prefix).events(AggregateType::Booking);
    let (waiting, stop_reading) = read_back(&back_kafka, &back_topic).await?;
    let warm = raw_load(
        producer,
        &back_topic,
        payload.clone(),
        clients,
        clients,
        Some(waiting.clone()),
    )
    .await?;
    print_failures("raw produce + read back warm-up", &warm);
    let back = raw_load(
        producer,
        &back_topic,
        payload.clone(),
        requests,
        clients,
        Some(waiting),
    )
    .await?;
    stop_reading.cancel();
    eprintln!("raw produce + read back: {}", back.describe("records"));
    print_failures("raw produce + read back", &back);
    Ok(back)
}

/// The three loads of one round, measured one after the other.
struct Round {
    http: Load,
    raw: Load,
    back: Load,
}

/// Steps 1 to 3: booking commands over HTTP on a fresh command-service, then raw produce and
/// raw produce + read back of records the size of the real one, each on fresh topics.
async fn one_round(
    http: &reqwest::Client,
    token: &str,
    payload: &Arc<Vec<u8>>,
    requests: usize,
    clients: usize,
    facility_count: usize,
    back_first: bool,
) -> anyhow::Result<Round> {
    // The broker slows down as its store grows, so rounds alternate which load goes first.
    let producer = raw_producer(&KafkaSettings {
        brokers: system_tests::required_env("FM_TEST_KAFKA_BROKERS")?,
        ..KafkaSettings::default()
    })?;
    let back = if back_first {
        Some(read_back_load(&producer, payload, requests, clients).await?)
    } else {
        None
    };
    // 1. Booking commands over HTTP.
    let kafka = system_tests::fresh_kafka().await?;
    let service = start_service(&kafka, http, None).await?;
    let base = service.base.clone();
    let facilities = register_facilities(http, &base, token, facility_count).await?;
    let body = |i: usize| -> anyhow::Result<Vec<u8>> {
        let days_ahead = i64::try_from(1 + (i / facility_count) % 365)?;
        let facility = &facilities[i % facility_count];
        Ok(serde_json::to_vec(&system_tests::bodies::booking(
            facility, days_ahead,
        ))?)
    };
    let warm_up = Arc::new((0..clients).map(body).collect::<anyhow::Result<Vec<_>>>()?);
    let bodies = Arc::new(
        (clients..clients + requests)
            .map(body)
            .collect::<anyhow::Result<Vec<_>>>()?,
    );
    let url = format!("{base}/bookings");
    let warm = http_load(http, &url, token, warm_up, clients).await?;
    print_failures("HTTP warm-up", &warm);
    let booking_load = http_load(http, &url, token, bodies, clients).await?;
    service.stop().await?;
    eprintln!("HTTP POST /bookings: {}", booking_load.describe("commands"));
    print_failures("HTTP POST /bookings", &booking_load);

    // 2. and 3. Raw produce, and raw produce + read back, of records the size of the real one.
    let raw_kafka = system_tests::fresh_kafka().await?;
    let raw_topic = event_log::Topics::new(&raw_kafka.topic_prefix).events(AggregateType::Booking);
    raw_load(
        &producer,
        &raw_topic,
        payload.clone(),
        clients,
        clients,
        None,
    )
    .await?;
    let raw = raw_load(
        &producer,
        &raw_topic,
        payload.clone(),
        requests,
        clients,
        None,
    )
    .await?;
    eprintln!("raw produce: {}", raw.describe("records"));
    print_failures("raw produce", &raw);

    let back = match back {
        Some(back) => back,
        None => read_back_load(&producer, payload, requests, clients).await?,
    };
    Ok(Round {
        http: booking_load,
        raw,
        back,
    })
}

#[tokio::main]
#[allow(clippy::too_many_lines)] // One run, step by step, as the header lists.
async fn main() -> anyhow::Result<()> {
    let requests = usize::try_from(arg("requests", 2000))?;
    let clients = usize::try_from(arg("clients", 32))?.max(1);
    let facility_count = usize::try_from(arg("facilities", 8))?.max(1);
    let history = usize::try_from(arg("history", requests as u64))?;
    let rounds_wanted = arg("rounds", 2).max(1);
    let http = reqwest::Client::new();
    let keys = TokenKeys::from_secret(&SecretString::from(system_tests::TEST_SECRET))?;
    let token = keys.mint(DIRECTOR, Role::Director, chrono::Duration::hours(1))?;

    let payload = Arc::new(serde_json::to_vec(&booking_requested()?)?);
    let mut rounds = Vec::new();
    for round in 1..=rounds_wanted {
        eprintln!("round {round} of {rounds_wanted}");
        rounds.push(
            one_round(
                &http,
                &token,
                &payload,
                requests,
                clients,
                facility_count,
                round % 2 == 0,
            )
            .await?,
        );
    }

    // 4. Start time against the size of the history: a plain replay of the whole log, then a
    //    start from a snapshot taken at the end of the log (written by a previous replica at
    //    its shutdown).
    let snapshots = std::env::temp_dir().join(format!("bench-write-{}", Uuid::new_v4().simple()));
    let mut starts = Vec::new();
    for events in [0, history, 10 * history] {
        let kafka = system_tests::fresh_kafka().await?;
        let seeding = Instant::now();
        seed(&EventProducer::new(&kafka)?, events).await?;
        eprintln!("seeded {events} events in {:.1?}", seeding.elapsed());
        let consumed = raw_consume(&kafka, events).await?;
        // The replica that replays keeps a snapshot (none exists yet, so it reads the whole log)
        // and writes it at its shutdown, at the end of the log.
        let snapshot = snapshots.join(format!("{events}.json"));
        let replay = start_service(&kafka, &http, Some(&snapshot)).await?;
        if replay.startup.restored_from_snapshot {
            bail!(
                "the first replica restored a snapshot: {}",
                snapshot.display()
            );
        }
        let (replay_built, replay_ready) = (replay.built, replay.ready);
        replay.stop().await?;
        // An empty log gives the snapshot writer nothing to write.
        let from_snapshot = if events == 0 {
            None
        } else {
            Some(snapshot_start(&kafka, &http, &snapshot).await?)
        };
        eprintln!(
            "{events} events: replay built in {replay_built:.2?}, ready in {replay_ready:.2?}; \
             raw consume {consumed:.2?}; from a snapshot: {from_snapshot:?}"
        );
        starts.push((events, consumed, replay_built, replay_ready, from_snapshot));
    }
    // Best effort: the directory holds only this run's snapshots.
    let _ = std::fs::remove_dir_all(&snapshots);

    // 5. The summary.
    let record_bytes = payload.len();
    println!("| Measure | Figure |");
    println!("|---|---|");
    for (index, round) in rounds.iter().enumerate() {
        let n = index + 1;
        println!(
            "| round {n}: HTTP `POST /bookings`, {clients} clients, {requests} requests, {facility_count} facilities | {} |",
            round.http.describe("commands")
        );
        println!("| round {n}: non-202 answers | {} |", round.http.failed());
        println!(
            "| round {n}: raw rdkafka produce, {record_bytes}-byte records, {clients} in flight | {} |",
            round.raw.describe("records")
        );
        println!(
            "| round {n}: raw produce + read back (consumer, fetch.wait.max.ms=10) | {} |",
            round.back.describe("records")
        );
        for (name, base) in [
            ("raw produce", &round.raw),
            ("raw produce + read back", &round.back),
        ] {
            println!(
                "| round {n}: HTTP ÷ {name} | throughput {:.2} x, p50 {:.1} x, p99 {:.1} x |",
                round.http.rate() / base.rate(),
                round.http.at(0.50).as_secs_f64() / base.at(0.50).as_secs_f64(),
                round.http.at(0.99).as_secs_f64() / base.at(0.99).as_secs_f64(),
            );
        }
    }
    println!();
    println!(
        "| Events in the log | Raw consume of the whole log | Replay: start (build + until /ready 200) | of which build | catch-up | From a snapshot at the log's end: start | of which build | snapshot size | records read after it |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (events, consumed, built, ready, from_snapshot) in starts {
        #[allow(clippy::cast_precision_loss)] // Rates for people to read.
        let catch_up = if events == 0 {
            "–".to_owned()
        } else {
            format!("{:.0} events/s", events as f64 / ready.as_secs_f64())
        };
        let snapshot = from_snapshot.map_or_else(
            || "– (nothing to snapshot) | – | – | –".to_owned(),
            |s| {
                format!(
                    "{:.2?} | {:.2?} | {} KiB | {}",
                    s.ready,
                    s.built,
                    s.bytes / 1024,
                    s.backlog
                )
            },
        );
        println!(
            "| {events} | {consumed:.2?} | {ready:.2?} | {built:.2?} | {catch_up} | {snapshot} |"
        );
    }
    Ok(())
}
