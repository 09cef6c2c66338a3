//! A release that changes the shape of the read models, rolled out without downtime: two builds
//! side by side, as separate processes. The **current** build (read-model version 4) and a
//! **next** build (the test-only feature `next-read-model`: version 5, a column and an index
//! more) of the projection-service and the query-api, on one log and one database:
//!
//! 1. the current projection-service and query-api answer;
//! 2. the next query-api starts first: not ready, and a query is refused (503), never answered
//!    from a version that is not built;
//! 3. the next projection-service starts beside the current one and builds version 5 from
//!    offset 0, while the current one keeps version 4 current;
//! 4. version 5 goes live, the next query-api turns ready and joins the clients' pool;
//! 5. the current query-api leaves the pool and stops, then the current projection-service;
//! 6. version 4 is dropped once no query-api reads it and the grace period has passed, not
//!    before.
//!
//! Clients poll throughout, each writing its own facility to the log and reading it back with
//! the write's consistency token from whichever query-api the pool gives it, and reading a
//! facility and a page that existed before. Every answer must be a full one: no error, no empty
//! answer, nothing older than the token presented; and each query-api answers in its own
//! release's shape (`name_key` only from the next one).

#![allow(clippy::unwrap_used)] // A test fails loudly on any unexpected error; that is the point.
#![allow(clippy::too_many_lines)] // One story, told in order.

mod read_side_support;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use event_log::{EventProducer, KafkaSettings};
use projection_service::versions;
use read_side_support::{append, eventually, facility_registered, register_facilities};
use reqwest::StatusCode;
use schemas::{AggregateType, Role};
use serde_json::Value;
use sqlx::PgPool;
use system_tests::{fresh_database, fresh_kafka, process::ServiceProcess};
use uuid::Uuid;

/// The two releases' read-model versions.
const CURRENT: i32 = 4;
const NEXT: i32 = 5;

/// Within one release the query-api reads the version its projection-service builds, and that
/// is the version this test rolls out from.
#[test]
fn the_query_api_reads_the_version_its_release_builds() {
    assert_eq!(
        query_api::read_model::VERSION,
        projection_service::READ_MODEL.version
    );
    assert_eq!(projection_service::READ_MODEL.version, CURRENT);
}
/// How long version 4 is kept once nothing reads it.
const GRACE: Duration = Duration::from_secs(6);

/// One query-api the clients may be sent to, as a load balancer knows it.
#[derive(Debug)]
struct Backend {
    name: &'static str,
    url: String,
    /// Requests in flight to it, so that it is stopped only once none is.
    in_flight: AtomicUsize,
    /// Full answers it gave.
    answered: AtomicUsize,
}

/// The load balancer: the query-apis that are ready and not draining.
#[derive(Debug, Default)]
struct Pool {
    backends: Mutex<Vec<Arc<Backend>>>,
    next: AtomicUsize,
}

impl Pool {
    fn add(&self, name: &'static str, url: &str) -> Arc<Backend> {
        let backend = Arc::new(Backend {
            name,
            url: url.to_owned(),
            in_flight: AtomicUsize::new(0),
            answered: AtomicUsize::new(0),
        });
        self.backends.lock().unwrap().push(backend.clone());
        backend
    }

    fn remove(&self, name: &str) {
        self.backends.lock().unwrap().retain(|b| b.name != name);
    }

    /// Round robin; the request counts as in flight from here.
    fn pick(&self) -> Arc<Backend> {
        let backends = self.backends.lock().unwrap();
        let backend = backends[self.next.fetch_add(1, Ordering::Relaxed) % backends.len()].clone();
        backend.in_flight.fetch_add(1, Ordering::SeqCst);
        backend
    }
}

/// The test stack's facts with this test's topics and database: what a process of either
/// release is started with (`stack::env` of its service), beside [`tuning`].
fn environment(kafka: &KafkaSettings, database_url: &str) -> stack::Facts {
    stack::Facts {
        database_url: Some(database_url.to_owned()),
        brokers: Some(kafka.brokers.clone()),
        topic_prefix: Some(kafka.topic_prefix.clone()),
        ..test_support::stack_facts()
    }
}

