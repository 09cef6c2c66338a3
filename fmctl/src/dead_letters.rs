//! `fmctl dead-letters list | show | retry`: what the projector refused, and sending it back.
//!
//! Every reader with a position of its own (the projector, the saga runner) dead-letters a
//! record it cannot use with its original key and bytes and headers naming the reason, the
//! reader and the origin (topic, partition, offset), plus the flow and trace headers the record
//! carried. `list` reads the whole dead-letter topic; `show` reads one dead letter and checks it
//! as a retry would meet it now: the schemas, the topic it would go back to, and decoding into
//! its aggregate's domain event (a reader that has since learned a new event type finds it
//! usable: then `retry` applies it; otherwise `show` says the retry would fail again, and why).

use std::time::Duration;

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use event_log::{KafkaSettings, LogError, Topics, consumer};
use futures::StreamExt;
use rdkafka::consumer::Consumer;
use schemas::SchemaRegistry;
use serde_json::{Value, json};

use crate::inspect::{Out, Output, Record, Start, explain, kafka_settings, scan};

#[derive(Debug, Subcommand)]
pub(crate) enum DeadLettersCommand {
    /// Every dead letter: where it sits, where it came from, why, and when.
    #[command(after_help = "Examples:\n  \
        fmctl dead-letters list\n  \
        fmctl dead-letters list --since 2027-03-01T00:00:00Z --output json\n  \
        fmctl dead-letters list --output json | jq -r 'select(.origin.topic | endswith(\"booking.events\")) | .offset'")]
    List(ListArgs),
    /// One dead letter with its payload decoded and checked against today's contract.
    #[command(after_help = "Examples:\n  \
        fmctl dead-letters show --offset 17\n  \
        fmctl dead-letters show --partition 2 --offset 5 --output json")]
    Show(ShowArgs),
    /// Append a dead letter to its origin topic again, same key and bytes.
    #[command(after_help = "Examples:\n  \
        fmctl dead-letters retry --offset 17\n  \
        fmctl dead-letters retry --partition 2 --offset 5\n\n\
        Fix the cause first (deploy the reader that knows the event, repair the producer): the \
        projector meets the retried record as a new one, and applies it or dead-letters it \
        again with the new reason.")]
    Retry(Position),
}

#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    /// Only dead letters written at or after this instant (RFC 3339).
    #[arg(long, value_name = "RFC3339")]
    since: Option<DateTime<Utc>>,
    #[arg(long, value_enum, default_value_t = Output::Pretty)]
    output: Output,
}

/// A dead letter's place in the dead-letter topic.
#[derive(Debug, Args)]
pub(crate) struct Position {
    /// The partition of the dead-letter topic.
    #[arg(long, default_value_t = 0)]
    partition: i32,
    /// The dead letter's offset in that partition.
    #[arg(long)]
    offset: i64,
}

#[derive(Debug, Args)]
pub(crate) struct ShowArgs {
    #[command(flatten)]
    position: Position,
    #[arg(long, value_enum, default_value_t = Output::Pretty)]
    output: Output,
}

pub(crate) async fn dead_letters(command: DeadLettersCommand) -> anyhow::Result<()> {
    match command {
        DeadLettersCommand::List(args) => list(args).await,
        DeadLettersCommand::Show(args) => show(args).await,
        DeadLettersCommand::Retry(position) => retry(position).await,
    }
}

/// `topic[partition]@offset`, or `?` for what a malformed dead letter does not say.
fn origin_text(record: &Record) -> String {
    let Some(letter) = &record.dead_letter else {
        return "?".to_owned();
    };
    format!(
        "{}[{}]@{}",
        letter.origin_topic.as_deref().unwrap_or("?"),
        letter
            .origin_partition
            .map_or_else(|| "?".to_owned(), |p| p.to_string()),
        letter
            .origin_offset
            .map_or_else(|| "?".to_owned(), |o| o.to_string()),
    )
}

fn time_text(time: Option<DateTime<Utc>>) -> String {
    time.map_or_else(
        || "-".to_owned(),
        |t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    )
}

/// The summary of one dead letter, as `list --output json` prints it.
fn summary_json(record: &Record) -> Value {
    let letter = record.dead_letter.as_ref();
    json!({
        "partition": record.partition,
        "offset": record.offset,
        "timestamp": record.timestamp,
        "key": record.key,
        "reason": letter.map(|l| l.reason.clone()),
        "reader": letter.and_then(|l| l.reader.clone()),
        "origin": {
            "topic": letter.and_then(|l| l.origin_topic.clone()),
            "partition": letter.and_then(|l| l.origin_partition),
            "offset": letter.and_then(|l| l.origin_offset),
        },
        "event_type": record.envelope.as_ref().map(|e| e.event_type.clone()),
        "correlation_id": record.correlation,
    })
}

