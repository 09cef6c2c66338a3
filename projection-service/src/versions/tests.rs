//! The bookkeeping of versions and builds against a fresh PostgreSQL each (`#[sqlx::test]`),
//! without Kafka: declaring, switching, and the rule that drops a version.

#![allow(clippy::unwrap_used)] // A test fails loudly on any unexpected error; that is the point.

use std::time::Duration;

use sqlx::PgPool;
use uuid::Uuid;

use super::{
    BuildState, RebuildError, RebuildRequest, SwitchOutcome, declare, drop_version,
    ensure_build_schema, plan_drops, request_rebuild, try_switch,
};
use crate::read_model::{READ_MODEL, ReadModel};

/// The version after this release's, with the same tables: what a later release declares.
const NEXT: ReadModel = ReadModel {
    version: READ_MODEL.version + 1,
    ..READ_MODEL
};

const HOUR: Duration = Duration::from_hours(1);

/// Declares `model` and switches its first build live (an empty log: nothing to catch up).
async fn live(pool: &PgPool, model: &ReadModel) -> i32 {
    let build = declare(pool, model, "test").await.unwrap()[0].build;
    ensure_build_schema(pool, model, build).await.unwrap();
    assert_eq!(
        try_switch(pool, model, build).await.unwrap(),
        SwitchOutcome::Switched { retired: None }
    );
    build
}

async fn set_offset(pool: &PgPool, schema: &str, next_offset: i64) {
    sqlx::query(&format!(
        "INSERT INTO {schema}.projection_offsets (topic, partition, next_offset) VALUES ('t', 0, $1) \
         ON CONFLICT (topic, partition) DO UPDATE SET next_offset = EXCLUDED.next_offset"
    ))
    .bind(next_offset)
    .execute(pool)
    .await
    .unwrap();
}

async fn schema_exists(pool: &PgPool, schema: &str) -> bool {
    sqlx::query_scalar("SELECT to_regnamespace($1) IS NOT NULL")
        .bind(schema)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// A query-api of `version` as its heartbeat records it, running for `expires_in` more.
async fn reader(pool: &PgPool, version: i32, expires_in: Duration) -> Uuid {
    let instance = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO read_model_readers (instance, version, host, expires_at) \
         VALUES ($1, $2, 'test', now() + make_interval(secs => $3))",
    )
    .bind(instance)
    .bind(version)
    .bind(expires_in.as_secs_f64())
    .execute(pool)
    .await
    .unwrap();
    instance
}

async fn stop_reader(pool: &PgPool, instance: Uuid) {
    sqlx::query(
        "UPDATE read_model_readers SET stopped_at = now(), expires_at = now() WHERE instance = $1",
    )
    .bind(instance)
    .execute(pool)
    .await
    .unwrap();
}

#[sqlx::test(migrator = "crate::startup::MIGRATOR")]
async fn a_version_declared_by_two_replicas_gets_one_build(pool: PgPool) {
    let first = declare(&pool, &READ_MODEL, "replica-a").await.unwrap();
    let second = declare(&pool, &READ_MODEL, "replica-b").await.unwrap();

    assert_eq!(first, second);
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].state, BuildState::Building);
    assert_eq!(first[0].version, READ_MODEL.version);
}

#[sqlx::test(migrator = "crate::startup::MIGRATOR")]
async fn a_version_has_no_views_until_its_first_build_goes_live(pool: PgPool) {
    let build = declare(&pool, &READ_MODEL, "test").await.unwrap()[0].build;
    ensure_build_schema(&pool, &READ_MODEL, build)
        .await
        .unwrap();
    let views = super::views_schema(READ_MODEL.version);
    assert!(
        !schema_exists(&pool, &views).await,
        "no views while building"
    );

    try_switch(&pool, &READ_MODEL, build).await.unwrap();

    let offsets: i64 =
        sqlx::query_scalar(&format!("SELECT count(*) FROM {views}.projection_offsets"))
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(offsets, 0);
    let shown: String =
        sqlx::query_scalar("SELECT obj_description('live'::regnamespace, 'pg_namespace')")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(shown, views, "live shows the newest version");
}