/// This test's own timings, on top of the stack's settings.
fn tuning() -> [(&'static str, String); 6] {
    [
        ("FM_PROJECTOR__SUPERVISE_INTERVAL", "200".to_owned()),
        ("FM_PROJECTOR__SWITCH_CHECK_INTERVAL", "100".to_owned()),
        ("FM_PROJECTOR__DROP_GRACE", GRACE.as_millis().to_string()),
        ("FM_READ_MODEL__HEARTBEAT_INTERVAL", "500".to_owned()),
        // A loaded machine may stall a process for seconds; a reader only expires when it
        // crashed, which this test does not do.
        ("FM_READ_MODEL__READER_EXPIRY", "30000".to_owned()),
        // The clients wait for their tokens; a slow machine needs the room.
        ("FM_CONSISTENCY__MAX_WAIT", "20000".to_owned()),
    ]
}

/// The binaries of both releases: the current build and the one with `next-read-model`.
async fn binaries() -> (PathBuf, PathBuf) {
    let build = |name: &'static str, features: &'static [&'static str]| {
        tokio::task::spawn_blocking(move || {
            test_support::variants::build_variant(
                name,
                &["projection-service", "query-api"],
                features,
            )
        })
    };
    let current = build("current", &[]).await.unwrap().unwrap();
    let next = build(
        "next-read-model",
        &[
            "projection-service/next-read-model",
            "query-api/next-read-model",
        ],
    )
    .await
    .unwrap()
    .unwrap();
    (current, next)
}

async fn start(
    name: &str,
    dir: &Path,
    binary: &str,
    facts: &stack::Facts,
    logs: &Path,
) -> ServiceProcess {
    let service = stack::Service::from_name(binary).expect("a service of the stack");
    let mut env = stack::env(facts, &stack::Instance::new(service, 0));
    env.extend(tuning().map(|(key, value)| (key.to_owned(), value)));
    ServiceProcess::start(name, &dir.join(binary), &env, logs)
        .await
        .unwrap()
}

/// Whether version `version` has a live build.
async fn is_live(pool: &PgPool, version: i32) -> bool {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM read_model_builds WHERE version = $1 AND state = 'live')",
    )
    .bind(version)
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn version_status(pool: &PgPool, version: i32) -> versions::VersionStatus {
    versions::status(pool)
        .await
        .unwrap()
        .into_iter()
        .find(|v| v.version == version)
        .unwrap()
}

/// What one client saw that was not a full answer, or was in the wrong shape.
type Failures = Vec<String>;

/// One client: until `stop`, writes a facility of its own, reads it back with the write's token,
/// and reads `probe` and the first page, each from the query-api the pool gives it.
async fn client(
    http: reqwest::Client,
    producer: EventProducer,
    pool: Arc<Pool>,
    token: String,
    probe: Uuid,
    stop: Arc<AtomicBool>,
) -> Failures {
    let mut failures = Failures::new();
    while !stop.load(Ordering::Relaxed) {
        let id = Uuid::new_v4();
        let consistency = append(
            &producer,
            AggregateType::Facility,
            id,
            1,
            &facility_registered(id),
        )
        .await;
        let reads = [
            (format!("/facilities/{id}"), Some(consistency)),
            (format!("/facilities/{probe}"), None),
            ("/facilities?limit=10".to_owned(), None),
        ];
        for (path, consistency) in reads {
            let backend = pool.pick();
            let mut request = http
                .get(format!("{}{path}", backend.url))
                .bearer_auth(&token);
            if let Some(consistency) = &consistency {
                request = request.header("consistency-token", consistency);
            }
            let answer = request.send().await;
            let outcome = match answer {
                Ok(response) => {
                    let status = response.status();
                    let body: Value = response.json().await.unwrap_or(Value::Null);
                    check(backend.name, &path, status, &body)
                }
                Err(error) => Err(format!("{path}: {error}")),
            };
            backend.in_flight.fetch_sub(1, Ordering::SeqCst);
            match outcome {
                Ok(()) => {
                    backend.answered.fetch_add(1, Ordering::Relaxed);
                }
                Err(failure) => failures.push(format!("{}: {failure}", backend.name)),
            }
        }
    }
    failures
}

