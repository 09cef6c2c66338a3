//! Rebuild without downtime, same shape: while the log is replayed into a new build of the
//! read-model version beside its live build and switched to, clients polling the query-api never
//! get an error or an empty answer, writes keep landing, and a consistency token taken during
//! the rebuild is honoured after the switch. (A change of shape: `read_model_rollout.rs`.)

#![allow(clippy::unwrap_used)] // A test fails loudly on any unexpected error; that is the point.
#![allow(clippy::too_many_lines)] // One story: seed, poll, write, rebuild, check.

mod read_side_support;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use event_log::EventProducer;
use projection_service::versions;
use read_side_support::{append, eventually, facility_registered, live_build, register_facilities};
use reqwest::StatusCode;
use schemas::{AggregateType, Role};
use serde_json::Value;
use sqlx::PgPool;
use system_tests::TestStack;
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queries_keep_answering_while_the_read_models_are_rebuilt_and_switched() {
    let stack = TestStack::spawn().await.expect("stack starts");
    let director = stack.token(Role::Director, "director-1").await;
    let producer = EventProducer::new(&stack.kafka).unwrap();
    let pool = PgPool::connect(&stack.database_url).await.unwrap();

    // History to replay.
    let seeded = register_facilities(&producer, 1500).await;
    let probe = seeded[0];
    eventually(Duration::from_mins(3), "the seed is projected", || async {
        let count: i64 = sqlx::query_scalar("SELECT count(*) FROM live.facilities")
            .fetch_one(&pool)
            .await
            .unwrap();
        count == 1500
    })
    .await;
    let before = live_build(&pool).await;

    // Clients poll one facility and the list, and record anything that is not a full answer.
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let mut pollers = Vec::new();
    for _ in 0..3 {
        let (http, url, director) = (
            stack.http.clone(),
            stack.query_url.clone(),
            director.clone(),
        );
        let (stop, answered) = (stop.clone(), answered.clone());
        pollers.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let one = http
                    .get(format!("{url}/facilities/{probe}"))
                    .bearer_auth(&director)
                    .send()
                    .await
                    .unwrap();
                if one.status() != StatusCode::OK {
                    failures.push(format!(
                        "GET one: {} {}",
                        one.status(),
                        one.text().await.unwrap()
                    ));
                    continue;
                }
                let list = http
                    .get(format!("{url}/facilities?limit=10"))
                    .bearer_auth(&director)
                    .send()
                    .await
                    .unwrap();
                let status = list.status();
                let page: Value = list.json().await.unwrap_or(Value::Null);
                if status != StatusCode::OK || page["items"].as_array().is_none_or(Vec::is_empty) {
                    failures.push(format!("GET list: {status} {page}"));
                    continue;
                }
                answered.fetch_add(1, Ordering::Relaxed);
            }
            failures
        }));
    }
    // Writes keep coming during the rebuild.
    let writer = {
        let producer = producer.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut written = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let id = Uuid::new_v4();
                let token = append(
                    &producer,
                    AggregateType::Facility,
                    id,
                    1,
                    &facility_registered(id),
                )
                .await;
                written.push((id, token));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            written
        })
    };

    let version = projection_service::READ_MODEL.version;
    let build = versions::request_rebuild(&pool, version, "rebuild-test")
        .await
        .unwrap()
        .build();
    assert!(build > before);
    eventually(
        Duration::from_mins(3),
        "the new build goes live",
        || async { live_build(&pool).await == build },
    )
    .await;
    eventually(
        Duration::from_mins(1),
        "the old build is dropped",
        || async {
            let state: String =
                sqlx::query_scalar("SELECT state FROM read_model_builds WHERE build = $1")
                    .bind(before)
                    .fetch_one(&pool)
                    .await
                    .unwrap();
            let schema_left: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM information_schema.schemata WHERE schema_name = $1)",
            )
            .bind(versions::build_schema(version, before))
            .fetch_one(&pool)
            .await
            .unwrap();
            state == "dropped" && !schema_left
        },
    )
    .await;
    // Keep polling a little on the new version, then stop everyone.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let written = writer.await.unwrap();
    for poller in pollers {
        let failures = poller.await.unwrap();
        assert!(failures.is_empty(), "clients saw failures: {failures:?}");
    }
    assert!(
        answered.load(Ordering::Relaxed) > 10,
        "the clients polled during the rebuild"
    );

    // Every write made during the rebuild is in the new version, and the last token is honoured.
    let (last_id, last_token) = written.last().unwrap().clone();
    let response = stack
        .http
        .get(format!("{}/facilities/{last_id}", stack.query_url))
        .bearer_auth(&director)
        .header("consistency-token", &last_token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM live.facilities")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(count, i64::try_from(1500 + written.len()).unwrap());
}
