//! `fmctl log migrate --generation 2`: copies every event topic into a new generation of topics
//! with the personal data of the first release's records sealed (docs/privacy.md, "Logs written
//! before this change"; the steps in docs/operations.md, "Moving to a new log generation").
//!
//! Each record of `<prefix>.<aggregate>.events` goes to the same partition of
//! `<prefix>.g2.<aggregate>.events`, in order, with its key, headers and timestamp. Every
//! `BookingRequested` v1 (the deceased's name and the contacts in plaintext) is rewritten as v2:
//! its upcast form with the personal data sealed under the booking's data key (made in
//! `privacy.data_keys` if the booking has none; a booking erased already gets a box sealed under
//! a key that is thrown away at once, which every reader reads as erased), and its
//! `fm-event-version` header set to 2. Every other record is copied byte for byte.
//!
//! The target topics are created with the source's partition count and the deployment's policy.
//! The command refuses to write into target topics that hold records unless `--resume` is given;
//! then each partition continues after the records it already holds (a copy is record for
//! record, so the first N of the target are the first N of the source). Resuming a finished
//! copy copies nothing: the migration is resumable, and idempotent under `--resume`.

use std::{collections::BTreeMap, time::Duration};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use domain::booking::{PersonalData, SealedPersonal};
use event_log::{KafkaSettings, Topics, consumer, producer::headers};
use futures::StreamExt as _;
use privacy::{KeyStore, PrivacyError};
use rdkafka::{
    ClientConfig, Message as _, Timestamp,
    message::{Header, Headers as _, OwnedHeaders},
    producer::{FutureProducer, FutureRecord},
};
use schemas::{AggregateType, SchemaRegistry};
use serde::Serialize;

#[derive(Debug, Subcommand)]
pub(crate) enum LogCommand {
    /// Copy every event topic into a new generation (`<prefix>.g2.<topic>`) with the plaintext
    /// personal data of `BookingRequested` v1 sealed; everything else byte for byte, in order.
    #[command(
        after_help = "Examples:\n  fmctl log migrate --generation 2\n  fmctl log migrate --generation 2 --resume   # after an interrupted run\n\nThen move the services to FM_KAFKA__TOPIC_PREFIX=<prefix>.g2 (docs/operations.md,\n\"Moving to a new log generation\")."
    )]
    Migrate(MigrateArgs),
}

#[derive(Debug, Args)]
pub(crate) struct MigrateArgs {
    /// The generation to write; 2 is the only one there is (the first release's plaintext
    /// sealed).
    #[arg(long)]
    generation: u32,
    /// Continue into target topics that already hold records (an interrupted run): each
    /// partition resumes after what it holds.
    #[arg(long)]
    resume: bool,
    /// Print one JSON document per topic instead of text.
    #[arg(long)]
    json: bool,
}

/// What the migration did to one topic.
#[derive(Debug, Default, Serialize)]
struct TopicReport {
    source: String,
    target: String,
    partitions: i32,
    /// Records of the source.
    records: u64,
    /// Records copied by this run.
    copied: u64,
    /// Records the target held already (`--resume`).
    already_copied: u64,
    /// `BookingRequested` v1 records rewritten as v2, sealed.
    sealed: u64,
    /// Of those, the bookings erased already (sealed under a key thrown away).
    sealed_erased: u64,
}

