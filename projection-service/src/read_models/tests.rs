//! The read models' SQL against a fresh PostgreSQL each (`#[sqlx::test]`), without Kafka: the
//! events go straight to [`apply`], in a version's schema as the projector's connections see it.

#![allow(clippy::unwrap_used)] // A test fails loudly on any unexpected error; that is the point.

use schemas::{AggregateType, EventEnvelope, SchemaRegistry, fixtures::booking_story};
use sqlx::{PgConnection, PgPool, pool::PoolConnection, postgres::Postgres};

use super::{Applied, apply};
use crate::{read_model::READ_MODEL, versions};

/// A connection to the tables of this release's first build, on a database that has just been
/// migrated, as the projector's connections see them.
async fn live_version(pool: &PgPool) -> PoolConnection<Postgres> {
    let builds = versions::declare(pool, &READ_MODEL, "test").await.unwrap();
    let build = builds[0];
    versions::ensure_build_schema(pool, &READ_MODEL, build.build)
        .await
        .unwrap();
    let mut conn = pool.acquire().await.unwrap();
    sqlx::query(&format!("SET search_path TO {}", build.schema()))
        .execute(&mut *conn)
        .await
        .unwrap();
    conn
}

/// The key store of the test server (`test_support::privacy_settings`). The fixtures' sealed
/// boxes have no key there, so their personal columns read `"erased"`; the tests that open a
/// box seal it with this store.
pub(crate) async fn keys() -> privacy::KeyStore {
    privacy::KeyStore::connect(
        &platform::settings::DatabaseSettings::default(),
        &test_support::privacy_settings(),
    )
    .await
    .unwrap()
}

/// Applies every envelope in order and returns what each came to.
async fn apply_all(conn: &mut PgConnection, envelopes: &[EventEnvelope]) -> Vec<Applied> {
    let registry = SchemaRegistry::load().unwrap();
    let keys = keys().await;
    let mut applied = Vec::new();
    for envelope in envelopes {
        applied.push(apply(conn, &registry, &keys, envelope).await.unwrap());
    }
    applied
}

async fn text(conn: &mut PgConnection, sql: &str) -> String {
    sqlx::query_scalar(sql).fetch_one(conn).await.unwrap()
}

async fn count(conn: &mut PgConnection, table: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
        .fetch_one(conn)
        .await
        .unwrap()
}

#[sqlx::test(migrator = "crate::startup::MIGRATOR")]
async fn a_paid_booking_is_confirmed_with_its_slot_held_and_its_payment_captured(pool: PgPool) {
    let mut conn = live_version(&pool).await;
    let (_, story) = booking_story(1);

    let applied = apply_all(&mut conn, &story).await;

    assert!(
        applied.iter().all(|a| *a == Applied::Changed),
        "{applied:?}"
    );
    assert_eq!(
        text(&mut conn, "SELECT status FROM bookings").await,
        "confirmed"
    );
    assert_eq!(
        text(&mut conn, "SELECT status FROM payments").await,
        "captured"
    );
    assert_eq!(count(&mut conn, "facilities").await, 1);
    assert_eq!(count(&mut conn, "reservations").await, 1);
    let history: i32 =
        sqlx::query_scalar("SELECT jsonb_array_length(saga -> 'history') FROM bookings")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
    assert_eq!(history, 3, "requested, slot held, confirmed");
}

#[sqlx::test(migrator = "crate::startup::MIGRATOR")]
async fn a_cancelled_booking_is_refunded_and_its_slot_released(pool: PgPool) {
    let mut conn = live_version(&pool).await;
    let (_, story) = booking_story(3);

    apply_all(&mut conn, &story).await;

    assert_eq!(
        text(&mut conn, "SELECT status FROM bookings").await,
        "cancelled"
    );
    assert_eq!(
        text(&mut conn, "SELECT status_reason FROM bookings").await,
        "changed plans"
    );
    assert_eq!(
        text(&mut conn, "SELECT status FROM payments").await,
        "refunded"
    );
    assert_eq!(count(&mut conn, "reservations").await, 0);
}

#[sqlx::test(migrator = "crate::startup::MIGRATOR")]
async fn an_event_read_again_is_stale_and_changes_nothing(pool: PgPool) {
    let mut conn = live_version(&pool).await;
    let (_, story) = booking_story(1);
    apply_all(&mut conn, &story).await;
    let request = story
        .iter()
        .find(|e| e.aggregate_type == AggregateType::Booking)
        .unwrap();

    let again = apply_all(&mut conn, std::slice::from_ref(request)).await;

    assert_eq!(again, [Applied::Stale]);
    assert_eq!(
        text(&mut conn, "SELECT status FROM bookings").await,
        "confirmed"
    );
    let version: i64 = sqlx::query_scalar("SELECT version FROM bookings")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!(version, 3);
}