#[sqlx::test(migrator = "crate::startup::MIGRATOR")]
async fn a_rebuild_switches_only_once_it_is_as_far_as_the_live_build(pool: PgPool) {
    let first = live(&pool, &READ_MODEL).await;
    set_offset(&pool, &super::build_schema(READ_MODEL.version, first), 5).await;
    let second = request_rebuild(&pool, READ_MODEL.version, "test")
        .await
        .unwrap()
        .build();
    ensure_build_schema(&pool, &READ_MODEL, second)
        .await
        .unwrap();
    let second_schema = super::build_schema(READ_MODEL.version, second);
    set_offset(&pool, &second_schema, 3).await;

    assert_eq!(
        try_switch(&pool, &READ_MODEL, second).await.unwrap(),
        SwitchOutcome::Behind
    );
    set_offset(&pool, &second_schema, 5).await;
    assert_eq!(
        try_switch(&pool, &READ_MODEL, second).await.unwrap(),
        SwitchOutcome::Switched {
            retired: Some(first)
        }
    );
    let seen: i64 = sqlx::query_scalar(&format!(
        "SELECT next_offset FROM {}.projection_offsets",
        super::views_schema(READ_MODEL.version)
    ))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(seen, 5, "the views show the new build");
    assert_eq!(
        request_rebuild(&pool, READ_MODEL.version, "test")
            .await
            .unwrap(),
        RebuildRequest::Started { build: second + 1 }
    );
    assert_eq!(
        request_rebuild(&pool, READ_MODEL.version, "again")
            .await
            .unwrap(),
        RebuildRequest::AlreadyBuilding { build: second + 1 },
        "one building build per version"
    );
}

#[sqlx::test(migrator = "crate::startup::MIGRATOR")]
async fn a_rebuild_of_a_version_nobody_declared_is_refused(pool: PgPool) {
    let refused = request_rebuild(&pool, 41, "test").await;

    assert!(
        matches!(refused, Err(RebuildError::UnknownVersion(41))),
        "{refused:?}"
    );
}

#[sqlx::test(migrator = "crate::startup::MIGRATOR")]
async fn a_version_is_kept_while_a_query_api_reads_it(pool: PgPool) {
    live(&pool, &READ_MODEL).await;
    live(&pool, &NEXT).await;
    reader(&pool, READ_MODEL.version, HOUR).await;

    assert_eq!(
        plan_drops(&pool, Duration::ZERO).await.unwrap(),
        Vec::<i32>::new()
    );
    let kept: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT drop_after FROM read_model_versions WHERE version = $1")
            .bind(READ_MODEL.version)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(kept, None, "no drop time while a reader runs");
}

#[sqlx::test(migrator = "crate::startup::MIGRATOR")]
async fn the_newest_version_is_never_dropped_even_unread(pool: PgPool) {
    live(&pool, &READ_MODEL).await;

    assert_eq!(
        plan_drops(&pool, Duration::ZERO).await.unwrap(),
        Vec::<i32>::new()
    );
}

#[sqlx::test(migrator = "crate::startup::MIGRATOR")]
async fn an_unread_older_version_is_dropped_after_the_grace_period(pool: PgPool) {
    let old = live(&pool, &READ_MODEL).await;
    live(&pool, &NEXT).await;
    let query_api = reader(&pool, READ_MODEL.version, HOUR).await;
    stop_reader(&pool, query_api).await;

    assert_eq!(
        plan_drops(&pool, HOUR).await.unwrap(),
        Vec::<i32>::new(),
        "within the grace period"
    );
    let after: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT drop_after FROM read_model_versions WHERE version = $1")
            .bind(READ_MODEL.version)
            .fetch_one(&pool)
            .await
            .unwrap();
    let after = after.unwrap();
    assert!(
        after > chrono::Utc::now() + chrono::Duration::minutes(59),
        "{after}"
    );

    assert_eq!(
        plan_drops(&pool, Duration::ZERO).await.unwrap(),
        [READ_MODEL.version]
    );
    assert!(drop_version(&pool, READ_MODEL.version).await.unwrap());
    assert!(!schema_exists(&pool, &super::views_schema(READ_MODEL.version)).await);
    assert!(!schema_exists(&pool, &super::build_schema(READ_MODEL.version, old)).await);
    assert!(schema_exists(&pool, &super::views_schema(NEXT.version)).await);

    // Declared again (a rollback after the drop): built again from offset 0.
    let again = declare(&pool, &READ_MODEL, "rollback").await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].state, BuildState::Building);
    assert!(again[0].build > old);
}

