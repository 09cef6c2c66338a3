//! A batch abandoned at shutdown is read again, and nothing after it commits first.
//!
//! The saga runner's consumer shuts down when it loses its lock, which happens when PostgreSQL
//! restarts, which is also when batches fail. The consumer once abandoned the failing batch and
//! then took the next ready one, committed it, and stored offsets past the abandoned records:
//! they were never read again (found by the cluster soak: 245 sagas stuck behind gaps).

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use batch_consumer::{
    Backoff, BatchApplier, BatchConsumer, ConsumerConfig, OffsetTable, RecordOutcome,
};
use event_log::{EventProducer, Record, consumer::TopicPartition};
use platform::shutdown::CancellationToken;
use rdkafka::message::OwnedHeaders;
use sqlx::{PgConnection, PgPool};

const OFFSETS: OffsetTable = OffsetTable::new("offsets");
const RECORDS: i64 = 40;

/// Counts every record it applies; fails the record at `fail_at` once, shutting the consumer
/// down as it fails (as the loss of the saga runner's lock does while PostgreSQL is away).
#[derive(Clone)]
struct FailOnce {
    fail_at: Option<i64>,
    failed: Arc<AtomicBool>,
    shutdown: CancellationToken,
}

impl BatchApplier for FailOnce {
    type Error = anyhow::Error;

    async fn apply(
        &self,
        tx: &mut PgConnection,
        record: &Record<'_>,
    ) -> anyhow::Result<RecordOutcome> {
        let offset = record.position().offset;
        if Some(offset) == self.fail_at && !self.failed.swap(true, Ordering::SeqCst) {
            self.shutdown.cancel();
            anyhow::bail!("PostgreSQL went away");
        }
        sqlx::query("INSERT INTO applied (record_offset) VALUES ($1)")
            .bind(offset)
            .execute(&mut *tx)
            .await?;
        Ok(RecordOutcome::Applied)
    }

    fn committed(&self, _: &std::collections::BTreeMap<TopicPartition, i64>, _: &[RecordOutcome]) {}
}

async fn stored_next(pool: &PgPool, tp: &TopicPartition) -> anyhow::Result<i64> {
    let stored = OFFSETS.stored(&mut *pool.acquire().await?).await?;
    Ok(stored.get(tp).copied().unwrap_or(0))
}

#[tokio::test]
async fn a_batch_abandoned_at_shutdown_is_read_again_and_nothing_after_it_commits()
-> anyhow::Result<()> {
    let pool = PgPool::connect(&test_support::fresh_database().await?).await?;
    sqlx::query(
        "CREATE TABLE offsets (topic TEXT NOT NULL, partition INT NOT NULL, next_offset BIGINT NOT NULL, \
         updated_at TIMESTAMPTZ NOT NULL DEFAULT now(), PRIMARY KEY (topic, partition))",
    )
    .execute(&pool)
    .await?;
    sqlx::query("CREATE TABLE applied (record_offset BIGINT PRIMARY KEY)")
        .execute(&pool)
        .await?;

    let kafka = test_support::fresh_kafka().await?;
    let topic = event_log::Topics::new(&kafka.topic_prefix)
        .event_topics()
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("no event topic"))?;
    let producer = EventProducer::new(&kafka)?;
    let mut partition = None;
    for n in 0..RECORDS {
        let landed = producer
            .send(
                &topic,
                Some(b"one-key"),
                format!("record {n}").as_bytes(),
                OwnedHeaders::new(),
            )
            .await?;
        partition = Some(landed.partition);
    }
    let tp = (
        topic.clone(),
        partition.ok_or_else(|| anyhow::anyhow!("nothing sent"))?,
    );
    let config = ConsumerConfig {
        kafka: kafka.clone(),
        client_id: "abandoned-batch-test".to_owned(),
        topics: vec![topic],
        // One record per batch: every record after the failing one is a batch of its own,
        // ready while the failing one is abandoned.
        batch_size: 1,
        backoff: Backoff {
            first: Duration::from_millis(10),
            max: Duration::from_millis(10),
        },
    };

    // Six rounds, each failing (and shutting down on) a later record: a consumer that goes on
    // after abandoning a batch does so by chance, so one round alone could miss it.
    for round in 0..6 {
        let fail_at = 5 + round * 5;
        let shutdown = CancellationToken::new();
        let applier = FailOnce {
            fail_at: Some(fail_at),
            failed: Arc::new(AtomicBool::new(false)),
            shutdown: shutdown.clone(),
        };
        let consumer = BatchConsumer::start(config.clone(), pool.clone(), OFFSETS, applier).await?;
        tokio::time::timeout(Duration::from_mins(1), consumer.run(shutdown))
            .await
            .map_err(|_| anyhow::anyhow!("round {round}: the consumer did not stop at shutdown"))?;
        assert_eq!(
            stored_next(&pool, &tp).await?,
            fail_at,
            "round {round}: the offsets must stop at the abandoned record, not pass it"
        );
    }

    // A last consumer with nothing failing reads the rest: every record applied exactly once.
    let shutdown = CancellationToken::new();
    let applier = FailOnce {
        fail_at: None,
        failed: Arc::new(AtomicBool::new(false)),
        shutdown: shutdown.clone(),
    };
    let consumer = BatchConsumer::start(config, pool.clone(), OFFSETS, applier).await?;
    let running = tokio::spawn(consumer.run(shutdown.clone()));
    let deadline = tokio::time::Instant::now() + Duration::from_mins(1);
    while stored_next(&pool, &tp).await? < RECORDS {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the last consumer did not read every record"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shutdown.cancel();
    running.await?;
    let rows: Vec<i64> = sqlx::query_scalar("SELECT record_offset FROM applied ORDER BY 1")
        .fetch_all(&pool)
        .await?;
    // A fresh topic: its records are at offsets 0, 1, 2, …
    let expected: Vec<i64> = (0..RECORDS).collect();
    assert_eq!(rows, expected, "every record applied once, none skipped");
    Ok(())
}