pub(crate) async fn log(command: LogCommand) -> anyhow::Result<()> {
    let LogCommand::Migrate(args) = command;
    if args.generation != 2 {
        bail!(
            "generation {} is not known: 2 (the first release's plaintext sealed) is the only one",
            args.generation
        );
    }
    let kafka = crate::inspect::kafka_settings()?;
    let keys = crate::privacy::key_store().await?.context(
        "FM_PRIVACY__MASTER_KEYS is not set: the migration seals personal data with the data keys",
    )?;
    let reports = migrate(&kafka, &keys, args.generation, args.resume).await?;
    for report in &reports {
        if args.json {
            println!("{}", serde_json::to_string(report)?);
        } else {
            println!(
                "{} -> {}: {} partitions, {} records, {} copied now, {} copied before, {} BookingRequested v1 sealed ({} of them erased)",
                report.source,
                report.target,
                report.partitions,
                report.records,
                report.copied,
                report.already_copied,
                report.sealed,
                report.sealed_erased
            );
        }
    }
    if !args.json {
        eprintln!(
            "done: move the services to FM_KAFKA__TOPIC_PREFIX={} (docs/operations.md, \"Moving to a new log generation\")",
            target_prefix(&kafka.topic_prefix, args.generation)
        );
    }
    Ok(())
}

fn target_prefix(prefix: &str, generation: u32) -> String {
    format!("{prefix}.g{generation}")
}

async fn migrate(
    kafka: &KafkaSettings,
    keys: &KeyStore,
    generation: u32,
    resume: bool,
) -> anyhow::Result<Vec<TopicReport>> {
    let registry = SchemaRegistry::load().context("Failed to compile the event schemas")?;
    let source_topics = Topics::new(&kafka.topic_prefix);
    let target_settings = KafkaSettings {
        topic_prefix: target_prefix(&kafka.topic_prefix, generation),
        ..kafka.clone()
    };
    let target_topics = Topics::new(&target_settings.topic_prefix);
    let pairs: Vec<(String, String)> = AggregateType::ALL
        .into_iter()
        .map(|aggregate| {
            (
                source_topics.events(aggregate),
                target_topics.events(aggregate),
            )
        })
        .collect();

    // The source's partitions and offsets.
    let settings = kafka.clone();
    let sources: Vec<String> = pairs.iter().map(|(source, _)| source.clone()).collect();
    let (reader, source_marks) = tokio::task::spawn_blocking(move || {
        let reader = consumer::manual_consumer(&settings, "fmctl-migrate")?;
        let partitions = consumer::partitions(&reader, &sources, &settings)?;
        let marks = consumer::watermarks(&reader, &partitions, &settings)?;
        Ok::<_, event_log::LogError>((reader, marks))
    })
    .await?
    .map_err(|error| crate::inspect::explain(error, kafka))?;
    let counts: Vec<i32> = pairs
        .iter()
        .map(|(source, _)| partitions_in(source, &source_marks))
        .collect();
    let partitions = counts.iter().copied().max().unwrap_or(0);
    if counts.iter().any(|count| *count != partitions) {
        bail!(
            "the event topics have different partition counts ({counts:?}); migrate them by hand"
        );
    }

    let held = prepare_targets(kafka, &target_settings, &pairs, partitions, resume).await?;
    let copier = Copier {
        reader,
        producer: ClientConfig::new()
            .set("bootstrap.servers", &kafka.brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set(
                "message.timeout.ms",
                kafka.delivery_timeout.as_millis().to_string(),
            )
            .create()
            .context("Failed to create a Kafka producer")?,
        registry,
        keys,
        kafka,
        source_marks,
        held,
        partitions,
    };
    let mut reports = Vec::new();
    for (source, target) in &pairs {
        reports.push(copier.copy_topic(source, target).await?);
    }
    Ok(reports)
}

/// Creates the target topics (the deployment's policy, the source's partition count), checks
/// them, and returns how many records each target partition holds; refuses non-empty targets
/// unless `resume`.
async fn prepare_targets(
    kafka: &KafkaSettings,
    target_settings: &KafkaSettings,
    pairs: &[(String, String)],
    partitions: i32,
    resume: bool,
) -> anyhow::Result<BTreeMap<(String, i32), i64>> {
    let generation = &target_settings.topic_prefix;
    event_log::topics::ensure_topics(
        &KafkaSettings {
            partitions,
            ..target_settings.clone()
        },
        false,
    )
    .await
    .with_context(|| {
        format!(
            "Failed to create the topics {generation}.* on {}",
            kafka.brokers
        )
    })?;
    let targets: Vec<String> = pairs.iter().map(|(_, target)| target.clone()).collect();
    let check = target_settings.clone();
    let target_marks = tokio::task::spawn_blocking(move || {
        let probe = consumer::manual_consumer(&check, "fmctl-migrate-target")?;
        let partitions = consumer::partitions(&probe, &targets, &check)?;
        consumer::watermarks(&probe, &partitions, &check)
    })
    .await?
    .map_err(|error| crate::inspect::explain(error, kafka))?;
    for (_, target) in pairs {
        let count = partitions_in(target, &target_marks);
        if count != partitions {
            bail!(
                "{target} has {count} partitions where the source has {partitions}: delete it, or migrate by hand"
            );
        }
    }
    let held: BTreeMap<(String, i32), i64> = target_marks
        .iter()
        .map(|(tp, (low, high))| (tp.clone(), high - low))
        .collect();
    let nonempty: Vec<String> = held
        .iter()
        .filter(|(_, count)| **count > 0)
        .map(|((topic, partition), count)| format!("{topic}[{partition}] holds {count}"))
        .collect();
    if !nonempty.is_empty() && !resume {
        bail!(
            "the target topics are not empty ({}): pass --resume to continue an interrupted migration",
            nonempty.join(", ")
        );
    }

    Ok(held)
}

fn partitions_in(topic: &str, marks: &BTreeMap<(String, i32), (i64, i64)>) -> i32 {
    i32::try_from(marks.keys().filter(|(t, _)| t == topic).count()).unwrap_or(i32::MAX)
}

/// What copying a topic needs: the source reader, the producer, the keys, and where each
/// partition stands.
struct Copier<'a> {
    reader: rdkafka::consumer::StreamConsumer,
    producer: FutureProducer,
    registry: SchemaRegistry,
    keys: &'a KeyStore,
    kafka: &'a KafkaSettings,
    /// The source's (low, high) offsets by (topic, partition).
    source_marks: BTreeMap<(String, i32), (i64, i64)>,
    /// How many records each target partition holds already.
    held: BTreeMap<(String, i32), i64>,
    partitions: i32,
}

