//! Parking against a fresh PostgreSQL each (`#[sqlx::test]`), without Kafka: records go through
//! the projector's own path ([`project_record`], one transaction per record as a batch of one),
//! and the read models are compared with those of a reader that knew everything from the start.

#![allow(clippy::unwrap_used)] // A test fails loudly on any unexpected error; that is the point.

use batch_consumer::RecordOutcome;
use domain::{
    facility::FacilityEvent,
    values::{OpeningHours, OpeningInterval},
};
use event_log::{LogPosition, Topics};
use schemas::{AggregateType, EventEnvelope, SchemaRegistry, fixtures};
use serde_json::Value;
use sqlx::{Acquire as _, PgConnection, PgPool, pool::PoolConnection, postgres::Postgres};
use uuid::Uuid;

use super::{Projected, drain_all, parked, parked_count, project_record};
use crate::{read_model::READ_MODEL, versions};

/// A connection onto the tables of a fresh build `build`, as a projector's connections see them.
pub(crate) async fn build(pool: &PgPool, build: i32) -> PoolConnection<Postgres> {
    versions::ensure_build_schema(pool, &READ_MODEL, build)
        .await
        .unwrap();
    let mut conn = pool.acquire().await.unwrap();
    sqlx::query(&format!(
        "SET search_path TO {}",
        versions::build_schema(READ_MODEL.version, build)
    ))
    .execute(&mut *conn)
    .await
    .unwrap();
    conn
}

/// A record as the log holds it: the envelope's bytes at a position on its aggregate's topic.
pub(crate) struct Logged {
    pub(crate) envelope: EventEnvelope,
    pub(crate) bytes: Vec<u8>,
    pub(crate) position: LogPosition,
}

pub(crate) fn topics() -> Topics {
    Topics::new("fm")
}

/// `envelopes` in log order, each at the next offset of its topic (one partition each).
pub(crate) fn log(envelopes: Vec<EventEnvelope>) -> Vec<Logged> {
    let mut offsets = std::collections::BTreeMap::<String, i64>::new();
    envelopes
        .into_iter()
        .map(|envelope| {
            let topic = topics().events(envelope.aggregate_type);
            let offset = offsets.entry(topic.clone()).or_default();
            let position = LogPosition {
                topic,
                partition: 0,
                offset: *offset,
            };
            *offset += 1;
            let bytes = serde_json::to_vec(&envelope).unwrap();
            Logged {
                envelope,
                bytes,
                position,
            }
        })
        .collect()
}

/// Projects each record in a transaction of its own and returns what each came to.
async fn project(
    conn: &mut PgConnection,
    registry: &SchemaRegistry,
    records: &[Logged],
) -> Vec<RecordOutcome> {
    let keys = crate::read_models::tests::keys().await;
    project_with(conn, registry, &keys, records).await
}