async fn list(args: ListArgs) -> anyhow::Result<()> {
    let kafka = kafka_settings()?;
    let topic = Topics::new(&kafka.topic_prefix).dead_letter();
    let mut out = Out::new();
    if args.output == Output::Pretty {
        out.line(&format!(
            "{:>9} {:>8}  {:<24}  {:<48}  REASON",
            "PARTITION", "OFFSET", "TIME", "ORIGIN"
        ))?;
    }
    let mut count = 0_usize;
    scan(
        &kafka,
        vec![topic.clone()],
        Start::Beginning,
        false,
        |record| {
            if args
                .since
                .is_some_and(|since| record.timestamp.is_some_and(|t| t < since))
            {
                return Ok(true);
            }
            count += 1;
            let line = match args.output {
                Output::Json => summary_json(&record).to_string(),
                Output::Pretty => format!(
                    "{:>9} {:>8}  {:<24}  {:<48}  {}",
                    record.partition,
                    record.offset,
                    time_text(record.timestamp),
                    origin_text(&record),
                    record
                        .dead_letter
                        .as_ref()
                        .map_or("(not a dead letter: no reason header)", |l| l
                            .reason
                            .as_str()),
                ),
            };
            out.line(&line)
        },
    )
    .await?;
    if args.output == Output::Pretty {
        out.line(&format!("{count} dead letters in {topic}"))?;
    }
    Ok(())
}

/// Reads the one record at `partition`/`offset` of `topic`.
async fn read_one(
    kafka: &KafkaSettings,
    topic: &str,
    partition: i32,
    offset: i64,
) -> anyhow::Result<Record> {
    let registry = SchemaRegistry::load().context("Failed to compile the event schemas")?;
    let settings = kafka.clone();
    let name = topic.to_owned();
    let opened = tokio::task::spawn_blocking(move || -> Result<_, LogError> {
        let reader = consumer::manual_consumer(&settings, "fmctl-dead-letters")?;
        let partitions = consumer::partitions(&reader, std::slice::from_ref(&name), &settings)?;
        let marks = reader.fetch_watermarks(&name, partition, settings.request_timeout);
        Ok((reader, partitions, marks))
    })
    .await?;
    let (reader, partitions, marks) = opened.map_err(|e| explain(e, kafka))?;
    if !partitions.iter().any(|(_, p)| *p == partition) {
        bail!(
            "{topic} has no partition {partition} (it has {})",
            partitions.len()
        );
    }
    let (low, high) = marks.map_err(|e| explain(LogError::from(e), kafka))?;
    if offset < low || offset >= high {
        bail!(
            "no dead letter at offset {offset} of partition {partition} of {topic} (it holds {low}..{high})"
        );
    }
    consumer::assign(
        &reader,
        &[((topic.to_owned(), partition), offset)]
            .into_iter()
            .collect(),
    )
    .map_err(|e| explain(e, kafka))?;
    let wait = Duration::from_secs(30);
    let message = tokio::time::timeout(wait, reader.stream().next())
        .await
        .map_err(|_| anyhow::anyhow!("the broker did not deliver the record within {wait:?}"))?
        .context("the broker closed the stream")?
        .map_err(|e| explain(LogError::from(e), kafka))?;
    Ok(Record::decode(&message, &registry))
}