impl Copier<'_> {
    /// Copies `source` into `target`, partition for partition, after what `target` holds.
    async fn copy_topic(&self, source: &str, target: &str) -> anyhow::Result<TopicReport> {
        let mut report = TopicReport {
            source: source.to_owned(),
            target: target.to_owned(),
            partitions: self.partitions,
            ..TopicReport::default()
        };
        let mut positions = BTreeMap::new();
        let mut ends = BTreeMap::new();
        for ((topic, partition), (low, high)) in &self.source_marks {
            if topic != source {
                continue;
            }
            let done = self
                .held
                .get(&(target.to_owned(), *partition))
                .copied()
                .unwrap_or(0);
            report.records += u64::try_from(high - low).unwrap_or(0);
            report.already_copied += u64::try_from(done).unwrap_or(0);
            let from = low + done;
            if from > *high {
                bail!(
                    "{target}[{partition}] holds {done} records, more than {source}[{partition}] has ({}): not a copy of it",
                    high - low
                );
            }
            if from < *high {
                positions.insert((topic.clone(), *partition), from);
                ends.insert((topic.clone(), *partition), *high);
            }
        }
        if positions.is_empty() {
            return Ok(report);
        }
        consumer::assign(&self.reader, &positions)
            .map_err(|error| crate::inspect::explain(error, self.kafka))?;
        let mut stream = self.reader.stream();
        while !ends.is_empty() {
            let message = tokio::time::timeout(Duration::from_secs(30), stream.next())
                .await
                .context("the broker delivered nothing for 30 s although records remain")?
                .context("the broker closed the stream")?
                .context("Failed to read the source topic")?;
            let tp = (message.topic().to_owned(), message.partition());
            let Some(end) = ends.get(&tp).copied() else {
                continue;
            };
            let payload = message.payload().unwrap_or_default();
            let (payload, headers, sealed) =
                rewrite(&self.registry, self.keys, payload, message.headers()).await?;
            if let Some(erased) = sealed {
                report.sealed += 1;
                report.sealed_erased += u64::from(erased);
            }
            let mut record = FutureRecord::to(target)
                .partition(message.partition())
                .payload(&payload)
                .headers(headers);
            if let Some(key) = message.key() {
                record = record.key(key);
            }
            if let Timestamp::CreateTime(at) | Timestamp::LogAppendTime(at) = message.timestamp() {
                record = record.timestamp(at);
            }
            self.producer
                .send(record, self.kafka.delivery_timeout)
                .await
                .map_err(|(error, _)| error)
                .with_context(|| format!("Failed to write to {target}"))?;
            report.copied += 1;
            if message.offset() + 1 >= end {
                ends.remove(&tp);
            }
        }
        Ok(report)
    }
}