/// [`project`] with these data keys.
async fn project_with(
    conn: &mut PgConnection,
    registry: &SchemaRegistry,
    keys: &privacy::KeyStore,
    records: &[Logged],
) -> Vec<RecordOutcome> {
    let mut outcomes = Vec::new();
    for record in records {
        let mut tx = conn.begin().await.unwrap();
        let projected = project_record(
            &mut tx,
            registry,
            keys,
            &topics(),
            &record.bytes,
            &record.position,
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
        match projected {
            Projected::Outcome(outcome) => outcomes.push(outcome),
            Projected::Refused { full, .. } => panic!("refused: {full}"),
        }
    }
    outcomes
}

/// Every read-model row of the build, as JSON text ordered by key: what a query-api could see.
pub(crate) async fn read_models(conn: &mut PgConnection) -> Vec<String> {
    let mut dump = Vec::new();
    for (table, key) in [
        ("facilities", "facility_id"),
        ("reservations", "facility_id, booking_id"),
        ("bookings", "booking_id"),
        ("payments", "payment_id"),
    ] {
        let rows: Option<Value> =
            sqlx::query_scalar(&format!("SELECT json_agg(t ORDER BY {key}) FROM {table} t"))
                .fetch_one(&mut *conn)
                .await
                .unwrap();
        dump.push(format!("{table}: {}", rows.unwrap_or(Value::Null)));
    }
    dump
}

fn hours(opens: &str) -> OpeningHours {
    OpeningHours::new(vec![
        OpeningInterval::parse("mon", opens, "17:00").unwrap(),
        OpeningInterval::parse("tue", opens, "17:00").unwrap(),
    ])
    .unwrap()
}

/// Three bookings' stories interleaved: each facility's registration is `FacilityRegistered` v2,
/// as this release writes it, but the second story's facility was registered by the first
/// release (v1, without a funeral home). The first story's facility then changes its opening
/// hours twice (so that applying them out of order shows), and the third booking's stream
/// arrives with a gap (its sequence 3 before its sequence 2).
pub(crate) fn the_log() -> (Vec<EventEnvelope>, Uuid, Uuid) {
    let mut stories: Vec<Vec<EventEnvelope>> =
        (1..=3).map(|i| fixtures::booking_story(i).1).collect();
    // Story 2's facility as the first release registered it.
    let registration = &mut stories[1][0];
    assert_eq!(registration.event_type, "FacilityRegistered");
    registration.event_version = 1;
    registration
        .data
        .as_object_mut()
        .unwrap()
        .remove("funeral_home_id");
    let v2_facility = stories[0][0].aggregate_id;
    let v1_facility = stories[1][0].aggregate_id;
    let last = stories[0]
        .iter()
        .filter(|e| e.aggregate_id == v2_facility)
        .map(|e| e.sequence)
        .max()
        .unwrap();
    for (n, opens) in [(1, "08:00"), (2, "10:00")] {
        stories[0].push(fixtures::envelope(
            AggregateType::Facility,
            v2_facility,
            last + n,
            &FacilityEvent::OpeningHoursChanged {
                opening_hours: hours(opens),
            },
        ));
    }
    // Story 3's booking: its sequence 3 is logged before its sequence 2 (a gap, then the fill).
    let booking = stories[2][1].aggregate_id;
    let at = |seq: u64, story: &Vec<EventEnvelope>| {
        story
            .iter()
            .position(|e| e.aggregate_id == booking && e.sequence == seq)
            .unwrap()
    };
    let (two, three) = (at(2, &stories[2]), at(3, &stories[2]));
    let moved = stories[2].remove(three);
    stories[2].insert(two, moved);
    // Round-robin: one record of each story in turn.
    let mut log = Vec::new();
    let longest = stories.iter().map(Vec::len).max().unwrap();
    for i in 0..longest {
        for story in &stories {
            if let Some(envelope) = story.get(i) {
                log.push(envelope.clone());
            }
        }
    }
    (log, v2_facility, v1_facility)
}

#[sqlx::test(migrator = "crate::startup::MIGRATOR")]
async fn an_unknown_version_parks_its_aggregate_until_a_release_that_knows_it_applies_everything_in_order(
    pool: PgPool,
) {
    let (envelopes, v2_facility, v1_facility) = the_log();
    let records = log(envelopes);
    let full = SchemaRegistry::load().unwrap();
    // What a reader that knew every record from the start makes of the log.
    let mut reference = build(&pool, 1).await;
    let outcomes = project(&mut reference, &full, &records).await;
    assert!(!outcomes.contains(&RecordOutcome::DeadLettered));
    let expected = read_models(&mut reference).await;
    assert!(
        expected[0].contains(&v2_facility.to_string()),
        "{expected:?}"
    );
    assert!(
        expected[0].contains("10:00"),
        "the last opening hours: {expected:?}"
    );

    // A reader of the release before FacilityRegistered v2.
    let old = SchemaRegistry::load()
        .unwrap()
        .without("FacilityRegistered", 2);
    assert!(!old.knows("FacilityRegistered", 2) && old.knows("FacilityRegistered", 1));
    let mut conn = build(&pool, 2).await;
    let schema = versions::build_schema(READ_MODEL.version, 2);
    let outcomes = project(&mut conn, &old, &records).await;

    // The v2 facilities are parked with every record of theirs, in order; everything else went on.
    let parked_records = |facility: Uuid| {
        records
            .iter()
            .zip(&outcomes)
            .filter(move |(r, _)| r.envelope.aggregate_id == facility)
            .map(|(_, outcome)| *outcome)
    };
    assert!(
        parked_records(v2_facility).all(|outcome| outcome == RecordOutcome::Parked),
        "{outcomes:?}"
    );
    assert!(
        parked_records(v1_facility).all(|outcome| outcome == RecordOutcome::Applied),
        "{outcomes:?}"
    );
    let parked_now = parked(&pool, &schema).await.unwrap();
    // Stories 1 and 3 registered their facilities at v2; story 2's v1 one is applied.
    assert_eq!(parked_now.len(), 2, "{parked_now:?}");
    let first = parked_now
        .iter()
        .find(|p| p.aggregate_id == v2_facility)
        .unwrap();
    assert_eq!(
        (
            first.sequence,
            first.event_type.as_str(),
            first.event_version
        ),
        (1, "FacilityRegistered", 2)
    );
    assert!(
        first.reason.contains("FacilityRegistered v2"),
        "{}",
        first.reason
    );
    assert_eq!(
        first.records,
        i64::try_from(parked_records(v2_facility).count()).unwrap()
    );
    assert_eq!(parked_count(&pool, &schema).await.unwrap(), 2);
    let seen = read_models(&mut conn).await;
    assert!(!seen[0].contains(&v2_facility.to_string()), "{seen:?}");
    assert!(seen[0].contains(&v1_facility.to_string()), "{seen:?}");
    // The gap in the third booking was parked, then filled: that booking is whole already.
    assert_eq!(seen[2], expected[2], "bookings");
    assert_eq!(seen[3], expected[3], "payments");

    // The old reader starting again changes nothing: it still does not know v2.
    let mut tx = conn.begin().await.unwrap();
    assert_eq!(
        drain_all(&mut tx, &old, &crate::read_models::tests::keys().await)
            .await
            .unwrap(),
        (0, 2)
    );
    tx.commit().await.unwrap();
    assert_eq!(read_models(&mut conn).await, seen);

    // A reader of this release starts on the same build: everything parked is applied, in
    // order, and the read models are exactly those of a reader that knew it all along.
    let mut tx = conn.begin().await.unwrap();
    let (applied, still_parked) =
        drain_all(&mut tx, &full, &crate::read_models::tests::keys().await)
            .await
            .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        (applied, still_parked),
        (
            u64::try_from(
                outcomes
                    .iter()
                    .filter(|o| **o == RecordOutcome::Parked)
                    .count()
            )
            .unwrap(),
            0
        )
    );
    assert!(parked(&pool, &schema).await.unwrap().is_empty());
    assert_eq!(read_models(&mut conn).await, expected);

    // And the next record of a formerly parked facility is applied directly.
    let next = records
        .iter()
        .filter(|r| r.envelope.aggregate_id == v2_facility)
        .map(|r| r.envelope.sequence)
        .max()
        .unwrap()
        + 1;
    let more = log(vec![fixtures::envelope(
        AggregateType::Facility,
        v2_facility,
        next,
        &FacilityEvent::OpeningHoursChanged {
            opening_hours: hours("07:00"),
        },
    )]);
    assert_eq!(
        project(&mut conn, &full, &more).await,
        [RecordOutcome::Applied]
    );
}

