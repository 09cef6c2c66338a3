//! `fmctl topics list`, `fmctl events tail` and `fmctl events history`: reading the log.
//!
//! Debian's kcat cannot talk to the local broker, so this is how the topics get inspected. Every
//! record is decoded and validated against the wire contract (`schemas`) the way the projector
//! does it; a record that breaks the contract is shown with the violation, never skipped, since
//! that is exactly what an operator is looking for. The reader assigns partitions explicitly and
//! never commits offsets: inspecting the log changes nothing in it.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    io::Write as _,
    time::Duration,
};

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use clap::{ArgGroup, Args, Subcommand, ValueEnum};
use domain::values::{BookingId, PaymentId};
use event_log::{
    KafkaSettings, LogError, Topics, consumer, dead_letters::RETRY_OF, producer::headers,
};
use futures::StreamExt;
use rdkafka::{
    Message,
    consumer::Consumer,
    message::{BorrowedMessage, Headers},
};
use schemas::{AggregateType, EventEnvelope, SchemaRegistry};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

/// How long a bounded read waits for the broker to deliver a record it said it holds.
const IDLE_LIMIT: Duration = Duration::from_secs(30);
/// In pretty output, undecodable values are cut after this many bytes.
const RAW_PREVIEW: usize = 400;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Output {
    /// For people: one or a few lines per record.
    Pretty,
    /// For scripts: one JSON object per line.
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum TopicArg {
    Facility,
    Booking,
    Payment,
    DeadLetter,
}

impl TopicArg {
    fn name(self, topics: &Topics) -> String {
        match self {
            Self::Facility => topics.events(AggregateType::Facility),
            Self::Booking => topics.events(AggregateType::Booking),
            Self::Payment => topics.events(AggregateType::Payment),
            Self::DeadLetter => topics.dead_letter(),
        }
    }
}

#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    /// Every topic of the cluster, Kafka's own (`__consumer_offsets`) and other deployments'
    /// included, after this deployment's.
    #[arg(long)]
    all: bool,
    /// Only the partitions with fewer in-sync replicas than replicas, or without a leader,
    /// without offsets; exits 1 when there is any (a rolling restart waits for none).
    #[arg(long)]
    under_replicated: bool,
    #[arg(long, value_enum, default_value_t = Output::Pretty)]
    output: Output,
}

#[derive(Debug, Subcommand)]
pub(crate) enum EventsCommand {
    /// Decode and validate the records of a topic; stops at the end seen at start unless --follow.
    #[command(after_help = "Examples:\n  \
        fmctl events tail --topic booking --limit 20\n  \
        fmctl events tail --aggregate 4f0c9a5e-0b7e-4a53-9c55-0d0f4b1c2e11 --output json\n  \
        fmctl events tail --topic dead-letter\n  \
        fmctl events tail --topic payment --since 2027-03-01T00:00:00Z --follow\n  \
        fmctl events tail --topic facility --from-offset 120\n\n\
        Without --topic every event topic (facility, booking, payment) is read. Records of \
        different partitions interleave; within a partition they come in log order.")]
    Tail(TailArgs),
    /// Every event of one booking's flow across topics, in time order.
    #[command(after_help = "Examples:\n  \
        fmctl events history --booking 4f0c9a5e-0b7e-4a53-9c55-0d0f4b1c2e11\n  \
        fmctl events history --correlation 9d1e3c77-5a2b-4f0e-8c1d-2b3a4c5d6e7f --output json\n\n\
        --booking shows the booking's own events, the facility events that name it (slot \
        reserved, rejected, released), its payment's events and any dead letter keyed by either; \
        --correlation shows every event that carries that correlation id.")]
    History(HistoryArgs),
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("start").args(["from_offset", "since"])))]
pub(crate) struct TailArgs {
    /// One topic; all three event topics when absent.
    #[arg(long, value_enum)]
    topic: Option<TopicArg>,
    /// Only records of this aggregate (record key or envelope `aggregate_id`).
    #[arg(long, value_name = "UUID")]
    aggregate: Option<Uuid>,
    /// Start every partition at this offset (clamped to what the partition holds).
    #[arg(long, value_name = "N")]
    from_offset: Option<i64>,
    /// Only records appended at or after this instant (RFC 3339).
    #[arg(long, value_name = "RFC3339")]
    since: Option<DateTime<Utc>>,
    /// Keep reading new records until interrupted (Ctrl-C).
    #[arg(long)]
    follow: bool,
    /// Stop after this many records.
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    #[arg(long, value_enum, default_value_t = Output::Pretty)]
    output: Output,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("subject").args(["booking", "correlation"]).required(true)))]
