//! The operators' commands, run as the real `fmctl` binary against the real broker and
//! PostgreSQL (`compose/test` sets `FM_TEST_KAFKA_BROKERS` and `FM_TEST_DATABASE_URL`). Each test
//! starts its own services on fresh topics and a fresh database (`system_tests::TestStack`).

#![allow(clippy::unwrap_used)] // A test fails loudly on any unexpected error; that is the point.
#![allow(clippy::too_many_lines)] // Each test is one story, told in order.

use platform::startup::Service as _;
use std::time::Duration;

use event_log::{EventProducer, KafkaSettings};
use platform::{
    settings::{DatabaseSettings, HttpSettings},
    shutdown::CancellationToken,
};
use rdkafka::message::OwnedHeaders;
use reqwest::StatusCode;
use schemas::Role;
use secrecy::SecretString;
use serde_json::{Value, json};
use system_tests::{TestStack, bodies, fresh_database};

/// What one run of `fmctl` left behind.
struct Run {
    status: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    /// Standard output as one JSON document per line.
    fn json_lines(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }
}

/// Runs `fmctl ARGS` configured for `kafka` (and `database_url`, for the commands that need it).
async fn fmctl(kafka: &KafkaSettings, database_url: Option<&str>, args: &[&str]) -> Run {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_fmctl"));
    command
        .args(args)
        .env("FM_KAFKA__BROKERS", &kafka.brokers)
        .env("FM_KAFKA__TOPIC_PREFIX", &kafka.topic_prefix)
        .envs(test_support::privacy_env())
        .env_remove("FM_DATABASE__URL");
    if let Some(url) = database_url {
        command.env("FM_DATABASE__URL", url);
    }
    let output = tokio::time::timeout(Duration::from_secs(90), command.output())
        .await
        .expect("fmctl finishes within 90 s")
        .unwrap();
    Run {
        status: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
    }
}

/// Registers a facility and requests a booking there; returns (facility id, booking response).
async fn facility_and_booking(stack: &TestStack) -> (String, Value) {
    let director = stack.token(Role::Director, "director-1").await;
    let response = stack
        .http
        .post(format!("{}/facilities", stack.command_url))
        .bearer_auth(&director)
        .json(&bodies::facility())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let facility: Value = response.json().await.unwrap();
    let facility_id = facility["facility_id"].as_str().unwrap().to_owned();
    let response = stack
        .http
        .post(format!("{}/bookings", stack.command_url))
        .bearer_auth(&director)
        .json(&bodies::booking(&facility_id, 14))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    (facility_id, response.json().await.unwrap())
}

#[tokio::test]
async fn tail_finds_a_known_event_by_aggregate_id_and_shows_an_invalid_record_with_its_violation() {
    let stack = TestStack::spawn().await.unwrap();
    let (_, booking) = facility_and_booking(&stack).await;
    let booking_id = booking["booking_id"].as_str().unwrap();

    let run = fmctl(
        &stack.kafka,
        None,
        &[
            "events",
            "tail",
            "--aggregate",
            booking_id,
            "--output",
            "json",
        ],
    )
    .await;
    assert_eq!(run.status, 0, "{}", run.stderr);
    let records = run.json_lines();
    assert_eq!(records.len(), 1, "{}", run.stdout);
    let record = &records[0];
    assert_eq!(record["valid"], true);
    assert_eq!(
        record["topic"],
        format!("{}.booking.events", stack.kafka.topic_prefix)
    );
    assert_eq!(record["event"]["event_type"], "BookingRequested");
    assert_eq!(record["event"]["aggregate_id"], booking_id);
    assert_eq!(record["event"]["sequence"], 1);
    // The consistency token names the record's position.
    let token = format!(
        "{}:{}:{}",
        record["topic"].as_str().unwrap(),
        record["partition"],
        record["offset"]
    );
    assert_eq!(booking["consistency_token"], token.as_str());

    // Pretty output names the event type and version (the registration is written at v2);
    // --limit stops early.
    let run = fmctl(&stack.kafka, None, &["events", "tail", "--limit", "1"]).await;
    assert_eq!(run.status, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains("FacilityRegistered v2 "),
        "{}",
        run.stdout
    );
    assert_eq!(
        run.stdout.lines().filter(|l| !l.starts_with(' ')).count(),
        1
    );

    // A record that breaks the contract is shown, with the violation, not skipped.
    let poison_key = uuid::Uuid::new_v4().to_string();
    let producer = EventProducer::new(&stack.kafka).unwrap();
    producer
        .send(
            &format!("{}.booking.events", stack.kafka.topic_prefix),
            Some(poison_key.as_bytes()),
            b"{not json",
            OwnedHeaders::new(),
        )
        .await
        .unwrap();
    let run = fmctl(
        &stack.kafka,
        None,
        &[
            "events",
            "tail",
            "--topic",
            "booking",
            "--aggregate",
            &poison_key,
            "--output",
            "json",
        ],
    )
    .await;
    assert_eq!(run.status, 0, "{}", run.stderr);
    let records = run.json_lines();
    assert_eq!(records.len(), 1, "{}", run.stdout);
    assert_eq!(records[0]["valid"], false);
    assert!(
        records[0]["violation"]
            .as_str()
            .unwrap()
            .starts_with("not a JSON document"),
        "{}",
        records[0]
    );
    assert_eq!(records[0]["raw"], "{not json");
}