#[sqlx::test(migrator = "crate::startup::MIGRATOR")]
async fn a_gap_parks_its_aggregate_until_the_missing_record_arrives(pool: PgPool) {
    let (_, story) = fixtures::booking_story(3);
    let booking = story[1].aggregate_id;
    let (mine, others): (Vec<_>, Vec<_>) =
        story.into_iter().partition(|e| e.aggregate_id == booking);
    assert_eq!(mine.len(), 4);
    let full = SchemaRegistry::load().unwrap();
    let mut reference = build(&pool, 1).await;
    project(
        &mut reference,
        &full,
        &log(others.iter().chain(&mine).cloned().collect()),
    )
    .await;
    let expected = read_models(&mut reference).await;

    // Sequence 1, then 3 and 4 (a gap), the others' records, a duplicate of 1, and then 2.
    let mut conn = build(&pool, 2).await;
    let mut duplicate = mine[0].clone();
    duplicate.event_id = Uuid::new_v4();
    let order = vec![mine[0].clone(), mine[2].clone(), mine[3].clone(), duplicate];
    let mut envelopes = order.clone();
    envelopes.splice(1..1, others.iter().cloned());
    envelopes.push(mine[1].clone());
    let outcomes = project(&mut conn, &full, &log(envelopes)).await;
    let n = others.len();
    assert_eq!(outcomes[0], RecordOutcome::Applied);
    assert!(outcomes[1..=n].iter().all(|o| *o == RecordOutcome::Applied));
    assert_eq!(
        outcomes[n + 1..],
        [
            RecordOutcome::Gap,
            RecordOutcome::Parked,
            // A duplicate of what was applied waits behind the gap, then is dropped.
            RecordOutcome::Parked,
            // The missing record: it and everything parked behind it are applied.
            RecordOutcome::Applied,
        ]
    );
    let schema = versions::build_schema(READ_MODEL.version, 2);
    assert!(parked(&pool, &schema).await.unwrap().is_empty());
    assert_eq!(read_models(&mut conn).await, expected);
}