/// The record as the new generation holds it: a `BookingRequested` v1 sealed (and whether its
/// booking was erased already), anything else as it was.
async fn rewrite(
    registry: &SchemaRegistry,
    keys: &KeyStore,
    payload: &[u8],
    headers: Option<&rdkafka::message::BorrowedHeaders>,
) -> anyhow::Result<(Vec<u8>, OwnedHeaders, Option<bool>)> {
    let copy_headers = |version: Option<&str>| {
        let mut owned = OwnedHeaders::new();
        if let Some(headers) = headers {
            for header in headers.iter() {
                let value = if header.key == headers::EVENT_VERSION && version.is_some() {
                    version.map(str::as_bytes)
                } else {
                    header.value
                };
                owned = owned.insert(Header {
                    key: header.key,
                    value,
                });
            }
        }
        owned
    };
    let envelope = match registry.validate_envelope_bytes(payload) {
        Ok(envelope)
            if envelope.event_type == "BookingRequested" && envelope.event_version == 1 =>
        {
            envelope
        }
        // Everything else (and a record that is not an envelope at all) byte for byte.
        _ => return Ok((payload.to_vec(), copy_headers(None), None)),
    };
    // Only the step that seals (v1 → v2): the migration changes what it must and nothing else,
    // so later versions' fields (v3's statement) are left to the readers' upcasts.
    let mut upcast =
        schemas::upcast::upcast(&envelope, 2).map_err(|missing| anyhow::anyhow!("{missing}"))?;
    let booking_id = envelope.aggregate_id;
    let plaintext: PersonalData =
        serde_json::from_value(upcast.data["personal"]["plaintext"].clone()).with_context(
            || format!("BookingRequested v1 of booking {booking_id} has no readable personal data"),
        )?;
    let (sealed, erased) = match keys.seal(booking_id, &plaintext).await {
        Ok(sealed) => (sealed, false),
        // Erased already: sealed under a key nobody keeps, so it opens nowhere.
        Err(PrivacyError::Erased(_)) => (
            SealedPersonal::Encrypted(privacy::crypto::seal(
                &privacy::DataKey::generate(),
                uuid::Uuid::new_v4(),
                booking_id,
                &plaintext,
            )),
            true,
        ),
        Err(error) => {
            return Err(error).context(format!("Failed to seal booking {booking_id}"));
        }
    };
    upcast.data["personal"] = serde_json::to_value(&sealed)?;
    let bytes = serde_json::to_vec(&upcast)?;
    // What the new generation holds must be a valid v2 record with no plaintext left.
    let checked = registry
        .validate_bytes(&bytes)
        .map_err(|violation| anyhow::anyhow!("{}", violation.without_values()))?;
    if checked.event_version != 2 {
        bail!("booking {booking_id}: the sealed record is not v2");
    }
    Ok((bytes, copy_headers(Some("2")), Some(erased)))
}