#[sqlx::test(migrator = "crate::startup::MIGRATOR")]
async fn an_event_after_a_missing_one_is_a_gap_and_is_not_applied(pool: PgPool) {
    let mut conn = live_version(&pool).await;
    let (booking, story) = booking_story(1);
    let confirmed = story
        .iter()
        .filter(|e| e.aggregate_type == AggregateType::Booking)
        .find(|e| e.sequence == 3)
        .unwrap();

    let applied = apply_all(&mut conn, std::slice::from_ref(confirmed)).await;

    assert_eq!(applied, [Applied::Gap { expected: 1 }]);
    assert_eq!(count(&mut conn, "bookings").await, 0);

    // Once the events before it arrive, the same event is the next one and is applied.
    let before: Vec<EventEnvelope> = story
        .iter()
        .filter(|e| e.aggregate_id == *booking.as_uuid())
        .filter(|e| e.sequence < 3)
        .cloned()
        .collect();
    apply_all(&mut conn, &before).await;
    let applied = apply_all(&mut conn, std::slice::from_ref(confirmed)).await;
    assert_eq!(applied, [Applied::Changed]);
    assert_eq!(
        text(&mut conn, "SELECT status FROM bookings").await,
        "confirmed"
    );
}

#[sqlx::test(migrator = "crate::startup::MIGRATOR")]
async fn an_event_that_does_not_decode_is_refused_before_anything_is_written(pool: PgPool) {
    let mut conn = live_version(&pool).await;
    let (_, story) = booking_story(1);
    let registry = SchemaRegistry::load().unwrap();
    let mut request = story
        .iter()
        .find(|e| e.aggregate_type == AggregateType::Booking)
        .unwrap()
        .clone();
    request.data = serde_json::json!({"not": "a booking"});

    let refused = apply(&mut conn, &registry, &keys().await, &request).await;

    assert!(
        matches!(refused, Err(super::ApplyError::Contract(_))),
        "{refused:?}"
    );
    assert_eq!(count(&mut conn, "bookings").await, 0);
}

#[sqlx::test(migrator = "crate::startup::MIGRATOR")]
async fn a_booking_remembers_the_role_of_whoever_set_its_status(pool: PgPool) {
    let mut conn = live_version(&pool).await;
    let (_, mut story) = booking_story(3);
    let cancelled = story
        .iter_mut()
        .find(|e| e.event_type == "BookingCancelled")
        .unwrap();
    cancelled.actor.role = schemas::Role::Family;
    let (_, confirmed) = booking_story(1);

    apply_all(&mut conn, &story).await;
    apply_all(&mut conn, &confirmed).await;

    let by_status: Vec<(String, String)> =
        sqlx::query_as("SELECT status, status_changed_by FROM bookings ORDER BY status")
            .fetch_all(&mut *conn)
            .await
            .unwrap();
    assert_eq!(
        by_status,
        [
            ("cancelled".to_owned(), "family".to_owned()),
            ("confirmed".to_owned(), "system".to_owned()),
        ]
    );
}

#[sqlx::test(migrator = "crate::startup::MIGRATOR")]
async fn the_personal_columns_are_opened_with_the_bookings_key_and_erased_with_it(pool: PgPool) {
    let mut conn = live_version(&pool).await;
    let (_, mut story) = booking_story(1);
    let keys = keys().await;
    let request = story
        .iter_mut()
        .find(|e| e.event_type == "BookingRequested")
        .unwrap();
    let booking_id = request.aggregate_id;
    let sealed = keys
        .seal(booking_id, &domain::fixtures::personal_data())
        .await
        .unwrap();
    request.data["personal"] = serde_json::to_value(&sealed).unwrap();
    apply_all(&mut conn, &story).await;
    let row = format!("FROM bookings WHERE booking_id = '{booking_id}'");
    assert_eq!(
        text(&mut conn, &format!("SELECT deceased->>'full_name' {row}")).await,
        "Ada Lovelace"
    );
    assert_eq!(
        text(
            &mut conn,
            &format!("SELECT family_contacts->0->>'email' {row}")
        )
        .await,
        "byron@example.org"
    );
    let status = text(&mut conn, &format!("SELECT status {row}")).await;

    keys.erase(booking_id).await.unwrap();
    let mut erased = story
        .iter()
        .filter(|e| e.aggregate_id == booking_id)
        .max_by_key(|e| e.sequence)
        .unwrap()
        .clone();
    erased.event_id = uuid::Uuid::new_v4();
    erased.sequence += 1;
    erased.event_type = "PersonalDataErased".to_owned();
    erased.event_version = 1;
    erased.idempotency = None;
    erased.data = serde_json::json!({"reason": "the family asked"});
    assert_eq!(apply_all(&mut conn, &[erased]).await, [Applied::Changed]);
    assert_eq!(
        text(
            &mut conn,
            &format!("SELECT deceased::text || family_contacts::text {row}")
        )
        .await,
        r#""erased""erased""#
    );
    assert_eq!(
        text(&mut conn, &format!("SELECT status {row}")).await,
        status
    );

    // A rebuild finds no key: it writes "erased" from the request itself.
    let mut rebuilt = live_version(&pool).await;
    sqlx::query("DELETE FROM bookings")
        .execute(&mut *rebuilt)
        .await
        .unwrap();
    let requests: Vec<_> = story
        .iter()
        .filter(|e| e.event_type == "BookingRequested")
        .cloned()
        .collect();
    apply_all(&mut rebuilt, &requests).await;
    assert_eq!(
        text(&mut rebuilt, &format!("SELECT deceased::text {row}")).await,
        r#""erased""#
    );
}
