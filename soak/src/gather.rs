//! Reading what the checks need from the running (and by now quiet) stack: the log with a raw
//! Kafka consumer, the read models and saga rows with SQL, the gateway simulator's ledger over
//! HTTP, the SMTP sink's Maildir from disk.
//!
//! Only table and topic names and documented wire formats are shared with the system
//! (`docs/architecture.md`, `docs/read-side.md`, `docs/payments.md`, `docs/saga.md`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rdkafka::{
    ClientConfig, Message, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer},
    message::Headers,
};
use serde_json::Value;
use sqlx::{PgPool, Row, postgres::PgPoolOptions};
use uuid::Uuid;

use crate::check::{
    BookingRow, Capture, DeadLetter, FacilityRow, Ledger, Mail, OpenSaga, PaymentRow, ReadModels,
    Refund, ReservationRow,
};
use crate::history::{Kind, Money, Position, RawRecord, Slot};

/// Records read, and the end offset of each partition when the read began.
pub type TopicRead = (Vec<RawRecord>, BTreeMap<(String, i32), i64>);

/// Where the stack is.
#[derive(Debug, Clone)]
pub struct Stack {
    pub brokers: String,
    pub topic_prefix: String,
    pub database_url: String,
    pub gateway_url: String,
    pub maildir: std::path::PathBuf,
}

impl Stack {
    pub fn event_topics(&self) -> Vec<String> {
        Kind::ALL
            .into_iter()
            .map(|kind| kind.topic(&self.topic_prefix))
            .collect()
    }

    pub fn dead_letter_topic(&self) -> String {
        format!("{}.dead-letter", self.topic_prefix)
    }
}