#[sqlx::test(migrator = "crate::startup::MIGRATOR")]
async fn a_query_api_registering_after_the_plan_keeps_its_version(pool: PgPool) {
    live(&pool, &READ_MODEL).await;
    live(&pool, &NEXT).await;
    assert_eq!(
        plan_drops(&pool, Duration::ZERO).await.unwrap(),
        [READ_MODEL.version]
    );

    reader(&pool, READ_MODEL.version, HOUR).await;

    assert!(
        !drop_version(&pool, READ_MODEL.version).await.unwrap(),
        "the drop checks again under the version's lock"
    );
    assert!(schema_exists(&pool, &super::views_schema(READ_MODEL.version)).await);
}

/// What the releases before declared versions left: `projection_versions`, a live build
/// `rm_v1` last written `written_ago`, and `live` views onto it.
async fn legacy_layout(pool: &PgPool, written_ago: chrono::Duration) {
    sqlx::raw_sql(
        "CREATE TABLE projection_versions (version INTEGER PRIMARY KEY, state TEXT NOT NULL, \
         requested_by TEXT NOT NULL); \
         INSERT INTO projection_versions VALUES (1, 'live', 'projection-service'); \
         CREATE SCHEMA rm_v1; \
         CREATE TABLE rm_v1.projection_offsets (topic TEXT, partition INTEGER, next_offset BIGINT, \
         updated_at TIMESTAMPTZ); \
         CREATE SCHEMA live; \
         CREATE VIEW live.projection_offsets AS SELECT * FROM rm_v1.projection_offsets;",
    )
    .execute(pool)
    .await
    .unwrap();
    sqlx::query("INSERT INTO rm_v1.projection_offsets VALUES ('t', 0, 7, now() - make_interval(secs => $1))")
        .bind(written_ago.as_seconds_f64())
        .execute(pool)
        .await
        .unwrap();
}

async fn live_shows(pool: &PgPool) -> Option<String> {
    sqlx::query_scalar("SELECT obj_description('live'::regnamespace, 'pg_namespace')")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[sqlx::test(migrator = "crate::startup::MIGRATOR")]
async fn the_legacy_layout_keeps_its_live_views_until_it_is_dropped(pool: PgPool) {
    legacy_layout(&pool, chrono::Duration::minutes(5)).await;

    live(&pool, &READ_MODEL).await;

    assert_eq!(
        live_shows(&pool).await,
        None,
        "live is still the legacy one's"
    );
    let old: i64 = sqlx::query_scalar("SELECT next_offset FROM live.projection_offsets")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(old, 7);

    assert_eq!(super::drop_legacy(&pool).await.unwrap(), ["rm_v1"]);
    assert!(!schema_exists(&pool, "rm_v1").await);
    assert_eq!(
        live_shows(&pool).await.as_deref(),
        Some(super::views_schema(READ_MODEL.version).as_str())
    );
    let absent: bool = sqlx::query_scalar("SELECT to_regclass('projection_versions') IS NULL")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(absent);
    assert!(matches!(
        super::drop_legacy(&pool).await,
        Err(super::LegacyDropError::NotPresent)
    ));
}

#[sqlx::test(migrator = "crate::startup::MIGRATOR")]
async fn the_legacy_layout_is_not_dropped_while_its_projector_writes_or_nothing_replaces_it(
    pool: PgPool,
) {
    legacy_layout(&pool, chrono::Duration::seconds(1)).await;
    assert!(matches!(
        super::drop_legacy(&pool).await,
        Err(super::LegacyDropError::NoLiveVersion)
    ));

    live(&pool, &READ_MODEL).await;

    assert!(matches!(
        super::drop_legacy(&pool).await,
        Err(super::LegacyDropError::StillWritten { build: 1, .. })
    ));
    assert!(schema_exists(&pool, "rm_v1").await);
}
