//! The consume-apply-commit loop.
//!
//! The projector assigns itself every partition of every event topic, starting at the offsets
//! stored in Postgres (0 for a partition never read). Each record is applied in one transaction
//! that also stores the partition's next offset, so the offsets can never disagree with the read
//! models. A record that breaks the contract goes to the dead-letter topic, and only then is its
//! offset stored, so it is never lost either.

use std::{collections::BTreeMap, time::Duration};

use event_log::{
    EventProducer, LogError, LogPosition, Topics,
    consumer::{self, TopicPartition},
    producer::headers,
};
use futures::StreamExt;
use platform::shutdown::CancellationToken;
use rdkafka::{
    Message,
    consumer::StreamConsumer,
    message::{BorrowedMessage, Header, OwnedHeaders},
};
use schemas::SchemaRegistry;
use sqlx::{PgConnection, PgPool};

use crate::read_models::{self, Applied, ApplyError};

/// The name under which this projector's offsets are stored.
pub(crate) const PROJECTION: &str = "read_models";

/// Reads the log into the read models until shut down.
pub(crate) struct Projector {
    pool: PgPool,
    consumer: StreamConsumer,
    registry: SchemaRegistry,
    dead_letters: EventProducer,
    topics: Topics,
}

impl std::fmt::Debug for Projector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Projector")
            .field("topics", &self.topics)
            .finish_non_exhaustive()
    }
}

/// Loads the stored offsets of every partition of the event topics (0 where none is stored).
async fn stored_offsets(
    pool: &PgPool,
    partitions: Vec<TopicPartition>,
) -> Result<BTreeMap<TopicPartition, i64>, sqlx::Error> {
    let rows: Vec<(String, i32, i64)> = sqlx::query_as(
        "SELECT topic, partition, next_offset FROM projection_offsets WHERE projection = $1",
    )
    .bind(PROJECTION)
    .fetch_all(pool)
    .await?;
    let stored: BTreeMap<TopicPartition, i64> = rows
        .into_iter()
        .map(|(topic, partition, offset)| ((topic, partition), offset))
        .collect();
    Ok(partitions
        .into_iter()
        .map(|tp| {
            let offset = stored.get(&tp).copied().unwrap_or(0);
            (tp, offset)
        })
        .collect())
}

async fn store_offset(conn: &mut PgConnection, position: &LogPosition) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO projection_offsets (projection, topic, partition, next_offset) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (projection, topic, partition) DO UPDATE SET next_offset = EXCLUDED.next_offset, updated_at = now()",
    )
    .bind(PROJECTION)
    .bind(&position.topic)
    .bind(position.partition)
    .bind(position.offset + 1)
    .execute(conn)
    .await?;
    Ok(())
}

impl Projector {
    /// Assigns the partitions at their stored offsets.
    pub(crate) async fn start(
        pool: PgPool,
        settings: &event_log::KafkaSettings,
        registry: SchemaRegistry,
    ) -> anyhow::Result<Self> {
        let topics = Topics::new(&settings.topic_prefix);
        let consumer = consumer::manual_consumer(settings, "projection-service")?;
        let event_topics = topics.event_topics();
        let (consumer, partitions) = {
            let settings = settings.clone();
            tokio::task::spawn_blocking(move || {
                let partitions = consumer::partitions(&consumer, &event_topics, &settings)?;
                Ok::<_, LogError>((consumer, partitions))
            })
            .await??
        };
        let offsets = stored_offsets(&pool, partitions).await?;
        consumer::assign(&consumer, &offsets)?;
        tracing::info!(?offsets, "projector assigned");
        let dead_letters = EventProducer::new(settings)?;
        Ok(Self {
            pool,
            consumer,
            registry,
            dead_letters,
            topics,
        })
    }