fn consumer(brokers: &str, fetch_bytes: usize) -> anyhow::Result<BaseConsumer> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("client.id", "soak-check")
        // Manual assignment: the group is never joined and nothing is committed.
        .set("group.id", format!("soak-check-{}", Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", "10")
        // Tansu computes each fetch's size over the whole rest of the partition, so small
        // fetches keep each one cheap on a long log (docs/reliability.md, "Chaos soak").
        .set("max.partition.fetch.bytes", fetch_bytes.to_string())
        .create()
        .context("Failed to create the Kafka consumer")
}

/// The partitions of `topics` and the end offset of each.
pub fn end_offsets(
    brokers: &str,
    topics: &[String],
    timeout: Duration,
) -> anyhow::Result<BTreeMap<(String, i32), i64>> {
    let consumer = consumer(brokers, 64 * 1024)?;
    let mut ends = BTreeMap::new();
    for topic in topics {
        let metadata = consumer
            .fetch_metadata(Some(topic), timeout)
            .with_context(|| format!("Failed to read the metadata of {topic}"))?;
        let found = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
            .with_context(|| format!("Topic {topic} does not exist"))?;
        for partition in found.partitions() {
            let (_, high) = consumer
                .fetch_watermarks(topic, partition.id(), timeout)
                .with_context(|| format!("Failed to read the end of {topic}:{}", partition.id()))?;
            ends.insert((topic.clone(), partition.id()), high);
        }
    }
    Ok(ends)
}

/// Reads every record of `topics` from the start up to the end each partition had when the
/// read began. Fails if no record arrives for `stall` while some are still missing.
pub fn read_topics(
    brokers: &str,
    topics: &[String],
    stall: Duration,
    fetch_bytes: usize,
) -> anyhow::Result<TopicRead> {
    let ends = end_offsets(brokers, topics, Duration::from_secs(30))?;
    let consumer = consumer(brokers, fetch_bytes)?;
    let mut assignment = TopicPartitionList::new();
    for (topic, partition) in ends.keys() {
        assignment
            .add_partition_offset(topic, *partition, Offset::Beginning)
            .context("Failed to build the assignment")?;
    }
    consumer
        .assign(&assignment)
        .context("Failed to assign the partitions")?;
    let mut remaining: BTreeMap<(String, i32), i64> = ends
        .iter()
        .filter(|(_, end)| **end > 0)
        .map(|(key, end)| (key.clone(), *end))
        .collect();
    let mut records = Vec::new();
    let mut last_progress = Instant::now();
    while !remaining.is_empty() {
        let Some(message) = consumer.poll(Duration::from_millis(500)) else {
            if last_progress.elapsed() > stall {
                bail!(
                    "the log read stalled: nothing for {}s with {} records read, still to read up to {remaining:?}",
                    stall.as_secs(),
                    records.len()
                );
            }
            continue;
        };
        let message = message.context("Kafka consumer error")?;
        last_progress = Instant::now();
        let key = (message.topic().to_owned(), message.partition());
        let Some(end) = remaining.get(&key).copied() else {
            continue;
        };
        if message.offset() >= end {
            remaining.remove(&key);
            continue;
        }
        if message.offset() + 1 >= end {
            remaining.remove(&key);
        }
        let headers = message
            .headers()
            .map(|headers| {
                headers
                    .iter()
                    .map(|header| {
                        (
                            header.key.to_owned(),
                            header.value.map(<[u8]>::to_vec).unwrap_or_default(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        records.push(RawRecord {
            position: Position::new(message.topic(), message.partition(), message.offset()),
            key: message.key().map(<[u8]>::to_vec),
            value: message.payload().map(<[u8]>::to_vec),
            headers,
        });
    }
    Ok((records, ends))
}

/// The dead letters, with their reason and origin headers.
pub fn dead_letters(records: &[RawRecord]) -> Vec<DeadLetter> {
    records
        .iter()
        .map(|record| {
            let origin = match (
                record.header("fm-origin-topic"),
                record
                    .header("fm-origin-partition")
                    .and_then(|p| p.parse().ok()),
                record
                    .header("fm-origin-offset")
                    .and_then(|o| o.parse().ok()),
            ) {
                (Some(topic), Some(partition), Some(offset)) => {
                    Some(Position::new(&topic, partition, offset))
                }
                _ => None,
            };
            DeadLetter {
                position: record.position.clone(),
                reason: record.header("fm-dead-letter-reason"),
                origin,
                value: record.value.clone().unwrap_or_default(),
            }
        })
        .collect()
}

pub async fn connect(database_url: &str) -> anyhow::Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(10))
        .connect(database_url)
        .await
        .context("Failed to connect to PostgreSQL")
}

fn version(value: i64) -> u64 {
    u64::try_from(value).unwrap_or_default()
}

/// The live read models (`live.*` views, `docs/read-side.md`).
pub async fn read_models(pool: &PgPool) -> anyhow::Result<ReadModels> {
    let bookings = sqlx::query(
        "SELECT booking_id, facility_id, status, version, price_amount_minor, price_currency FROM live.bookings",
    )
    .fetch_all(pool)
    .await
    .context("Failed to read live.bookings")?
    .into_iter()
    .map(|row| -> Result<_, sqlx::Error> {
        Ok(BookingRow {
            booking_id: row.try_get("booking_id")?,
            facility_id: row.try_get("facility_id")?,
            status: row.try_get("status")?,
            version: version(row.try_get("version")?),
            price: Money {
                minor: row.try_get("price_amount_minor")?,
                currency: row.try_get("price_currency")?,
            },
        })
    })
    .collect::<Result<_, _>>()?;
    let facilities = sqlx::query("SELECT facility_id, version FROM live.facilities")
        .fetch_all(pool)
        .await
        .context("Failed to read live.facilities")?
        .into_iter()
        .map(|row| -> Result<_, sqlx::Error> {
            Ok(FacilityRow {
                facility_id: row.try_get("facility_id")?,
                version: version(row.try_get("version")?),
            })
        })
        .collect::<Result<_, _>>()?;
    let reservations =
        sqlx::query("SELECT facility_id, booking_id, slot_start, slot_end FROM live.reservations")
            .fetch_all(pool)
            .await
            .context("Failed to read live.reservations")?
            .into_iter()
            .map(|row| -> Result<_, sqlx::Error> {
                Ok(ReservationRow {
                    facility_id: row.try_get("facility_id")?,
                    booking_id: row.try_get("booking_id")?,
                    slot: Slot {
                        start: row.try_get("slot_start")?,
                        end: row.try_get("slot_end")?,
                    },
                })
            })
            .collect::<Result<_, _>>()?;
    let payments = sqlx::query(
        "SELECT payment_id, booking_id, status, version, amount_minor, currency, capture_reference, refund_reference FROM live.payments",
    )
    .fetch_all(pool)
    .await
    .context("Failed to read live.payments")?
    .into_iter()
    .map(|row| -> Result<_, sqlx::Error> {
        Ok(PaymentRow {
            payment_id: row.try_get("payment_id")?,
            booking_id: row.try_get("booking_id")?,
            status: row.try_get("status")?,
            version: version(row.try_get("version")?),
            amount: Money {
                minor: row.try_get("amount_minor")?,
                currency: row.try_get("currency")?,
            },
            capture_reference: row.try_get("capture_reference")?,
            refund_reference: row.try_get("refund_reference")?,
        })
    })
    .collect::<Result<_, _>>()?;
    let anomalies: i64 = sqlx::query_scalar("SELECT count(*) FROM live.projection_anomalies")
        .fetch_one(pool)
        .await
        .context("Failed to read live.projection_anomalies")?;
    Ok(ReadModels {
        bookings,
        facilities,
        reservations,
        payments,
        anomalies: u64::try_from(anomalies).unwrap_or_default(),
        offsets: projection_offsets(pool).await?,
    })
}

/// `live.projection_offsets`: how far the live read models have read each partition.
pub async fn projection_offsets(pool: &PgPool) -> anyhow::Result<BTreeMap<(String, i32), i64>> {
    sqlx::query("SELECT topic, partition, next_offset FROM live.projection_offsets")
        .fetch_all(pool)
        .await
        .context("Failed to read live.projection_offsets")?
        .into_iter()
        .map(|row| {
            Ok((
                (row.try_get("topic")?, row.try_get("partition")?),
                row.try_get("next_offset")?,
            ))
        })
        .collect()
}

/// Whether the saga runner's schema exists (`saga.sagas`, `docs/saga.md`).
pub async fn saga_schema_exists(pool: &PgPool) -> anyhow::Result<bool> {
    let exists: Option<String> = sqlx::query_scalar("SELECT to_regclass('saga.sagas')::text")
        .fetch_one(pool)
        .await
        .context("Failed to look for the saga schema")?;
    Ok(exists.is_some())
}

/// Saga rows that have not finished (`done` is false).
pub async fn open_sagas(pool: &PgPool) -> anyhow::Result<Vec<OpenSaga>> {
    sqlx::query("SELECT booking_id, stage FROM saga.sagas WHERE NOT done ORDER BY booking_id")
        .fetch_all(pool)
        .await
        .context("Failed to read saga.sagas")?
        .into_iter()
        .map(|row| {
            Ok(OpenSaga {
                booking_id: row.try_get("booking_id")?,
                state: row.try_get("stage")?,
            })
        })
        .collect()
}

/// How long the saga's steps waited: seconds from the saga's row being created (its booking
/// first seen) to its first step, and from each step to the next (`saga.sagas.history`).
/// Not an invariant: a figure for the summary, since a backlog in the saga shows here first.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SagaPace {
    pub steps: i64,
    pub p50: f64,
    pub p90: f64,
    pub max: f64,
}

/// Reads [`SagaPace`]; `None` when no saga performed a step.
pub async fn saga_pace(pool: &PgPool) -> anyhow::Result<Option<SagaPace>> {
    let row = sqlx::query(
        "WITH steps AS ( \
             SELECT s.booking_id, s.created_at, h.ordinal, (h.entry->>'at')::timestamptz AS at \
             FROM saga.sagas s, jsonb_array_elements(s.history) WITH ORDINALITY AS h(entry, ordinal) \
         ), waits AS ( \
             SELECT extract(epoch FROM at - coalesce( \
                 lag(at) OVER (PARTITION BY booking_id ORDER BY ordinal), created_at))::float8 AS wait \
             FROM steps \
         ) \
         SELECT count(*) AS steps, \
             percentile_cont(0.5) WITHIN GROUP (ORDER BY wait) AS p50, \
             percentile_cont(0.9) WITHIN GROUP (ORDER BY wait) AS p90, \
             max(wait) AS max \
         FROM waits",
    )
    .fetch_one(pool)
    .await
    .context("Failed to read the saga's step history")?;
    let steps: i64 = row.try_get("steps")?;
    if steps == 0 {
        return Ok(None);
    }
    Ok(Some(SagaPace {
        steps,
        p50: row.try_get("p50")?,
        p90: row.try_get("p90")?,
        max: row.try_get("max")?,
    }))
}

/// The bookings of the live read model that are not final yet (`requested`, `slot_held`).
pub async fn open_bookings(pool: &PgPool) -> anyhow::Result<i64> {
    sqlx::query_scalar(
        "SELECT count(*) FROM live.bookings WHERE status IN ('requested', 'slot_held')",
    )
    .fetch_one(pool)
    .await
    .context("Failed to count open bookings")
}

fn money(value: &Value) -> Option<Money> {
    Some(Money {
        minor: value.get("amount_minor")?.as_i64()?,
        currency: value.get("currency")?.as_str()?.to_owned(),
    })
}

/// Reads `GET /ledger` (`docs/payments.md`).
pub async fn ledger(client: &reqwest::Client, gateway_url: &str) -> anyhow::Result<Ledger> {
    let body: Value = client
        .get(format!("{gateway_url}/ledger"))
        .send()
        .await
        .context("Failed to reach the gateway simulator")?
        .error_for_status()
        .context("The gateway simulator refused GET /ledger")?
        .json()
        .await
        .context("The ledger is not JSON")?;
    parse_ledger(&body)
}

/// The ledger's JSON as the checks see it.
pub fn parse_ledger(body: &Value) -> anyhow::Result<Ledger> {
    let rows = |field: &str| {
        body.get(field)
            .and_then(Value::as_array)
            .cloned()
            .with_context(|| format!("The ledger has no `{field}` list"))
    };
    let text = |row: &Value, field: &str| {
        row.get(field)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .with_context(|| format!("A ledger row has no `{field}`: {row}"))
    };
    let captures = rows("captures")?
        .iter()
        .map(|row| {
            Ok(Capture {
                reference: text(row, "reference")?,
                booking_id: text(row, "booking_id")?
                    .parse()
                    .context("A capture's booking_id is not a UUID")?,
                amount: row
                    .get("amount")
                    .and_then(money)
                    .with_context(|| format!("A capture has no amount: {row}"))?,
                refunded_minor: row
                    .get("refunded_minor")
                    .and_then(Value::as_i64)
                    .unwrap_or_default(),
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let refunds = rows("refunds")?
        .iter()
        .map(|row| {
            Ok(Refund {
                reference: text(row, "reference")?,
                capture_reference: text(row, "capture_reference")?,
                amount: row
                    .get("amount")
                    .and_then(money)
                    .with_context(|| format!("A refund has no amount: {row}"))?,
            })
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(Ledger { captures, refunds })
}

/// Every message in the Maildir (`new/` and `cur/`).
pub fn mails(maildir: &Path) -> anyhow::Result<Vec<Mail>> {
    let mut mails = Vec::new();
    for folder in ["new", "cur"] {
        let dir = maildir.join(folder);
        if !dir.exists() {
            continue;
        }
        let mut entries: Vec<_> = std::fs::read_dir(&dir)
            .with_context(|| format!("Failed to list {}", dir.display()))?
            .collect::<Result<_, _>>()?;
        entries.sort_by_key(std::fs::DirEntry::file_name);
        for entry in entries {
            let bytes = std::fs::read(entry.path())
                .with_context(|| format!("Failed to read {}", entry.path().display()))?;
            mails.push(parse_mail(
                &format!("{folder}/{}", entry.file_name().to_string_lossy()),
                &bytes,
            ));
        }
    }
    Ok(mails)
}

/// The Message-ID (without its angle brackets) and the `To:` addresses of one message.
pub fn parse_mail(file: &str, bytes: &[u8]) -> Mail {
    let parsed = mail_parser::MessageParser::default().parse_headers(bytes);
    let message_id = parsed
        .as_ref()
        .and_then(|message| message.message_id())
        .map(str::to_owned);
    let to: BTreeSet<String> = parsed
        .as_ref()
        .and_then(|message| message.to())
        .map(|to| {
            to.iter()
                .filter_map(|address| address.address())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    Mail {
        file: file.to_owned(),
        message_id,
        to,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mail_gives_its_message_id_without_brackets_and_every_recipient() {
        let bytes = b"X-Peer: ('127.0.0.1', 5555)\r\nMessage-ID: <confirmation.0b7c3f9e-5d7a-4c1e-9a55-2f7f0a3c9d11@funeral-manager>\r\nTo: \"Byron King\" <byron@example.org>, ada@example.org\r\nSubject: hello\r\n\r\nbody\r\n";
        let mail = parse_mail("new/1", bytes);
        assert_eq!(
            mail.message_id.as_deref(),
            Some("confirmation.0b7c3f9e-5d7a-4c1e-9a55-2f7f0a3c9d11@funeral-manager")
        );
        assert_eq!(
            mail.to,
            BTreeSet::from(["byron@example.org".to_owned(), "ada@example.org".to_owned()])
        );
    }

    #[test]
    fn the_ledger_reads_captures_and_refunds() {
        let body = serde_json::json!({
            "captures": [{"reference": "cap_1", "idempotency_key": "k", "booking_id": "0b7c3f9e-5d7a-4c1e-9a55-2f7f0a3c9d11", "amount": {"amount_minor": 100, "currency": "GBP"}, "refunded_minor": 100}],
            "refunds": [{"reference": "ref_1", "idempotency_key": "r", "capture_reference": "cap_1", "amount": {"amount_minor": 100, "currency": "GBP"}}],
            "declined": 3,
            "totals": {},
        });
        let ledger = parse_ledger(&body).unwrap();
        assert_eq!(ledger.captures[0].refunded_minor, 100);
        assert_eq!(ledger.refunds[0].capture_reference, "cap_1");
    }

    #[test]
    fn a_dead_letter_names_its_origin_from_its_headers() {
        let record = RawRecord {
            position: Position::new("fm.dead-letter", 0, 4),
            key: None,
            value: Some(b"x".to_vec()),
            headers: vec![
                ("fm-dead-letter-reason".into(), b"not JSON".to_vec()),
                ("fm-origin-topic".into(), b"fm.booking.events".to_vec()),
                ("fm-origin-partition".into(), b"2".to_vec()),
                ("fm-origin-offset".into(), b"17".to_vec()),
            ],
        };
        let letter = &dead_letters(&[record])[0];
        assert_eq!(letter.reason.as_deref(), Some("not JSON"));
        assert_eq!(
            letter.origin,
            Some(Position::new("fm.booking.events", 2, 17))
        );
    }
}