pub(crate) struct HistoryArgs {
    /// The booking id.
    #[arg(long, value_name = "UUID")]
    booking: Option<Uuid>,
    /// A correlation id (one business flow).
    #[arg(long, value_name = "UUID")]
    correlation: Option<Uuid>,
    #[arg(long, value_enum, default_value_t = Output::Pretty)]
    output: Output,
}

/// The settings these commands read (`FM_KAFKA__*`).
#[derive(Debug, Deserialize)]
struct Settings {
    #[serde(default)]
    kafka: KafkaSettings,
}

pub(crate) fn kafka_settings() -> anyhow::Result<KafkaSettings> {
    let settings: Settings =
        platform::settings::load().context("Failed to read the FM_* configuration")?;
    Ok(settings.kafka)
}

/// Turns a log error into one sentence an operator can act on (without repeating the source
/// chain, which librdkafka's errors already spell out).
pub(crate) fn explain(error: LogError, kafka: &KafkaSettings) -> anyhow::Error {
    match error {
        LogError::UnknownTopic(topic) => anyhow::anyhow!(
            "topic {topic} does not exist on {} (wrong FM_KAFKA__TOPIC_PREFIX, or run `fmctl topics ensure`)",
            kafka.brokers
        ),
        other => anyhow::anyhow!(
            "Failed to reach the broker at {} (FM_KAFKA__BROKERS): {other}",
            kafka.brokers
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// topics list

/// One partition as the cluster's metadata describes it, with its watermarks when they were
/// asked for and it has a leader to ask.
#[derive(Debug)]
struct PartitionView {
    topic: String,
    partition: i32,
    /// The leader's node id; negative when the partition has none.
    leader: i32,
    replicas: Vec<i32>,
    isr: Vec<i32>,
    marks: Option<(i64, i64)>,
}

impl PartitionView {
    /// Fewer replicas in sync than assigned, or no leader: a write may be refused (below
    /// `min.insync.replicas`), and one more broker lost may lose the partition.
    fn under_replicated(&self) -> bool {
        self.leader < 0 || self.isr.len() < self.replicas.len()
    }

    fn nodes(ids: &[i32]) -> String {
        let ids: Vec<String> = ids.iter().map(i32::to_string).collect();
        ids.join(",")
    }

    fn leader_text(&self) -> String {
        if self.leader < 0 {
            "none".to_owned()
        } else {
            self.leader.to_string()
        }
    }

    fn to_json(&self) -> Value {
        let mut json = json!({
            "partition": self.partition,
            "leader": (self.leader >= 0).then_some(self.leader),
            "replicas": self.replicas,
            "isr": self.isr,
        });
        if let Some((low, high)) = self.marks {
            json["low"] = json!(low);
            json["high"] = json!(high);
            json["records"] = json!(high - low);
        }
        json
    }
}

/// The topics to list (the deployment's, in their order, then with `all` every other topic of
/// the cluster by name) and the partitions the cluster has of each.
async fn partition_views(
    kafka: &KafkaSettings,
    all: bool,
    watermarks: bool,
) -> Result<(Vec<String>, Vec<PartitionView>), LogError> {
    let settings = kafka.clone();
    tokio::task::spawn_blocking(move || -> Result<_, LogError> {
        let mut names = Topics::new(&settings.topic_prefix).all();
        let reader = consumer::manual_consumer(&settings, "fmctl-topics")?;
        let metadata = reader
            .client()
            .fetch_metadata(None, settings.request_timeout)?;
        if all {
            let mut others: Vec<String> = metadata
                .topics()
                .iter()
                .map(|topic| topic.name().to_owned())
                .filter(|name| !names.contains(name))
                .collect();
            others.sort();
            names.extend(others);
        }
        let mut views = Vec::new();
        for topic in metadata.topics() {
            if !names.contains(&topic.name().to_owned()) || topic.error().is_some() {
                continue;
            }
            for partition in topic.partitions() {
                views.push(PartitionView {
                    topic: topic.name().to_owned(),
                    partition: partition.id(),
                    leader: partition.leader(),
                    replicas: partition.replicas().to_vec(),
                    isr: partition.isr().to_vec(),
                    marks: None,
                });
            }
        }
        views.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        if watermarks {
            // A partition without a leader has nobody to answer: it shows without offsets.
            let led: Vec<_> = views
                .iter()
                .filter(|view| view.leader >= 0)
                .map(|view| (view.topic.clone(), view.partition))
                .collect();
            let marks = consumer::watermarks(&reader, &led, &settings)?;
            for view in &mut views {
                view.marks = marks.get(&(view.topic.clone(), view.partition)).copied();
            }
        }
        Ok((names, views))
    })
    .await
    .unwrap_or_else(|join| Err(LogError::Blocking(join.to_string())))
}

pub(crate) async fn topics_list(args: ListArgs) -> anyhow::Result<()> {
    let kafka = kafka_settings()?;
    let (names, views) = partition_views(&kafka, args.all, !args.under_replicated)
        .await
        .map_err(|e| explain(e, &kafka))?;
    let deployment = Topics::new(&kafka.topic_prefix).all();
    let missing: Vec<String> = deployment
        .iter()
        .filter(|name| !views.iter().any(|view| &view.topic == *name))
        .cloned()
        .collect();
    let mut out = Out::new();
    if args.under_replicated {
        return under_replicated(&views, args.output, &mut out);
    }
    if args.output == Output::Pretty {
        out.line(&format!(
            "{:<44} {:>9} {:>10} {:>10} {:>10} {:>6} {:>8} {:>8}",
            "TOPIC", "PARTITION", "LOW", "HIGH", "RECORDS", "LEADER", "REPLICAS", "ISR"
        ))?;
    }
    for name in &names {
        let of_topic: Vec<&PartitionView> = views.iter().filter(|v| &v.topic == name).collect();
        if of_topic.is_empty() {
            if args.output == Output::Json {
                out.line(&json!({"topic": name, "exists": false}).to_string())?;
            } else {
                out.line(&format!("{name:<44} missing"))?;
            }
            continue;
        }
        let total: i64 = of_topic
            .iter()
            .filter_map(|view| view.marks.map(|(low, high)| high - low))
            .sum();
        match args.output {
            Output::Json => {
                let partitions: Vec<Value> = of_topic.iter().map(|v| v.to_json()).collect();
                out.line(
                    &json!({"topic": name, "exists": true, "partitions": partitions, "records": total})
                        .to_string(),
                )?;
            }
            Output::Pretty => {
                for view in &of_topic {
                    let (low, high, records) = view.marks.map_or_else(
                        || ("-".to_owned(), "-".to_owned(), "-".to_owned()),
                        |(low, high)| (low.to_string(), high.to_string(), (high - low).to_string()),
                    );
                    out.line(&format!(
                        "{name:<44} {:>9} {low:>10} {high:>10} {records:>10} {:>6} {:>8} {:>8}",
                        view.partition,
                        view.leader_text(),
                        PartitionView::nodes(&view.replicas),
                        PartitionView::nodes(&view.isr),
                    ))?;
                }
                out.line(&format!(
                    "{name:<44} {:>9} {:>10} {:>10} {total:>10}",
                    "all", "", ""
                ))?;
            }
        }
    }
    if !missing.is_empty() {
        bail!(
            "{} missing on {}: run `fmctl topics ensure`",
            missing.join(", "),
            kafka.brokers
        );
    }
    Ok(())
}

/// `fmctl topics list --under-replicated`: one line per partition with fewer replicas in sync
/// than assigned (or no leader); exits 1 when there is any.
fn under_replicated(views: &[PartitionView], output: Output, out: &mut Out) -> anyhow::Result<()> {
    let under: Vec<&PartitionView> = views.iter().filter(|v| v.under_replicated()).collect();
    if output == Output::Pretty {
        out.line(&format!(
            "{:<44} {:>9} {:>6} {:>8} {:>8}",
            "TOPIC", "PARTITION", "LEADER", "REPLICAS", "ISR"
        ))?;
    }
    for view in &under {
        match output {
            Output::Json => {
                let mut json = view.to_json();
                json["topic"] = json!(view.topic);
                out.line(&json.to_string())?;
            }
            Output::Pretty => {
                out.line(&format!(
                    "{:<44} {:>9} {:>6} {:>8} {:>8}",
                    view.topic,
                    view.partition,
                    view.leader_text(),
                    PartitionView::nodes(&view.replicas),
                    PartitionView::nodes(&view.isr),
                ))?;
            }
        }
    }
    if !under.is_empty() {
        bail!(
            "{} of {} partitions are under-replicated",
            under.len(),
            views.len()
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Reading records

/// One record as read and decoded.
#[derive(Debug)]
pub(crate) struct Record {
    pub(crate) topic: String,
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    /// The broker's timestamp of the record (append time, or the producer's create time).
    pub(crate) timestamp: Option<DateTime<Utc>>,
    pub(crate) key: Option<String>,
    /// The event upcast to the newest version of its type (docs/evolution.md), as every
    /// reader sees it.
    pub(crate) envelope: Option<EventEnvelope>,
    /// The version the record was written at, when older than the one shown.
    pub(crate) stored_version: Option<u16>,
    pub(crate) violation: Option<String>,
    pub(crate) raw: Option<String>,
    pub(crate) dead_letter: Option<DeadLetterInfo>,
    pub(crate) retry_of: Option<String>,
    /// The flow the record belonged to (`fm-correlation-id` header), if it names one.
    pub(crate) correlation: Option<String>,
}

#[derive(Debug)]
pub(crate) struct DeadLetterInfo {
    pub(crate) reason: String,
    /// The reader that refused it (`fm-dead-letter-reader`), if the dead letter says.
    pub(crate) reader: Option<String>,
    pub(crate) origin_topic: Option<String>,
    pub(crate) origin_partition: Option<i32>,
    pub(crate) origin_offset: Option<i64>,
}

fn header(message: &BorrowedMessage<'_>, name: &str) -> Option<String> {
    message
        .headers()?
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

impl Record {
    pub(crate) fn decode(message: &BorrowedMessage<'_>, registry: &SchemaRegistry) -> Self {
        let payload = message.payload().unwrap_or_default();
        let (envelope, violation) = match registry
            .validate_bytes(payload)
            .and_then(|stored| Ok((registry.upcast(&stored)?, stored.event_version)))
        {
            Ok(read) => (Some(read), None),
            Err(violation) => (None, Some(violation.to_string())),
        };
        let stored_version = envelope
            .as_ref()
            .and_then(|(envelope, stored)| (envelope.event_version != *stored).then_some(*stored));
        let envelope = envelope.map(|(envelope, _)| envelope);
        let raw = envelope
            .is_none()
            .then(|| String::from_utf8_lossy(payload).into_owned());
        let dead_letter =
            header(message, headers::DEAD_LETTER_REASON).map(|reason| DeadLetterInfo {
                reason,
                reader: header(message, headers::DEAD_LETTER_READER),
                origin_topic: header(message, headers::ORIGIN_TOPIC),
                origin_partition: header(message, headers::ORIGIN_PARTITION)
                    .and_then(|p| p.parse().ok()),
                origin_offset: header(message, headers::ORIGIN_OFFSET).and_then(|o| o.parse().ok()),
            });
        Self {
            topic: message.topic().to_owned(),
            partition: message.partition(),
            offset: message.offset(),
            timestamp: message
                .timestamp()
                .to_millis()
                .and_then(DateTime::<Utc>::from_timestamp_millis),
            key: message
                .key()
                .map(|k| String::from_utf8_lossy(k).into_owned()),
            envelope,
            stored_version,
            violation,
            raw,
            dead_letter,
            retry_of: header(message, RETRY_OF),
            correlation: header(message, headers::CORRELATION_ID),
        }
    }

    /// When it happened: the event's own time if it decoded, else the record's.
    fn at(&self) -> Option<DateTime<Utc>> {
        self.envelope
            .as_ref()
            .map(|e| e.occurred_at)
            .or(self.timestamp)
    }

    fn is_about(&self, aggregate: Uuid) -> bool {
        let id = aggregate.to_string();
        self.key.as_deref() == Some(id.as_str())
            || self
                .envelope
                .as_ref()
                .is_some_and(|e| e.aggregate_id == aggregate)
    }

    /// Part of a booking's flow: its own events, facility events naming it, its payment's.
    fn concerns_booking(&self, booking: Uuid, payment: Uuid) -> bool {
        if self.is_about(booking) || self.is_about(payment) {
            return true;
        }
        self.envelope.as_ref().is_some_and(|e| {
            e.data.get("booking_id").and_then(Value::as_str) == Some(booking.to_string().as_str())
        })
    }

    fn to_json(&self) -> Value {
        let mut value = json!({
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "timestamp": self.timestamp,
            "key": self.key,
            "valid": self.envelope.is_some(),
        });
        if let Some(envelope) = &self.envelope {
            value["event"] = serde_json::to_value(envelope).unwrap_or(Value::Null);
        }
        if let Some(stored) = self.stored_version {
            value["stored_version"] = json!(stored);
        }
        if let Some(violation) = &self.violation {
            value["violation"] = json!(violation);
        }
        if let Some(raw) = &self.raw {
            value["raw"] = json!(raw);
        }
        if let Some(letter) = &self.dead_letter {
            value["dead_letter"] = json!({
                "reason": letter.reason,
                "origin": {
                    "topic": letter.origin_topic,
                    "partition": letter.origin_partition,
                    "offset": letter.origin_offset,
                },
            });
        }
        if let Some(retry_of) = &self.retry_of {
            value["retry_of"] = json!(retry_of);
        }
        value
    }

    fn to_pretty(&self) -> String {
        let at = self.at().map_or_else(
            || "-".to_owned(),
            |t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        );
        let position = format!("{}[{}]@{}", self.topic, self.partition, self.offset);
        let mut text = if let Some(e) = &self.envelope {
            format!(
                "{at}  {position}  {} v{}{}  {} {}  seq {}\n    correlation {}  causation {}  actor {}:{}  event {}\n    data {}",
                e.event_type,
                e.event_version,
                self.stored_version
                    .map_or_else(String::new, |stored| format!(" (stored v{stored})")),
                e.aggregate_type,
                e.aggregate_id,
                e.sequence,
                e.correlation_id,
                e.causation_id,
                e.actor.role,
                e.actor.subject,
                e.event_id,
                e.data,
            )
        } else {
            let mut text = format!(
                "{at}  {position}  INVALID  key {}\n    violation: {}",
                self.key.as_deref().unwrap_or("-"),
                self.violation.as_deref().unwrap_or("-"),
            );
            if let Some(raw) = &self.raw {
                let mut cut = raw.len().min(RAW_PREVIEW);
                while !raw.is_char_boundary(cut) {
                    cut -= 1;
                }
                let more = if cut < raw.len() { " …" } else { "" };
                let _ = write!(text, "\n    raw: {}{more}", &raw[..cut]);
            }
            text
        };
        if let Some(letter) = &self.dead_letter {
            let _ = write!(
                text,
                "\n    DEAD LETTER from {}[{}]@{}: {}",
                letter.origin_topic.as_deref().unwrap_or("?"),
                letter
                    .origin_partition
                    .map_or_else(|| "?".to_owned(), |p| p.to_string()),
                letter
                    .origin_offset
                    .map_or_else(|| "?".to_owned(), |o| o.to_string()),
                letter.reason
            );
        }
        if let Some(retry_of) = &self.retry_of {
            let _ = write!(text, "\n    retry of dead letter {retry_of}");
        }
        text
    }

    fn render(&self, output: Output) -> String {
        match output {
            Output::Json => self.to_json().to_string(),
            Output::Pretty => self.to_pretty(),
        }
    }
}

/// Where each partition starts.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Start {
    Beginning,
    Offset(i64),
}

/// Reads `topics` from `start`, handing each record to `visit` until it answers `false`, the
/// end offsets seen at start are reached (unless `follow`), or Ctrl-C.
pub(crate) async fn scan(
    kafka: &KafkaSettings,
    topics: Vec<String>,
    start: Start,
    follow: bool,
    mut visit: impl FnMut(Record) -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let registry = SchemaRegistry::load().context("Failed to compile the event schemas")?;
    let settings = kafka.clone();
    let opened = tokio::task::spawn_blocking(move || -> Result<_, LogError> {
        let reader = consumer::manual_consumer(&settings, "fmctl-inspect")?;
        let partitions = consumer::partitions(&reader, &topics, &settings)?;
        let marks = consumer::watermarks(&reader, &partitions, &settings)?;
        Ok((reader, marks))
    })
    .await?;
    let (reader, marks) = opened.map_err(|e| explain(e, kafka))?;
    let mut positions = BTreeMap::new();
    let mut pending = BTreeSet::new();
    let mut ends = BTreeMap::new();
    for (tp, (low, high)) in marks {
        let from = match start {
            Start::Beginning => low,
            Start::Offset(offset) => offset.clamp(low, high),
        };
        if from < high {
            pending.insert(tp.clone());
        }
        ends.insert(tp.clone(), high);
        positions.insert(tp, from);
    }
    if pending.is_empty() && !follow {
        return Ok(());
    }
    consumer::assign(&reader, &positions).map_err(|e| explain(e, kafka))?;
    let mut stream = reader.stream();
    loop {
        let next = tokio::select! {
            next = tokio::time::timeout(IDLE_LIMIT, stream.next()) => next,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let message = match next {
            Ok(Some(message)) => message.map_err(|e| explain(LogError::from(e), kafka))?,
            Ok(None) => bail!("the broker closed the stream"),
            Err(_) if follow => continue,
            Err(_) => bail!(
                "the broker at {} delivered nothing for {} s although records remain to be read",
                kafka.brokers,
                IDLE_LIMIT.as_secs()
            ),
        };
        let tp = (message.topic().to_owned(), message.partition());
        let end = ends.get(&tp).copied().unwrap_or(i64::MAX);
        if !follow && message.offset() >= end {
            pending.remove(&tp);
        } else {
            if message.offset() + 1 >= end {
                pending.remove(&tp);
            }
            if !visit(Record::decode(&message, &registry))? {
                return Ok(());
            }
        }
        if !follow && pending.is_empty() {
            return Ok(());
        }
    }
}

/// Standard output, line by line; a closed pipe (`| head`) ends the command quietly.
pub(crate) struct Out {
    open: bool,
}

impl Out {
    pub(crate) fn new() -> Self {
        Self { open: true }
    }

    /// Writes one line; `false` once the reader has gone.
    pub(crate) fn line(&mut self, text: &str) -> anyhow::Result<bool> {
        if !self.open {
            return Ok(false);
        }
        let mut stdout = std::io::stdout().lock();
        match writeln!(stdout, "{text}").and_then(|()| stdout.flush()) {
            Ok(()) => Ok(true),
            Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => {
                self.open = false;
                Ok(false)
            }
            Err(error) => Err(error).context("Failed to write to standard output"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// events tail / history

pub(crate) async fn events(command: EventsCommand) -> anyhow::Result<()> {
    match command {
        EventsCommand::Tail(args) => tail(args).await,
        EventsCommand::History(args) => history(args).await,
    }
}

async fn tail(args: TailArgs) -> anyhow::Result<()> {
    let kafka = kafka_settings()?;
    let names = Topics::new(&kafka.topic_prefix);
    let topics = match args.topic {
        Some(topic) => vec![topic.name(&names)],
        None => names.event_topics(),
    };
    if let Some(offset) = args.from_offset.filter(|offset| *offset < 0) {
        bail!("--from-offset must be 0 or more, not {offset}");
    }
    if args.limit == Some(0) {
        return Ok(());
    }
    let start = args.from_offset.map_or(Start::Beginning, Start::Offset);
    let mut out = Out::new();
    let mut shown = 0_usize;
    scan(&kafka, topics, start, args.follow, |record| {
        if args.aggregate.is_some_and(|id| !record.is_about(id)) {
            return Ok(true);
        }
        let before = |since| {
            record
                .timestamp
                .or_else(|| record.at())
                .is_some_and(|t| t < since)
        };
        if args.since.is_some_and(before) {
            return Ok(true);
        }
        if !out.line(&record.render(args.output))? {
            return Ok(false);
        }
        shown += 1;
        Ok(args.limit.is_none_or(|limit| shown < limit))
    })
    .await
}

/// Which records belong to the history asked for.
type Matcher = Box<dyn Fn(&Record) -> bool>;

async fn history(args: HistoryArgs) -> anyhow::Result<()> {
    let kafka = kafka_settings()?;
    let names = Topics::new(&kafka.topic_prefix);
    let mut topics = names.event_topics();
    topics.push(names.dead_letter());
    let mut found = Vec::new();
    let (subject, matches): (String, Matcher) = match (args.booking, args.correlation) {
        (Some(booking), _) => {
            let payment = *PaymentId::for_booking(BookingId::from_uuid(booking)).as_uuid();
            (
                format!("booking {booking}"),
                Box::new(move |r: &Record| r.concerns_booking(booking, payment)),
            )
        }
        (None, Some(correlation)) => (
            format!("correlation id {correlation}"),
            Box::new(move |r: &Record| {
                r.envelope
                    .as_ref()
                    .is_some_and(|e| e.correlation_id == correlation)
            }),
        ),
        (None, None) => bail!("give --booking or --correlation"),
    };
    scan(&kafka, topics, Start::Beginning, false, |record| {
        if matches(&record) {
            found.push(record);
        }
        Ok(true)
    })
    .await?;
    if found.is_empty() {
        bail!(
            "no record of {subject} on the {} topics of {}",
            kafka.topic_prefix,
            kafka.brokers
        );
    }
    found.sort_by(|a, b| {
        (a.at(), &a.topic, a.partition, a.offset).cmp(&(b.at(), &b.topic, b.partition, b.offset))
    });
    // With the master keys (an operator's), the booking's personal data is shown opened, or
    // `erased`; without them, sealed as the log holds it.
    if let Some(keys) = crate::privacy::key_store().await? {
        for record in &mut found {
            if let Some(envelope) = record.envelope.as_mut()
                && envelope.event_type == "BookingRequested"
            {
                let id = envelope.aggregate_id;
                crate::privacy::open_personal(&keys, id, &mut envelope.data).await;
            }
        }
    }
    let mut out = Out::new();
    for record in &found {
        if !out.line(&record.render(args.output))? {
            return Ok(());
        }
    }
    if args.output == Output::Pretty {
        out.line(&format!("{} records of {subject}", found.len()))?;
    }
    Ok(())
}
