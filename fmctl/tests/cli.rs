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
    assert!(run.stdout.contains("BookingRequested v2"), "{}", run.stdout);

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
            "BookingRequested v2 payload invalid at '/date_of_death'",
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