#[tokio::test]
async fn history_shows_a_bookings_events_across_topics_in_time_order() {
    let stack = TestStack::spawn().await.unwrap();
    let (facility_id, booking) = facility_and_booking(&stack).await;
    let booking_id = booking["booking_id"].as_str().unwrap();
    // The saga's step, by hand: the facility holds the slot for the booking.
    let slot = bodies::booking(&facility_id, 14)["slot"].clone();
    let response = stack
        .http
        .post(format!(
            "{}/facilities/{facility_id}/reservations",
            stack.command_url
        ))
        .bearer_auth(stack.token(Role::System, "booking-saga").await)
        .json(&json!({"booking_id": booking_id, "slot": slot}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "{:?}",
        response.text().await
    );
    // Another booking's events must not show up.
    facility_and_booking(&stack).await;

    let run = fmctl(
        &stack.kafka,
        None,
        &[
            "events",
            "history",
            "--booking",
            booking_id,
            "--output",
            "json",
        ],
    )
    .await;
    assert_eq!(run.status, 0, "{}", run.stderr);
    let records = run.json_lines();
    let types: Vec<&str> = records
        .iter()
        .map(|r| r["event"]["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        ["BookingRequested", "SlotReserved"],
        "{}",
        run.stdout
    );
    assert_eq!(records[1]["event"]["aggregate_id"], facility_id.as_str());
    let times: Vec<&str> = records
        .iter()
        .map(|r| r["event"]["occurred_at"].as_str().unwrap())
        .collect();
    assert!(times[0] <= times[1]);
    // fmctl has the master keys (an operator's): the booking's people are shown opened.
    let opened = &records[0]["event"]["data"]["personal"]["opened"];
    assert_eq!(
        opened["deceased_full_name"], "Ada Lovelace",
        "{}",
        run.stdout
    );
    assert_eq!(opened["family_contacts"][0]["email"], "byron@example.org");

    // By correlation id: the booking's own flow.
    let correlation = records[0]["event"]["correlation_id"].as_str().unwrap();
    let run = fmctl(
        &stack.kafka,
        None,
        &["events", "history", "--correlation", correlation],
    )
    .await;
    assert_eq!(run.status, 0, "{}", run.stderr);
    assert!(run.stdout.contains("BookingRequested v3"), "{}", run.stdout);

    // Erased: fmctl shows `erased`, and the erasure as an event of the booking.
    let response = stack
        .http
        .post(format!("{}/bookings/{booking_id}/erase", stack.command_url))
        .bearer_auth(stack.token(Role::Ops, "ops-1").await)
        .json(&json!({"reason": "the family asked"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let run = fmctl(
        &stack.kafka,
        None,
        &[
            "events",
            "history",
            "--booking",
            booking_id,
            "--output",
            "json",
        ],
    )
    .await;
    let records = run.json_lines();
    assert_eq!(
        records[0]["event"]["data"]["personal"], "erased",
        "{}",
        run.stdout
    );
    assert!(
        records
            .iter()
            .any(|r| r["event"]["event_type"] == "PersonalDataErased"),
        "{}",
        run.stdout
    );
    assert!(!run.stdout.contains("byron@example.org"), "{}", run.stdout);

    // An id nobody wrote: one sentence, non-zero.
    let unknown = uuid::Uuid::new_v4().to_string();
    let run = fmctl(
        &stack.kafka,
        None,
        &["events", "history", "--booking", &unknown],
    )
    .await;
    assert_eq!(run.status, 1);
    assert!(
        run.stderr.starts_with("fmctl: no record of booking"),
        "{}",
        run.stderr
    );
    let run = fmctl(
        &stack.kafka,
        None,
        &["events", "history", "--booking", "B-42"],
    )
    .await;
    assert_eq!(run.status, 2, "a malformed id is a usage error");
}

/// The live version's total lag, as `fmctl lag --output json` reports it.
async fn total_lag(kafka: &KafkaSettings, database_url: &str) -> u64 {
    let run = fmctl(kafka, Some(database_url), &["lag", "--output", "json"]).await;
    assert_eq!(run.status, 0, "{}", run.stderr);
    let report: Value = serde_json::from_str(run.stdout.trim()).unwrap();
    report["total_lag"].as_u64().unwrap()
}

#[tokio::test]
async fn lag_is_the_backlog_of_a_projector_that_is_not_running_and_drops_to_zero_once_it_runs() {
    let stack = TestStack::spawn().await.unwrap();
    facility_and_booking(&stack).await;

    // A second read-model database on the same log, whose projector has not started yet.
    let database_url = fresh_database().await.unwrap();
    let settings = projection_service::Settings {
        http: HttpSettings::on_port(0),
        kafka: stack.kafka.clone(),
        database: DatabaseSettings {
            url: SecretString::from(database_url.clone()),
            ..DatabaseSettings::default()
        },
        privacy: Some(test_support::privacy_settings()),
        ..projection_service::Settings::default()
    };
    projection_service::startup::migrate(&settings)
        .await
        .unwrap();
    // Its version's first build, switched live by hand (as if it had caught up before a pause).
    let pool = sqlx::PgPool::connect(&database_url).await.unwrap();
    let model = projection_service::READ_MODEL;
    let build = projection_service::versions::declare(&pool, &model, "test")
        .await
        .unwrap()[0]
        .build;
    projection_service::versions::ensure_build_schema(&pool, &model, build)
        .await
        .unwrap();
    projection_service::versions::try_switch(&pool, &model, build)
        .await
        .unwrap();

    assert_eq!(total_lag(&stack.kafka, &database_url).await, 2);
    let run = fmctl(&stack.kafka, Some(&database_url), &["lag"]).await;
    assert_eq!(run.status, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains(&format!(
            "read models v{} build {build} (live): 2 records behind",
            model.version
        )),
        "{}",
        run.stdout
    );
    let run = fmctl(
        &stack.kafka,
        Some(&database_url),
        &["lag", "--fail-over", "1"],
    )
    .await;
    assert_eq!(run.status, 1);
    assert!(
        run.stderr.contains("2 records behind, over --fail-over 1"),
        "{}",
        run.stderr
    );
    let run = fmctl(
        &stack.kafka,
        Some(&database_url),
        &["lag", "--fail-over", "2"],
    )
    .await;
    assert_eq!(run.status, 0, "{}", run.stderr);

    // The projector starts and catches up.
    let shutdown = CancellationToken::new();
    let app = projection_service::Application::build(settings, shutdown.clone())
        .await
        .unwrap();
    let running = tokio::spawn(app.run_until_stopped());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while total_lag(&stack.kafka, &database_url).await != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the projector did not catch up within 90 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let run = fmctl(
        &stack.kafka,
        Some(&database_url),
        &["lag", "--fail-over", "0"],
    )
    .await;
    assert_eq!(run.status, 0, "{}", run.stderr);
    shutdown.cancel();
    running.await.unwrap().unwrap();
}

#[tokio::test]
async fn topics_list_shows_every_topic_with_its_partitions_and_record_counts() {
    let stack = TestStack::spawn().await.unwrap();
    facility_and_booking(&stack).await;

    let run = fmctl(&stack.kafka, None, &["topics", "list", "--output", "json"]).await;
    assert_eq!(run.status, 0, "{}", run.stderr);
    let topics = run.json_lines();
    let prefix = &stack.kafka.topic_prefix;
    let names: Vec<&str> = topics
        .iter()
        .map(|t| t["topic"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            format!("{prefix}.facility.events"),
            format!("{prefix}.booking.events"),
            format!("{prefix}.payment.events"),
            format!("{prefix}.saga.events"),
            format!("{prefix}.dead-letter"),
        ]
    );
    let records: Vec<i64> = topics
        .iter()
        .map(|t| t["records"].as_i64().unwrap())
        .collect();
    assert_eq!(records, [1, 1, 0, 0, 0]);
    assert_eq!(
        topics[0]["partitions"].as_array().unwrap().len(),
        usize::try_from(stack.kafka.partitions).unwrap()
    );

    let run = fmctl(&stack.kafka, None, &["topics", "list"]).await;
    assert_eq!(run.status, 0, "{}", run.stderr);
    assert!(run.stdout.starts_with("TOPIC"), "{}", run.stdout);
}

#[tokio::test]
async fn errors_are_one_sentence_on_stderr_with_a_non_zero_status() {
    let missing = KafkaSettings {
        brokers: system_tests::required_env("FM_TEST_KAFKA_BROKERS").unwrap(),
        topic_prefix: format!("absent-{}", uuid::Uuid::new_v4().simple()),
        ..KafkaSettings::default()
    };
    let run = fmctl(&missing, None, &["events", "tail", "--topic", "payment"]).await;
    assert_eq!(run.status, 1);
    assert!(
        run.stderr.starts_with(&format!(
            "fmctl: topic {}.payment.events does not exist",
            missing.topic_prefix
        )),
        "{}",
        run.stderr
    );
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);

    let unreachable = KafkaSettings {
        // Port 1 on loopback: nothing listens, the connection is refused at once.
        brokers: "127.0.0.1:1".to_owned(),
        ..missing.clone()
    };
    let run = fmctl(&unreachable, None, &["topics", "list"]).await;
    assert_eq!(run.status, 1);
    assert!(
        run.stderr
            .starts_with("fmctl: Failed to reach the broker at 127.0.0.1:1"),
        "{}",
        run.stderr
    );
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);

    let run = fmctl(&missing, None, &["events", "tail", "--topic", "invoices"]).await;
    assert_eq!(run.status, 2, "an unknown topic name is a usage error");

    let run = fmctl(&missing, None, &["lag"]).await;
    assert_eq!(run.status, 1);
    assert_eq!(run.stderr.trim(), "fmctl: FM_DATABASE__URL is not set");
}

/// Waits until the live read models have applied everything in the log (`fmctl lag` says 0).
async fn wait_projected(kafka: &KafkaSettings, database_url: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_mins(1);
    while total_lag(kafka, database_url).await != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the projector did not catch up within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn lag_shows_the_saga_beside_the_read_models_once_its_offsets_table_exists() {
    let stack = TestStack::spawn().await.unwrap();
    facility_and_booking(&stack).await;
    wait_projected(&stack.kafka, &stack.database_url).await;

    // No saga runner deployed yet: said so, and nothing fails.
    let run = fmctl(&stack.kafka, Some(&stack.database_url), &["lag"]).await;
    assert_eq!(run.status, 0, "{}", run.stderr);
    assert!(
        run.stdout
            .contains("booking saga: not deployed (no saga.offsets table)"),
        "{}",
        run.stdout
    );
    let run = fmctl(
        &stack.kafka,
        Some(&stack.database_url),
        &["lag", "--output", "json"],
    )
    .await;
    let report: Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(report["saga"], Value::Null);

    // The saga runner's table (as saga-runner/migrations creates it), with nothing read yet.
    let pool = sqlx::PgPool::connect(&stack.database_url).await.unwrap();
    for statement in [
        "CREATE SCHEMA saga",
        "CREATE TABLE saga.offsets (topic TEXT NOT NULL, partition INTEGER NOT NULL, \
         next_offset BIGINT NOT NULL, PRIMARY KEY (topic, partition))",
    ] {
        sqlx::query(statement).execute(&pool).await.unwrap();
    }
    let run = fmctl(
        &stack.kafka,
        Some(&stack.database_url),
        &["lag", "--output", "json"],
    )
    .await;
    assert_eq!(run.status, 0, "{}", run.stderr);
    let report: Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(report["total_lag"], 0, "{report}");
    assert_eq!(report["saga"]["total_lag"], 2, "{report}");
    let partitions = report["saga"]["partitions"].as_array().unwrap();
    assert_eq!(
        partitions.len(),
        usize::try_from(stack.kafka.partitions * 4).unwrap()
    );
    let run = fmctl(
        &stack.kafka,
        Some(&stack.database_url),
        &["lag", "--fail-over", "1"],
    )
    .await;
    assert_eq!(run.status, 1);
    assert!(
        run.stderr
            .contains("the booking saga is 2 records behind, over --fail-over 1"),
        "{}",
        run.stderr
    );

    // The saga reads up to the end of every partition: no lag.
    for partition in partitions {
        sqlx::query("INSERT INTO saga.offsets (topic, partition, next_offset) VALUES ($1, $2, $3)")
            .bind(partition["topic"].as_str().unwrap())
            .bind(i32::try_from(partition["partition"].as_i64().unwrap()).unwrap())
            .bind(partition["end_offset"].as_i64().unwrap())
            .execute(&pool)
            .await
            .unwrap();
    }
    let run = fmctl(
        &stack.kafka,
        Some(&stack.database_url),
        &["lag", "--fail-over", "0"],
    )
    .await;
    assert_eq!(run.status, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains("booking saga: 0 records behind"),
        "{}",
        run.stdout
    );
    assert_eq!(
        run.stdout
            .lines()
            .filter(|l| l.starts_with("saga "))
            .count(),
        partitions.len(),
        "{}",
        run.stdout
    );
}

/// Sends raw bytes to the deployment's booking topic; returns (partition, offset).
async fn poison(stack: &TestStack, key: &str, payload: &[u8]) -> (i32, i64) {
    poison_on(stack, "booking", key, payload).await
}

/// Sends raw bytes to one of the deployment's event topics; returns (partition, offset).
async fn poison_on(stack: &TestStack, aggregate: &str, key: &str, payload: &[u8]) -> (i32, i64) {
    let producer = EventProducer::new(&stack.kafka).unwrap();
    let landed = producer
        .send(
            &format!("{}.{aggregate}.events", stack.kafka.topic_prefix),
            Some(key.as_bytes()),
            payload,
            OwnedHeaders::new(),
        )
        .await
        .unwrap();
    (landed.partition, landed.offset)
}

#[tokio::test]
async fn dead_letters_are_listed_with_origin_and_reason_and_shown_with_the_payload_decoded() {
    let stack = TestStack::spawn().await.unwrap();
    let (facility_id, _) = facility_and_booking(&stack).await;
    let run = fmctl(
        &stack.kafka,
        None,
        &["events", "tail", "--topic", "booking", "--output", "json"],
    )
    .await;
    let requested = run.json_lines()[0]["event"].clone();

    // Four records every reader refuses: one breaks a value rule, one is not JSON, one is a
    // valid facility event on the booking topic (valid by itself, but a retry would put it on
    // the booking topic again), and one passes every schema but does not decode (a time zone
    // that does not exist), the poison of issue 14.
    let mut bad_email = requested.clone();
    let bad_id = uuid::Uuid::new_v4().to_string();
    bad_email["aggregate_id"] = json!(bad_id);
    bad_email["event_id"] = json!(uuid::Uuid::new_v4());
    bad_email["data"]["booking_id"] = json!(bad_id);
    bad_email["data"]["date_of_death"] = json!("not-a-date");
    let bad_origin = poison(&stack, &bad_id, &serde_json::to_vec(&bad_email).unwrap()).await;
    let junk_key = uuid::Uuid::new_v4().to_string();
    let junk_origin = poison(&stack, &junk_key, b"\x00not json at all").await;
    let run = fmctl(
        &stack.kafka,
        None,
        &["events", "tail", "--topic", "facility", "--output", "json"],
    )
    .await;
    let registered = run.json_lines()[0]["event"].clone();
    let misplaced_origin = poison(
        &stack,
        &facility_id,
        &serde_json::to_vec(&registered).unwrap(),
    )
    .await;
    let mut on_mars = registered.clone();
    let mars_id = uuid::Uuid::new_v4().to_string();
    on_mars["aggregate_id"] = json!(mars_id);
    on_mars["event_id"] = json!(uuid::Uuid::new_v4());
    on_mars["data"]["facility_id"] = json!(mars_id);
    on_mars["data"]["time_zone"] = json!("Mars/Olympus_Mons");
    let mars_origin = poison_on(
        &stack,
        "facility",
        &mars_id,
        &serde_json::to_vec(&on_mars).unwrap(),
    )
    .await;

    let deadline = tokio::time::Instant::now() + Duration::from_mins(1);
    let letters = loop {
        let run = fmctl(
            &stack.kafka,
            None,
            &["dead-letters", "list", "--output", "json"],
        )
        .await;
        assert_eq!(run.status, 0, "{}", run.stderr);
        let letters = run.json_lines();
        if letters.len() >= 4 {
            break letters;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "4 dead letters did not appear within 60 s: {}",
            run.stdout
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(letters.len(), 4, "{letters:?}");
    let of = |key: &str| {
        letters
            .iter()
            .find(|l| l["key"] == key)
            .unwrap_or_else(|| panic!("no dead letter keyed {key}: {letters:?}"))
            .clone()
    };
    let booking_topic = format!("{}.booking.events", stack.kafka.topic_prefix);
    let facility_topic = format!("{}.facility.events", stack.kafka.topic_prefix);
    for (key, (partition, offset), topic, reason) in [
        (
            bad_id.as_str(),
            bad_origin,
            &booking_topic,
            "BookingRequested v3 payload invalid at '/date_of_death'",
        ),
        (
            junk_key.as_str(),
            junk_origin,
            &booking_topic,
            "not a JSON document",
        ),
        (
            facility_id.as_str(),
            misplaced_origin,
            &booking_topic,
            "a facility event on topic",
        ),
        (
            mars_id.as_str(),
            mars_origin,
            &facility_topic,
            "FacilityRegistered v2",
        ),
    ] {
        let letter = of(key);
        assert_eq!(letter["origin"]["topic"], topic.as_str());
        assert_eq!(letter["reader"], "projection-service", "{letter}");
        assert_eq!(letter["origin"]["partition"], partition);
        assert_eq!(letter["origin"]["offset"], offset);
        assert!(
            letter["reason"].as_str().unwrap().starts_with(reason),
            "{letter}"
        );
        assert!(letter["timestamp"].is_string(), "{letter}");
    }

    let run = fmctl(&stack.kafka, None, &["dead-letters", "list"]).await;
    assert_eq!(run.status, 0, "{}", run.stderr);
    assert!(run.stdout.starts_with("PARTITION"), "{}", run.stdout);
    assert!(
        run.stdout.contains(&format!(
            "4 dead letters in {}.dead-letter",
            stack.kafka.topic_prefix
        )),
        "{}",
        run.stdout
    );

    // show: the payload decoded, and whether today's contract accepts it.
    let position = |letter: &Value| {
        (
            letter["partition"].as_i64().unwrap().to_string(),
            letter["offset"].as_i64().unwrap().to_string(),
        )
    };
    let (partition, offset) = position(&of(&bad_id));
    let run = fmctl(
        &stack.kafka,
        None,
        &[
            "dead-letters",
            "show",
            "--partition",
            &partition,
            "--offset",
            &offset,
            "--output",
            "json",
        ],
    )
    .await;
    assert_eq!(run.status, 0, "{}", run.stderr);
    let shown: Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(shown["payload"]["data"]["date_of_death"], "not-a-date");
    assert_eq!(shown["valid_now"], false);
    assert!(
        shown["violation_now"]
            .as_str()
            .unwrap()
            .contains("date_of_death"),
        "{shown}"
    );
    let run = fmctl(
        &stack.kafka,
        None,
        &[
            "dead-letters",
            "show",
            "--partition",
            &partition,
            "--offset",
            &offset,
        ],
    )
    .await;
    assert_eq!(run.status, 0, "{}", run.stderr);
    assert!(run.stdout.contains("still invalid"), "{}", run.stdout);
    assert!(
        run.stdout.contains(&format!(
            "fmctl dead-letters retry --partition {partition} --offset {offset}"
        )),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("\"not-a-date\""), "{}", run.stdout);

    let (partition, offset) = position(&of(&facility_id));
    let run = fmctl(
        &stack.kafka,
        None,
        &[
            "dead-letters",
            "show",
            "--partition",
            &partition,
            "--offset",
            &offset,
        ],
    )
    .await;
    assert_eq!(run.status, 0, "{}", run.stderr);
    // Valid by itself, but a retry would append it to the booking topic again.
    assert!(
        run.stdout.contains("on the wrong topic: a facility event"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("refused by   projection-service"),
        "{}",
        run.stdout
    );

    // Passes its schemas, but no reader can decode it: `show` says a retry would fail again.
    let (partition, offset) = position(&of(&mars_id));
    let run = fmctl(
        &stack.kafka,
        None,
        &[
            "dead-letters",
            "show",
            "--partition",
            &partition,
            "--offset",
            &offset,
            "--output",
            "json",
        ],
    )
    .await;
    assert_eq!(run.status, 0, "{}", run.stderr);
    let shown: Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(shown["valid_now"], false, "{shown}");
    assert_eq!(shown["retry_would"], "fail_again", "{shown}");
    assert!(
        shown["violation_now"]
            .as_str()
            .unwrap()
            .contains("FacilityRegistered"),
        "{shown}"
    );

    let (partition, offset) = position(&of(&junk_key));
    let run = fmctl(
        &stack.kafka,
        None,
        &[
            "dead-letters",
            "show",
            "--partition",
            &partition,
            "--offset",
            &offset,
            "--output",
            "json",
        ],
    )
    .await;
    assert_eq!(run.status, 0, "{}", run.stderr);
    let shown: Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(shown["payload"], "\u{0}not json at all");

    // retry goes through the same command group.
    let run = fmctl(
        &stack.kafka,
        None,
        &[
            "dead-letters",
            "retry",
            "--partition",
            &partition,
            "--offset",
            &offset,
        ],
    )
    .await;
    assert_eq!(run.status, 0, "{}", run.stderr);
    assert!(
        run.stdout
            .contains(&format!("appended to {booking_topic}:")),
        "{}",
        run.stdout
    );

    // A place that holds nothing: one sentence, status 1.
    let run = fmctl(
        &stack.kafka,
        None,
        &[
            "dead-letters",
            "show",
            "--partition",
            "0",
            "--offset",
            "999",
        ],
    )
    .await;
    assert_eq!(run.status, 1);
    assert!(
        run.stderr
            .starts_with("fmctl: no dead letter at offset 999 of partition 0"),
        "{}",
        run.stderr
    );
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
}

/// `fmctl projections status --output json`.
async fn projections_status(stack: &TestStack) -> Vec<Value> {
    let run = fmctl(
        &stack.kafka,
        Some(&stack.database_url),
        &["projections", "status", "--output", "json"],
    )
    .await;
    assert_eq!(run.status, 0, "{}", run.stderr);
    let report: Value = serde_json::from_str(run.stdout.trim()).unwrap();
    report["versions"].as_array().unwrap().clone()
}

#[tokio::test]
async fn projections_rebuild_builds_the_version_in_use_again_beside_itself_and_status_follows() {
    let stack = TestStack::spawn().await.unwrap();
    let (facility_id, _) = facility_and_booking(&stack).await;
    wait_projected(&stack.kafka, &stack.database_url).await;
    let version = i64::from(projection_service::READ_MODEL.version);

    // One version, its first build live and projected, read by the stack's query-api.
    let versions = projections_status(&stack).await;
    assert_eq!(versions.len(), 1, "{versions:?}");
    let current = &versions[0];
    assert_eq!(current["version"], version);
    assert_eq!(current["state"], "live");
    assert_eq!(current["readers"].as_array().unwrap().len(), 1, "{current}");
    assert_eq!(current["drop_after"], Value::Null, "{current}");
    let builds = current["builds"].as_array().unwrap();
    assert_eq!(builds.len(), 1, "{current}");
    assert_eq!(builds[0]["build"], 1);
    assert_eq!(builds[0]["state"], "live");
    assert_eq!(builds[0]["projected"], true);
    assert_eq!(builds[0]["records_read"], 2);
    assert_eq!(builds[0]["records_in_log"], 2);

    // A same-shape rebuild: a second build beside the first, switched, the first dropped.
    let run = fmctl(
        &stack.kafka,
        Some(&stack.database_url),
        &["projections", "rebuild", "--timeout-secs", "120"],
    )
    .await;
    assert_eq!(run.status, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains(&format!(
            "rebuilding read-model version {version} as build 2 (read_v{version}_b2) beside live build 1"
        )),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains(&format!(
            "read-model version {version} answers from build 2"
        )),
        "{}",
        run.stdout
    );
    let versions = projections_status(&stack).await;
    let builds = versions[0]["builds"].as_array().unwrap();
    assert_eq!(builds.len(), 1, "{versions:?}");
    assert_eq!(builds[0]["build"], 2);
    assert_eq!(builds[0]["state"], "live");
    assert_eq!(builds[0]["records_read"], 2);
    let director = stack.token(Role::Director, "director-1").await;
    let answer = stack
        .http
        .get(format!("{}/facilities/{facility_id}", stack.query_url))
        .bearer_auth(&director)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK, "the rebuilt build answers");

    // A version nobody declared is refused with a sentence.
    let run = fmctl(
        &stack.kafka,
        Some(&stack.database_url),
        &["projections", "rebuild", "--version", "9"],
    )
    .await;
    assert_eq!(run.status, 1);
    assert_eq!(
        run.stderr.trim(),
        "fmctl: read-model version 9 has never been declared by a projection-service"
    );

    // While two versions are in use (a rollout), it does not guess which to rebuild.
    let pool = sqlx::PgPool::connect(&stack.database_url).await.unwrap();
    sqlx::query("INSERT INTO read_model_versions (version) VALUES ($1)")
        .bind(version + 1)
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO read_model_builds (version, state, requested_by) VALUES ($1, 'building', 'test')",
    )
    .bind(version + 1)
    .execute(&pool)
    .await
    .unwrap();
    let run = fmctl(
        &stack.kafka,
        Some(&stack.database_url),
        &["projections", "rebuild"],
    )
    .await;
    assert_eq!(run.status, 1);
    assert_eq!(
        run.stderr.trim(),
        format!(
            "fmctl: several read-model versions are in use ({}, {version}): say which to rebuild with --version",
            version + 1
        )
    );
    let run = fmctl(
        &stack.kafka,
        Some(&stack.database_url),
        &["projections", "status"],
    )
    .await;
    assert_eq!(run.status, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains(&format!("v{} building\n", version + 1)),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("projector: none holds its lock"),
        "nobody projects the other version here: {}",
        run.stdout
    );
    assert!(
        run.stdout.contains("readers: 1 query-api(s) running"),
        "{}",
        run.stdout
    );

    // No legacy layout on a database that never had one.
    let run = fmctl(
        &stack.kafka,
        Some(&stack.database_url),
        &["projections", "drop-legacy"],
    )
    .await;
    assert_eq!(run.status, 1);
    assert_eq!(
        run.stderr.trim(),
        "fmctl: there is no legacy layout (projection_versions) in this database"
    );
}

#[tokio::test]
async fn projections_parked_lists_an_aggregate_whose_event_version_this_release_does_not_know() {
    let stack = TestStack::spawn().await.unwrap();
    facility_and_booking(&stack).await;
    let run = fmctl(
        &stack.kafka,
        None,
        &["events", "tail", "--topic", "facility", "--output", "json"],
    )
    .await;
    let registered = run.json_lines()[0]["event"].clone();
    // A registration as a later release would write it: a version this one does not know.
    let mut later = registered.clone();
    let id = uuid::Uuid::new_v4().to_string();
    later["aggregate_id"] = json!(id);
    later["event_id"] = json!(uuid::Uuid::new_v4());
    later["data"]["facility_id"] = json!(id);
    later["event_version"] = json!(9);
    poison_on(
        &stack,
        "facility",
        &id,
        &serde_json::to_vec(&later).unwrap(),
    )
    .await;
    // Parked, not holding the projector back: its offset is committed with the batch.
    wait_projected(&stack.kafka, &stack.database_url).await;

    let run = fmctl(
        &stack.kafka,
        Some(&stack.database_url),
        &["projections", "parked", "--output", "json"],
    )
    .await;
    assert_eq!(run.status, 0, "{}", run.stderr);
    let report: Value = serde_json::from_str(run.stdout.trim()).unwrap();
    let builds = report["builds"].as_array().unwrap();
    assert_eq!(builds.len(), 1, "{report}");
    let parked = builds[0]["parked"].as_array().unwrap();
    assert_eq!(parked.len(), 1, "{report}");
    assert_eq!(parked[0]["aggregate_id"], json!(id));
    assert_eq!(parked[0]["aggregate_type"], "facility");
    assert_eq!(parked[0]["event_version"], 9);
    assert_eq!(parked[0]["records"], 1);
    assert!(
        parked[0]["reason"]
            .as_str()
            .unwrap()
            .contains("unknown event FacilityRegistered v9"),
        "{report}"
    );

    let run = fmctl(
        &stack.kafka,
        Some(&stack.database_url),
        &["projections", "parked"],
    )
    .await;
    assert_eq!(run.status, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains("1 aggregates parked") && run.stdout.contains(&id),
        "{}",
        run.stdout
    );
}

/// One record as a topic holds it: key, payload, headers.
type Raw = (Option<Vec<u8>>, Vec<u8>, Vec<(String, Vec<u8>)>);

/// Every record of `topics`, by (topic, partition), in order.
async fn read_raw(
    kafka: &KafkaSettings,
    topics: &[String],
) -> std::collections::BTreeMap<(String, i32), Vec<Raw>> {
    use futures::StreamExt as _;
    use rdkafka::message::{Headers as _, Message as _};
    let reader = event_log::consumer::manual_consumer(kafka, "cli-test-raw").unwrap();
    let partitions = event_log::consumer::partitions(&reader, topics, kafka).unwrap();
    let marks = event_log::consumer::watermarks(&reader, &partitions, kafka).unwrap();
    let mut all: std::collections::BTreeMap<(String, i32), Vec<Raw>> =
        marks.keys().map(|tp| (tp.clone(), Vec::new())).collect();
    let mut pending: std::collections::BTreeMap<_, _> = marks
        .iter()
        .filter(|(_, (low, high))| low < high)
        .map(|(tp, (_, high))| (tp.clone(), *high))
        .collect();
    let starts = marks
        .iter()
        .map(|(tp, (low, _))| (tp.clone(), *low))
        .collect();
    event_log::consumer::assign(&reader, &starts).unwrap();
    let mut stream = reader.stream();
    while !pending.is_empty() {
        let message = tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let tp = (message.topic().to_owned(), message.partition());
        if let Some(end) = pending.get(&tp).copied() {
            let headers = message
                .headers()
                .map(|headers| {
                    headers
                        .iter()
                        .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                        .collect()
                })
                .unwrap_or_default();
            all.get_mut(&tp).unwrap().push((
                message.key().map(<[u8]>::to_vec),
                message.payload().unwrap_or_default().to_vec(),
                headers,
            ));
            if message.offset() + 1 >= end {
                pending.remove(&tp);
            }
        }
    }
    all
}

/// One stream folded into its state, as JSON.
fn replay<A: domain::Aggregate>(
    registry: &schemas::SchemaRegistry,
    stream: &[schemas::EventEnvelope],
) -> Value
where
    A::State: serde::Serialize,
{
    let events: Vec<A::Event> = stream.iter().map(|e| registry.decode(e).unwrap()).collect();
    serde_json::to_value(A::replay(&events)).unwrap()
}

/// Every stream of `records` folded with today's registry, its sealed personal data opened with
/// `keys` (the data, or "erased"): what any reader makes of the log.
async fn fold_opened(
    keys: &privacy::KeyStore,
    records: &[Vec<u8>],
) -> std::collections::BTreeMap<String, Value> {
    let registry = schemas::SchemaRegistry::load().unwrap();
    let mut streams: std::collections::BTreeMap<
        (schemas::AggregateType, uuid::Uuid),
        Vec<schemas::EventEnvelope>,
    > = std::collections::BTreeMap::new();
    for bytes in records {
        let envelope = registry.validate_bytes(bytes).unwrap();
        streams
            .entry((envelope.aggregate_type, envelope.aggregate_id))
            .or_default()
            .push(envelope);
    }
    let mut states = std::collections::BTreeMap::new();
    for ((kind, id), stream) in &streams {
        let mut state = match kind {
            schemas::AggregateType::Facility => {
                replay::<domain::facility::Facility>(&registry, stream)
            }
            schemas::AggregateType::Booking => {
                replay::<domain::booking::Booking>(&registry, stream)
            }
            schemas::AggregateType::Payment => {
                replay::<domain::payment::Payment>(&registry, stream)
            }
            schemas::AggregateType::Saga => replay::<domain::saga::Saga>(&registry, stream),
        };
        if let Some(personal) = state.pointer_mut("/booking/0/personal") {
            let sealed: domain::booking::SealedPersonal =
                serde_json::from_value(personal.clone()).unwrap();
            *personal = match keys.open(*id, &sealed).await.unwrap() {
                privacy::Opened::Personal(data) => serde_json::to_value(data).unwrap(),
                privacy::Opened::Erased => json!("erased"),
            };
        }
        states.insert(format!("{kind}/{id}"), state);
    }
    states
}

#[tokio::test]
async fn log_migrate_copies_the_first_releases_log_into_generation_2_sealed_in_order_and_resumably()
{
    let kafka = system_tests::fresh_kafka().await.unwrap();
    let keys = privacy::KeyStore::connect(
        &DatabaseSettings::default(),
        &test_support::privacy_settings(),
    )
    .await
    .unwrap();
    // The first release's fixture, with aggregate ids of this test's own (the key table is
    // shared by every test).
    let mut fixture = include_str!("../../schemas/fixtures/release-1.jsonl").to_owned();
    let ids: std::collections::BTreeSet<String> = fixture
        .lines()
        .map(|line| {
            serde_json::from_str::<Value>(line).unwrap()["aggregate_id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    for id in &ids {
        fixture = fixture.replace(id.as_str(), &uuid::Uuid::new_v4().to_string());
    }
    let records: Vec<Value> = fixture
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // What the plaintext was: none of it may reach generation 2.
    let mut plaintext = Vec::new();
    let mut requests = Vec::new();
    for record in records
        .iter()
        .filter(|r| r["event_type"] == "BookingRequested")
    {
        assert_eq!(record["event_version"], 1);
        requests.push(uuid::Uuid::parse_str(record["aggregate_id"].as_str().unwrap()).unwrap());
        plaintext.push(
            record["data"]["deceased"]["full_name"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
        for contact in record["data"]["family_contacts"].as_array().unwrap() {
            for field in ["name", "email", "phone"] {
                if let Some(value) = contact[field].as_str() {
                    plaintext.push(value.to_owned());
                }
            }
        }
    }
    assert_eq!(requests.len(), 4);
    // One of the bookings was erased before the migration (its key row is a tombstone).
    keys.erase(requests[0]).await.unwrap();

    let producer = EventProducer::new(&kafka).unwrap();
    let topics = event_log::Topics::new(&kafka.topic_prefix);
    for record in &records {
        let aggregate =
            schemas::AggregateType::from_wire(record["aggregate_type"].as_str().unwrap()).unwrap();
        let headers = OwnedHeaders::new()
            .insert(rdkafka::message::Header {
                key: "fm-event-type",
                value: Some(record["event_type"].as_str().unwrap()),
            })
            .insert(rdkafka::message::Header {
                key: "fm-event-version",
                value: Some(&record["event_version"].to_string()),
            });
        producer
            .send(
                &topics.events(aggregate),
                Some(record["aggregate_id"].as_str().unwrap().as_bytes()),
                serde_json::to_vec(record).unwrap().as_slice(),
                headers,
            )
            .await
            .unwrap();
    }

    let run = fmctl(
        &kafka,
        None,
        &["log", "migrate", "--generation", "2", "--json"],
    )
    .await;
    assert_eq!(run.status, 0, "{}", run.stderr);
    let reports = run.json_lines();
    assert_eq!(reports.len(), 4, "{reports:?}");
    let booking_report = reports
        .iter()
        .find(|r| r["source"] == topics.events(schemas::AggregateType::Booking))
        .unwrap();
    assert_eq!(booking_report["sealed"], 4, "{booking_report}");
    assert_eq!(booking_report["sealed_erased"], 1, "{booking_report}");
    let total: u64 = reports.iter().map(|r| r["copied"].as_u64().unwrap()).sum();
    assert_eq!(total, u64::try_from(records.len()).unwrap());

    // Run again: refused onto non-empty topics; resumed, nothing more is copied.
    let again = fmctl(&kafka, None, &["log", "migrate", "--generation", "2"]).await;
    assert_ne!(again.status, 0);
    assert!(again.stderr.contains("--resume"), "{}", again.stderr);
    let resumed = fmctl(
        &kafka,
        None,
        &["log", "migrate", "--generation", "2", "--resume", "--json"],
    )
    .await;
    assert_eq!(resumed.status, 0, "{}", resumed.stderr);
    for report in resumed.json_lines() {
        assert_eq!(report["copied"], 0, "{report}");
        assert_eq!(report["already_copied"], report["records"], "{report}");
    }

    // Same partitions, keys and order; every record but the requests byte for byte; no
    // plaintext anywhere in generation 2.
    let g2 = event_log::Topics::new(&format!("{}.g2", kafka.topic_prefix));
    let old_topics: Vec<String> = schemas::AggregateType::ALL
        .into_iter()
        .map(|a| topics.events(a))
        .collect();
    let new_topics: Vec<String> = schemas::AggregateType::ALL
        .into_iter()
        .map(|a| g2.events(a))
        .collect();
    let old = read_raw(&kafka, &old_topics).await;
    let new = read_raw(&kafka, &new_topics).await;
    assert_eq!(old.len(), new.len(), "same partitions");
    let mut sealed = 0;
    let (mut old_payloads, mut new_payloads) = (Vec::new(), Vec::new());
    for ((topic, partition), old_records) in &old {
        let new_topic = topic.replacen(&kafka.topic_prefix, &g2_prefix(&kafka), 1);
        let new_records = &new[&(new_topic, *partition)];
        assert_eq!(old_records.len(), new_records.len(), "{topic}[{partition}]");
        for ((old_key, old_payload, old_headers), (new_key, new_payload, new_headers)) in
            old_records.iter().zip(new_records)
        {
            assert_eq!(old_key, new_key, "per-key order kept");
            let text = String::from_utf8_lossy(new_payload);
            for value in &plaintext {
                assert!(
                    !text.contains(value.as_str()),
                    "{value} in generation 2: {text}"
                );
            }
            let document: Value = serde_json::from_slice(old_payload).unwrap();
            if document["event_type"] == "BookingRequested" {
                sealed += 1;
                let rewritten: Value = serde_json::from_slice(new_payload).unwrap();
                assert_eq!(rewritten["event_version"], 2);
                assert_eq!(rewritten["event_id"], document["event_id"]);
                assert!(
                    rewritten["data"]["personal"]["ciphertext"].is_string(),
                    "{rewritten}"
                );
                let version = new_headers
                    .iter()
                    .find(|(k, _)| k == "fm-event-version")
                    .unwrap();
                assert_eq!(version.1, b"2");
            } else {
                assert_eq!(old_payload, new_payload, "byte for byte");
                assert_eq!(old_headers, new_headers);
            }
            old_payloads.push(old_payload.clone());
            new_payloads.push(new_payload.clone());
        }
    }
    assert_eq!(sealed, 4);
    assert_eq!(old_payloads.len(), records.len());

    // What a reader makes of generation 2 is what it made of the first: the same states, the
    // same personal data opened (and the erased booking erased in both).
    let before = fold_opened(&keys, &old_payloads).await;
    let after = fold_opened(&keys, &new_payloads).await;
    assert_eq!(before.len(), 10);
    assert_eq!(before, after);
    let erased = &after[&format!("booking/{}", requests[0])];
    assert_eq!(
        erased.pointer("/booking/0/personal"),
        Some(&json!("erased")),
        "{erased}"
    );
    let opened = &after[&format!("booking/{}", requests[1])];
    assert!(
        opened
            .pointer("/booking/0/personal/deceased_full_name")
            .is_some(),
        "{opened}"
    );
}

fn g2_prefix(kafka: &KafkaSettings) -> String {
    format!("{}.g2", kafka.topic_prefix)
}

#[tokio::test]
async fn privacy_show_opens_a_bookings_personal_data_for_ops_and_masks_it_once_erased() {
    let stack = TestStack::spawn().await.unwrap();
    let (_, booking) = facility_and_booking(&stack).await;
    let booking_id = booking["booking_id"].as_str().unwrap();

    let run = fmctl(&stack.kafka, None, &["privacy", "show", booking_id]).await;
    assert_eq!(run.status, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains("deceased: Ada Lovelace"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("byron@example.org"), "{}", run.stdout);
    assert!(
        run.stdout.contains("erasure on the log: no"),
        "{}",
        run.stdout
    );
    let run = fmctl(
        &stack.kafka,
        None,
        &["privacy", "show", booking_id, "--json"],
    )
    .await;
    assert_eq!(run.status, 0, "{}", run.stderr);
    let shown = &run.json_lines()[0];
    assert_eq!(shown["state"], "opened", "{shown}");
    assert_eq!(shown["personal"]["deceased_full_name"], "Ada Lovelace");
    assert_eq!(
        shown["personal"]["family_contacts"][0]["email"],
        "byron@example.org"
    );
    assert!(shown["key_id"].is_string(), "{shown}");

    // Without the master keys nothing opens, and fmctl says so without a value.
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_fmctl"));
    let output = command
        .args(["privacy", "show", booking_id])
        .env("FM_KAFKA__BROKERS", &stack.kafka.brokers)
        .env("FM_KAFKA__TOPIC_PREFIX", &stack.kafka.topic_prefix)
        .envs(test_support::privacy_env())
        .env(
            "FM_PRIVACY__MASTER_KEYS",
            privacy::MasterKeys::generate("other"),
        )
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(!output.status.success());
    assert!(
        stderr.contains("\"other\"") || stderr.contains("which the settings lack"),
        "{stderr}"
    );
    assert!(
        !String::from_utf8(output.stdout)
            .unwrap()
            .contains("Lovelace")
    );

    // Erased: masked, and the erasure is on the log.
    let response = stack
        .http
        .post(format!("{}/bookings/{booking_id}/erase", stack.command_url))
        .bearer_auth(stack.token(Role::Ops, "ops-1").await)
        .json(&json!({"reason": "the family asked"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let run = fmctl(&stack.kafka, None, &["privacy", "show", booking_id]).await;
    assert_eq!(run.status, 0, "{}", run.stderr);
    assert!(run.stdout.contains("deceased: [erased]"), "{}", run.stdout);
    assert!(
        run.stdout.contains("erasure on the log: yes"),
        "{}",
        run.stdout
    );
    for plaintext in ["Lovelace", "byron@example.org", "Byron", "+447700900123"] {
        assert!(!run.stdout.contains(plaintext), "{}", run.stdout);
    }
    let run = fmctl(
        &stack.kafka,
        None,
        &["privacy", "show", booking_id, "--json"],
    )
    .await;
    let shown = &run.json_lines()[0];
    assert_eq!(shown["state"], "erased", "{shown}");
    assert_eq!(shown["personal"], "erased", "{shown}");

    // A booking the log does not have: one sentence, non-zero.
    let unknown = uuid::Uuid::new_v4().to_string();
    let run = fmctl(&stack.kafka, None, &["privacy", "show", &unknown]).await;
    assert_ne!(run.status, 0);
    assert!(
        run.stderr.contains("has no BookingRequested"),
        "{}",
        run.stderr
    );
}

#[tokio::test]
async fn a_booking_whose_personal_data_does_not_open_is_parked_with_its_key_and_cause_and_the_projector_goes_on()
 {
    let stack = TestStack::spawn().await.unwrap();
    let (facility_id, _) = facility_and_booking(&stack).await;
    let run = fmctl(
        &stack.kafka,
        None,
        &["events", "tail", "--topic", "booking", "--output", "json"],
    )
    .await;
    let requested = run.json_lines()[0]["event"].clone();
    assert_eq!(requested["event_type"], "BookingRequested", "{requested}");
    let request_for = |id: &str, sealed: &domain::booking::SealedPersonal| {
        let mut record = requested.clone();
        record["aggregate_id"] = json!(id);
        record["event_id"] = json!(uuid::Uuid::new_v4());
        record["data"]["booking_id"] = json!(id);
        record["data"]["personal"] = serde_json::to_value(sealed).unwrap();
        serde_json::to_vec(&record).unwrap()
    };
    // One sealed under a master key the projector lacks, one whose box was tampered with.
    let mut elsewhere = test_support::privacy_settings();
    elsewhere.master_keys = privacy::MasterKeys::generate("absent").into();
    let elsewhere = privacy::KeyStore::connect(&DatabaseSettings::default(), &elsewhere)
        .await
        .unwrap();
    let ours = privacy::KeyStore::connect(
        &DatabaseSettings::default(),
        &test_support::privacy_settings(),
    )
    .await
    .unwrap();
    // The booking's own personal data, opened.
    let personal = ours
        .open(
            requested["aggregate_id"].as_str().unwrap().parse().unwrap(),
            &serde_json::from_value(requested["data"]["personal"].clone()).unwrap(),
        )
        .await
        .unwrap()
        .personal()
        .unwrap();
    let (absent, tampered) = (
        uuid::Uuid::new_v4().to_string(),
        uuid::Uuid::new_v4().to_string(),
    );
    let absent_box = elsewhere
        .seal(absent.parse().unwrap(), &personal)
        .await
        .unwrap();
    let mut tampered_box = ours
        .seal(tampered.parse().unwrap(), &personal)
        .await
        .unwrap();
    if let domain::booking::SealedPersonal::Encrypted(sealed) = &mut tampered_box {
        let first = if sealed.ciphertext.starts_with('A') {
            "B"
        } else {
            "A"
        };
        sealed.ciphertext.replace_range(0..1, first);
    }
    poison_on(
        &stack,
        "booking",
        &absent,
        &request_for(&absent, &absent_box),
    )
    .await;
    poison_on(
        &stack,
        "booking",
        &tampered,
        &request_for(&tampered, &tampered_box),
    )
    .await;
    // A booking after them is projected: nothing waits behind the two.
    let response = stack
        .http
        .post(format!("{}/bookings", stack.command_url))
        .bearer_auth(stack.token(Role::Director, "director-1").await)
        .json(&bodies::booking(&facility_id, 15))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    wait_projected(&stack.kafka, &stack.database_url).await;

    let run = fmctl(
        &stack.kafka,
        Some(&stack.database_url),
        &["projections", "parked", "--output", "json"],
    )
    .await;
    assert_eq!(run.status, 0, "{}", run.stderr);
    let report: Value = serde_json::from_str(run.stdout.trim()).unwrap();
    let parked = report["builds"][0]["parked"].as_array().unwrap();
    assert_eq!(parked.len(), 2, "{report}");
    let reason_of = |id: &str| {
        parked
            .iter()
            .find(|p| p["aggregate_id"] == json!(id))
            .map(|p| p["reason"].as_str().unwrap().to_owned())
            .unwrap()
    };
    let key_of = |sealed: &domain::booking::SealedPersonal| sealed.key_id().unwrap().to_string();
    let reason = reason_of(&absent);
    assert!(
        reason.contains(&key_of(&absent_box)) && reason.contains("\"absent\""),
        "{reason}"
    );
    let reason = reason_of(&tampered);
    assert!(
        reason.contains(&key_of(&tampered_box)) && reason.contains("fails authentication"),
        "{reason}"
    );
    // `/ready` says so too, and nothing anywhere shows a value.
    let ready = stack
        .http
        .get(format!("{}/ready", stack.projection_url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(ready.contains("2 aggregates parked"), "{ready}");
    for text in [&ready, &run.stdout] {
        for plaintext in ["Lovelace", "byron@example.org", "+447700900123"] {
            assert!(!text.contains(plaintext), "{text}");
        }
    }
}