async fn show(args: ShowArgs) -> anyhow::Result<()> {
    let kafka = kafka_settings()?;
    let topic = Topics::new(&kafka.topic_prefix).dead_letter();
    let Position { partition, offset } = args.position;
    let record = read_one(&kafka, &topic, partition, offset).await?;
    let Some(letter) = &record.dead_letter else {
        bail!(
            "the record at offset {offset} of partition {partition} of {topic} is not a dead letter (no reason header)"
        );
    };
    // The payload as JSON when it is JSON (valid or not), else as text.
    let payload: Value = record.envelope.as_ref().map_or_else(
        || {
            let raw = record.raw.clone().unwrap_or_default();
            serde_json::from_str(&raw).unwrap_or(Value::String(raw))
        },
        |envelope| serde_json::to_value(envelope).unwrap_or(Value::Null),
    );
    let registry = SchemaRegistry::load().context("Failed to compile the event schemas")?;
    let check = RetryCheck::of(&record, &registry, &Topics::new(&kafka.topic_prefix));
    let mut out = Out::new();
    match args.output {
        Output::Json => {
            let mut value = summary_json(&record);
            value["valid_now"] = json!(check.usable());
            value["violation_now"] = json!(check.problem());
            value["retry_would"] = json!(if check.usable() {
                "apply"
            } else {
                "fail_again"
            });
            value["payload"] = payload;
            out.line(&value.to_string())?;
        }
        Output::Pretty => {
            let check = check.sentence();
            let body = match &payload {
                Value::String(text) => text.clone(),
                other => serde_json::to_string_pretty(other).unwrap_or_default(),
            };
            let text = format!(
                "dead letter  {topic}[{partition}]@{offset}\n\
                 time         {}\n\
                 origin       {}\n\
                 reason       {}\n\
                 refused by   {}\n\
                 key          {}\n\
                 correlation  {}\n\
                 contract     {check}\n\
                 retry        fmctl dead-letters retry --partition {partition} --offset {offset}\n\
                 payload\n{body}",
                time_text(record.timestamp),
                origin_text(&record),
                letter.reason,
                letter.reader.as_deref().unwrap_or("-"),
                record.key.as_deref().unwrap_or("-"),
                record.correlation.as_deref().unwrap_or("-"),
            );
            for line in text.lines() {
                if !out.line(line)? {
                    break;
                }
            }
        }
    }
    Ok(())
}

/// What a retry of a dead letter would meet now: every check a reader makes before it trusts a
/// record.
#[derive(Debug, PartialEq, Eq)]
enum RetryCheck {
    /// Passes its schemas, decodes into its aggregate's event and would go back to that
    /// aggregate's topic: a reader applies it (unless its aggregate moved on meanwhile).
    Usable {
        event_type: String,
        event_version: u16,
        aggregate: String,
        aggregate_id: String,
    },
    /// Breaks the contract: not JSON, an unknown event type, an invalid envelope or payload, an
    /// event type of another aggregate.
    Invalid(String),
    /// Passes its schemas, but would go back to the topic of another aggregate.
    WrongTopic(String),
    /// Passes its schemas, but does not decode into a domain event.
    Undecodable(String),
}

impl RetryCheck {
    fn of(record: &Record, registry: &SchemaRegistry, topics: &Topics) -> Self {
        let Some(envelope) = &record.envelope else {
            return Self::Invalid(record.violation.clone().unwrap_or_else(|| "-".to_owned()));
        };
        let origin = record
            .dead_letter
            .as_ref()
            .and_then(|letter| letter.origin_topic.as_deref());
        if let Some(topic) = origin
            && topics.aggregate_of(topic) != Some(envelope.aggregate_type)
        {
            return Self::WrongTopic(format!(
                "a {} event, but a retry appends it to {topic}",
                envelope.aggregate_type
            ));
        }
        if let Err(violation) = registry.check_decodes(envelope) {
            return Self::Undecodable(violation.to_string());
        }
        Self::Usable {
            event_type: envelope.event_type.clone(),
            event_version: envelope.event_version,
            aggregate: envelope.aggregate_type.to_string(),
            aggregate_id: envelope.aggregate_id.to_string(),
        }
    }

    fn usable(&self) -> bool {
        matches!(self, Self::Usable { .. })
    }

    fn problem(&self) -> Option<&str> {
        match self {
            Self::Usable { .. } => None,
            Self::Invalid(problem) | Self::WrongTopic(problem) | Self::Undecodable(problem) => {
                Some(problem)
            }
        }
    }

    fn sentence(&self) -> String {
        match self {
            Self::Usable {
                event_type,
                event_version,
                aggregate,
                aggregate_id,
            } => format!(
                "valid now: {event_type} v{event_version} of {aggregate} {aggregate_id} \
                 (retry applies it unless its aggregate moved on)"
            ),
            Self::Invalid(problem) => {
                format!("still invalid: {problem} (a retry would be dead-lettered again)")
            }
            Self::WrongTopic(problem) => {
                format!("on the wrong topic: {problem} (a retry would be dead-lettered again)")
            }
            Self::Undecodable(problem) => format!(
                "passes its schemas but does not decode: {problem} (a retry would be \
                 dead-lettered again)"
            ),
        }
    }
}

async fn retry(Position { partition, offset }: Position) -> anyhow::Result<()> {
    let kafka = kafka_settings()?;
    let (letter, landed) = event_log::dead_letters::retry(&kafka, partition, offset)
        .await
        .context("Failed to retry the dead letter")?;
    println!(
        "retried {}:{}:{} (dead-lettered because: {})",
        letter.position.topic, letter.position.partition, letter.position.offset, letter.reason
    );
    println!(
        "appended to {}:{}:{}",
        landed.topic, landed.partition, landed.offset
    );
    Ok(())
}