    /// Runs until `shutdown`; the record in hand is finished first.
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        let mut stream = self.consumer.stream();
        loop {
            let message = tokio::select! {
                () = shutdown.cancelled() => break,
                message = stream.next() => message,
            };
            match message {
                None => break,
                Some(Err(error)) => tracing::warn!(%error, "error reading the log; retrying"),
                Some(Ok(message)) => self.handle_until_done(&message, &shutdown).await,
            }
        }
        tracing::info!("projector stopped");
    }

    /// Handles one record, retrying with backoff while the database or broker is down.
    async fn handle_until_done(&self, message: &BorrowedMessage<'_>, shutdown: &CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.handle(message).await {
                Ok(()) => return,
                Err(error) => {
                    tracing::error!(%error, topic = message.topic(), offset = message.offset(), "could not project a record; retrying");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn handle(&self, message: &BorrowedMessage<'_>) -> anyhow::Result<()> {
        let position = LogPosition {
            topic: message.topic().to_owned(),
            partition: message.partition(),
            offset: message.offset(),
        };
        let envelope = match self
            .registry
            .validate_bytes(message.payload().unwrap_or_default())
        {
            Ok(envelope) => envelope,
            Err(violation) => {
                return self
                    .dead_letter(message, &position, &violation.to_string())
                    .await;
            }
        };
        if self.topics.aggregate_of(&position.topic) != Some(envelope.aggregate_type) {
            let reason = format!(
                "a {} event on topic {}",
                envelope.aggregate_type, position.topic
            );
            return self.dead_letter(message, &position, &reason).await;
        }
        let mut tx = self.pool.begin().await?;
        let applied = match read_models::apply(&mut tx, &self.registry, &envelope).await {
            Ok(applied) => applied,
            Err(ApplyError::Contract(violation)) => {
                drop(tx);
                return self
                    .dead_letter(message, &position, &violation.to_string())
                    .await;
            }
            Err(ApplyError::Database(error)) => return Err(error.into()),
        };
        store_offset(&mut tx, &position).await?;
        tx.commit().await?;
        let outcome = match applied {
            Applied::Changed => "applied",
            Applied::Stale => "stale",
            Applied::Ignored => "ignored",
            Applied::Gap { expected } => {
                tracing::error!(
                    aggregate_id = %envelope.aggregate_id,
                    sequence = envelope.sequence,
                    expected,
                    "gap in an aggregate stream; event not applied"
                );
                "gap"
            }
        };
        metrics::counter!("projection_events_total", "projection" => PROJECTION, "outcome" => outcome).increment(1);
        Ok(())
    }

    /// Sends a record that cannot be used to the dead-letter topic with the reason and its
    /// origin, then stores its offset so the projector moves on.
    async fn dead_letter(
        &self,
        message: &BorrowedMessage<'_>,
        position: &LogPosition,
        reason: &str,
    ) -> anyhow::Result<()> {
        tracing::warn!(%reason, topic = %position.topic, partition = position.partition, offset = position.offset, "dead-lettering a record");
        let partition = position.partition.to_string();
        let offset = position.offset.to_string();
        let record_headers = OwnedHeaders::new()
            .insert(Header {
                key: headers::DEAD_LETTER_REASON,
                value: Some(reason),
            })
            .insert(Header {
                key: headers::ORIGIN_TOPIC,
                value: Some(position.topic.as_str()),
            })
            .insert(Header {
                key: headers::ORIGIN_PARTITION,
                value: Some(partition.as_str()),
            })
            .insert(Header {
                key: headers::ORIGIN_OFFSET,
                value: Some(offset.as_str()),
            });
        self.dead_letters
            .send(
                &self.topics.dead_letter(),
                message.key(),
                message.payload().unwrap_or_default(),
                record_headers,
            )
            .await?;
        let mut tx = self.pool.begin().await?;
        store_offset(&mut tx, position).await?;
        tx.commit().await?;
        metrics::counter!("projection_events_total", "projection" => PROJECTION, "outcome" => "dead_lettered").increment(1);
        Ok(())
    }
}