/// A key store on the test server's key table with these master keys.
async fn key_store(master_keys: &str) -> privacy::KeyStore {
    let mut settings = test_support::privacy_settings();
    settings.master_keys = master_keys.to_owned().into();
    privacy::KeyStore::connect(&platform::settings::DatabaseSettings::default(), &settings)
        .await
        .unwrap()
}

/// Seals the story's `BookingRequested` under `keys` and returns the booking's id.
async fn seal_request(story: &mut [EventEnvelope], keys: &privacy::KeyStore) -> Uuid {
    let request = story
        .iter_mut()
        .find(|e| e.event_type == "BookingRequested")
        .unwrap();
    let sealed = keys
        .seal(request.aggregate_id, &domain::fixtures::personal_data())
        .await
        .unwrap();
    request.data["personal"] = serde_json::to_value(&sealed).unwrap();
    request.aggregate_id
}

async fn booking_row(conn: &mut PgConnection, booking: Uuid) -> Option<(String, String)> {
    sqlx::query_as("SELECT status, deceased::text FROM bookings WHERE booking_id = $1")
        .bind(booking)
        .fetch_optional(conn)
        .await
        .unwrap()
}

#[sqlx::test(migrator = "crate::startup::MIGRATOR")]
async fn personal_data_that_does_not_open_parks_its_booking_never_the_projector_and_an_erased_key_reads_erased(
    pool: PgPool,
) {
    let registry = SchemaRegistry::load().unwrap();
    let test_keys = crate::read_models::tests::keys().await;
    // A master key this projector does not have (another deployment's, or one not configured).
    let absent = privacy::MasterKeys::generate("absent");
    let elsewhere = key_store(&absent).await;
    let mut stories: Vec<Vec<EventEnvelope>> =
        (1..=4).map(|i| fixtures::booking_story(i).1).collect();
    let unknown_master = seal_request(&mut stories[0], &elsewhere).await;
    let tampered = seal_request(&mut stories[1], &test_keys).await;
    let erased = seal_request(&mut stories[2], &test_keys).await;
    let fine = seal_request(&mut stories[3], &test_keys).await;
    test_keys.erase(erased).await.unwrap();
    // The tampered box: one byte of its ciphertext changed.
    let request = stories[1]
        .iter_mut()
        .find(|e| e.event_type == "BookingRequested")
        .unwrap();
    let tampered_key = request.data["personal"]["key_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut ciphertext = request.data["personal"]["ciphertext"]
        .as_str()
        .unwrap()
        .to_owned();
    let flipped = if ciphertext.starts_with('A') {
        "B"
    } else {
        "A"
    };
    ciphertext.replace_range(0..1, flipped);
    request.data["personal"]["ciphertext"] = ciphertext.into();
    let unknown_key = stories[0]
        .iter()
        .find(|e| e.event_type == "BookingRequested")
        .unwrap()
        .data["personal"]["key_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut envelopes = Vec::new();
    for i in 0..stories.iter().map(Vec::len).max().unwrap() {
        for story in &stories {
            envelopes.extend(story.get(i).cloned());
        }
    }
    let records = log(envelopes);

    let mut conn = build(&pool, 1).await;
    let schema = versions::build_schema(READ_MODEL.version, 1);
    let outcomes = project_with(&mut conn, &registry, &test_keys, &records).await;
    let of = |booking: Uuid| -> Vec<RecordOutcome> {
        records
            .iter()
            .zip(&outcomes)
            .filter(|(r, _)| r.envelope.aggregate_id == booking)
            .map(|(_, o)| *o)
            .collect()
    };
    // The two bookings that do not open are parked with every record of theirs, in order;
    // nothing of them is in the read model, in plaintext or otherwise.
    for booking in [unknown_master, tampered] {
        assert!(
            of(booking).iter().all(|o| *o == RecordOutcome::Parked),
            "{:?}",
            of(booking)
        );
        assert_eq!(booking_row(&mut conn, booking).await, None);
    }
    // Everything else went on: the erased booking reads erased, the other opens.
    assert!(
        of(erased)
            .iter()
            .chain(&of(fine))
            .all(|o| *o == RecordOutcome::Applied),
        "{outcomes:?}"
    );
    let (_, deceased) = booking_row(&mut conn, erased).await.unwrap();
    assert_eq!(deceased, r#""erased""#);
    let (_, deceased) = booking_row(&mut conn, fine).await.unwrap();
    assert!(deceased.contains("Ada Lovelace"), "{deceased}");
    let facilities: i64 = sqlx::query_scalar("SELECT count(*) FROM facilities")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!(facilities, 4, "no facility waits for a booking");

    // The reasons name the key and the cause, never a value (what `/ready` and
    // `fmctl projections parked` show).
    let parked_now = parked(&pool, &schema).await.unwrap();
    assert_eq!(parked_now.len(), 2, "{parked_now:?}");
    let reason_of = |booking: Uuid| {
        parked_now
            .iter()
            .find(|p| p.aggregate_id == booking)
            .map(|p| (p.sequence, p.reason.clone()))
            .unwrap()
    };
    let (sequence, reason) = reason_of(unknown_master);
    assert_eq!(sequence, 1);
    assert!(
        reason.contains(&unknown_key) && reason.contains("\"absent\""),
        "{reason}"
    );
    let (sequence, reason) = reason_of(tampered);
    assert_eq!(sequence, 1);
    assert!(
        reason.contains(&tampered_key) && reason.contains("fails authentication"),
        "{reason}"
    );
    let shown = format!("{parked_now:?}");
    for plaintext in ["Ada", "Lovelace", "byron@example.org", "+447700900123"] {
        assert!(!shown.contains(plaintext), "{shown}");
    }

    // Restarted with the missing master key beside its own: the parked booking is applied, in
    // order, with its personal data; the tampered one stays parked.
    let both = key_store(&format!("{},{absent}", test_support::TEST_MASTER_KEYS)).await;
    let mut tx = conn.begin().await.unwrap();
    let (applied, still_parked) = drain_all(&mut tx, &registry, &both).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        (applied, still_parked),
        (u64::try_from(of(unknown_master).len()).unwrap(), 1)
    );
    let (status, deceased) = booking_row(&mut conn, unknown_master).await.unwrap();
    assert_eq!(status, "confirmed");
    assert!(deceased.contains("Ada Lovelace"), "{deceased}");
    let parked_now = parked(&pool, &schema).await.unwrap();
    assert_eq!(
        parked_now
            .iter()
            .map(|p| p.aggregate_id)
            .collect::<Vec<_>>(),
        [tampered]
    );
}