/// A full answer in the shape of the release that gave it.
fn check(backend: &str, path: &str, status: StatusCode, body: &Value) -> Result<(), String> {
    if status != StatusCode::OK {
        return Err(format!("{path}: {status} {body}"));
    }
    let facilities: Vec<&Value> = match body["items"].as_array() {
        Some(items) if items.is_empty() => return Err(format!("{path}: an empty page")),
        Some(items) => items.iter().collect(),
        None => vec![body],
    };
    for facility in facilities {
        let name = facility["name"].as_str().unwrap_or_default();
        if name.is_empty() {
            return Err(format!("{path}: no facility in {body}"));
        }
        let key = facility.get("name_key");
        let shaped = match backend {
            "query-api next" => key.and_then(Value::as_str) == Some(name.to_lowercase().as_str()),
            _ => key.is_none(),
        };
        if !shaped {
            return Err(format!("{path}: not the shape of its release: {facility}"));
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_read_model_version_is_rolled_out_beside_the_old_one_without_a_failed_query() {
    let (current, next) = binaries().await;
    let kafka = fresh_kafka().await.unwrap();
    let database_url = fresh_database().await.unwrap();
    let env = environment(&kafka, &database_url);
    let logs = std::env::temp_dir().join(format!("fm-rollout-{}", Uuid::new_v4().simple()));
    let http = reqwest::Client::new();
    let db = PgPool::connect(&database_url).await.unwrap();
    let producer = EventProducer::new(&kafka).unwrap();
    let token = test_support::token(Role::Director, "director-1").await;

    // 1. The current release, with history to replay.
    let seeded = register_facilities(&producer, 2000).await;
    let probe = seeded[0];
    let mut projector_current = start(
        "projection-service current",
        &current,
        "projection-service",
        &env,
        &logs,
    )
    .await;
    let mut query_current = start("query-api current", &current, "query-api", &env, &logs).await;
    projector_current
        .wait_ready(&http, Duration::from_mins(2))
        .await
        .unwrap();
    query_current
        .wait_ready(&http, Duration::from_mins(3))
        .await
        .unwrap();
    assert!(is_live(&db, CURRENT).await);

    let pool = Arc::new(Pool::default());
    let current_backend = pool.add("query-api current", query_current.url());
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..3)
        .map(|_| {
            tokio::spawn(client(
                http.clone(),
                producer.clone(),
                pool.clone(),
                token.clone(),
                probe,
                stop.clone(),
            ))
        })
        .collect();

    // 2. The next query-api first: its version does not exist yet.
    let mut query_next = start("query-api next", &next, "query-api", &env, &logs).await;
    let ready: Value = http
        .get(format!("{}/ready", query_next.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["ready"], false, "{ready}");
    assert!(
        ready
            .to_string()
            .contains("read-model version 5 has no live build yet"),
        "{ready}"
    );
    let refused = http
        .get(format!("{}/facilities/{probe}", query_next.url()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(refused.headers().contains_key("retry-after"));
    let problem: Value = refused.json().await.unwrap();
    assert_eq!(
        problem["type"],
        "urn:funeral-manager:problem:read-model-unavailable"
    );

    // 3. The next projection-service beside the current one: it builds version 5 from offset 0.
    let mut projector_next = start(
        "projection-service next",
        &next,
        "projection-service",
        &env,
        &logs,
    )
    .await;
    projector_next
        .wait_ready(&http, Duration::from_mins(2))
        .await
        .unwrap();

    // 4. Version 3 goes live; its query-api turns ready and joins the pool.
    query_next
        .wait_ready(&http, Duration::from_mins(5))
        .await
        .unwrap();
    assert!(is_live(&db, NEXT).await);
    let next_backend = pool.add("query-api next", query_next.url());
    let both_answered = |current_from: usize, next_from: usize| {
        let (current_backend, next_backend) = (current_backend.clone(), next_backend.clone());
        move || {
            let answered = current_backend.answered.load(Ordering::Relaxed) >= current_from + 30
                && next_backend.answered.load(Ordering::Relaxed) >= next_from + 30;
            async move { answered }
        }
    };
    let current_from = current_backend.answered.load(Ordering::Relaxed);
    eventually(
        Duration::from_mins(3),
        "both query-apis answer side by side",
        both_answered(current_from, 0),
    )
    .await;
    let status = version_status(&db, CURRENT).await;
    assert_eq!(status.dropped_at, None);
    assert_eq!(
        status.drop_after, None,
        "version 4 is kept while a query-api reads it"
    );
    assert_eq!(status.readers.len(), 1, "{status:?}");

    // 5. The current query-api leaves the pool, drains and stops; then its projection-service.
    pool.remove("query-api current");
    eventually(
        Duration::from_mins(1),
        "no request is in flight to the current query-api",
        || {
            let idle = current_backend.in_flight.load(Ordering::SeqCst) == 0;
            async move { idle }
        },
    )
    .await;
    assert!(query_current.stop().await.unwrap().success());
    assert!(projector_current.stop().await.unwrap().success());

    // 6. Version 2 is dropped, not before the grace period after its last reader stopped.
    let announced = Arc::new(Mutex::new(None));
    eventually(Duration::from_mins(2), "version 4 is dropped", || {
        let (db, announced) = (db.clone(), announced.clone());
        async move {
            let status = version_status(&db, CURRENT).await;
            if status.dropped_at.is_none() && status.drop_after.is_some() {
                *announced.lock().unwrap() = status.drop_after;
            }
            status.dropped_at.is_some()
        }
    })
    .await;
    let announced = *announced.lock().unwrap();
    let status = version_status(&db, CURRENT).await;
    let (dropped_at, last_read_at) = (status.dropped_at.unwrap(), status.last_read_at.unwrap());
    assert!(
        announced.is_some(),
        "`fmctl projections status` showed when version 4 would drop before it did"
    );
    assert!(
        dropped_at >= last_read_at + chrono::Duration::from_std(GRACE).unwrap(),
        "dropped at {dropped_at}, last read at {last_read_at}: before the grace period"
    );
    assert!(status.builds.is_empty());
    for schema in [
        versions::views_schema(CURRENT),
        versions::build_schema(CURRENT, 1),
    ] {
        let exists: bool = sqlx::query_scalar("SELECT to_regnamespace($1) IS NOT NULL")
            .bind(&schema)
            .fetch_one(&db)
            .await
            .unwrap();
        assert!(!exists, "{schema} is dropped");
    }
    let next_status = version_status(&db, NEXT).await;
    assert_eq!(next_status.readers.len(), 1);
    assert_eq!(next_status.drop_after, None, "the newest version is kept");

    // The clients go on against the next release alone for a while, then stop.
    let next_from = next_backend.answered.load(Ordering::Relaxed);
    eventually(
        Duration::from_mins(1),
        "the next query-api answers alone",
        || {
            let answered = next_backend.answered.load(Ordering::Relaxed) >= next_from + 30;
            async move { answered }
        },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let mut failures: BTreeMap<usize, Failures> = BTreeMap::new();
    for (i, client) in clients.into_iter().enumerate() {
        failures.insert(i, client.await.unwrap());
    }
    assert!(
        failures.values().all(Vec::is_empty),
        "clients saw failures (logs in {}): {failures:?}",
        logs.display()
    );
    println!(
        "answers: current {}, next {}",
        current_backend.answered.load(Ordering::Relaxed),
        next_backend.answered.load(Ordering::Relaxed)
    );
    assert!(query_next.stop().await.unwrap().success());
    assert!(projector_next.stop().await.unwrap().success());
    let readers: i64 =
        sqlx::query_scalar("SELECT count(*) FROM read_model_readers WHERE stopped_at IS NULL")
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(readers, 0, "every query-api deregistered as it stopped");
}
