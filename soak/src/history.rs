//! The log, read independently: records parsed from raw JSON, the admission rule applied, and
//! each aggregate folded with the checker's own model.
//!
//! Nothing here uses the system's crates (`domain`, `schemas`, `event-log`): a bug shared by
//! the system and its checker would hide itself. The rule is re-implemented from
//! `docs/consistency.md` ("an event is admitted if and only if its sequence is exactly one past
//! the last admitted sequence of its aggregate"), the envelope's fields from
//! `docs/architecture.md`, and the lifecycles from `../shared/PRODUCT.md`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use chrono::{DateTime, Duration, Utc};
use serde_json::Value;
use uuid::Uuid;

/// Where a record sits in the log.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Position {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

impl Position {
    pub fn new(topic: &str, partition: i32, offset: i64) -> Self {
        Self {
            topic: topic.to_owned(),
            partition,
            offset,
        }
    }

    /// Reads a consistency token (`topic:partition:offset`).
    pub fn parse_token(token: &str) -> Option<Self> {
        let mut parts = token.rsplitn(3, ':');
        let offset = parts.next()?.parse().ok()?;
        let partition = parts.next()?.parse().ok()?;
        let topic = parts.next().filter(|topic| !topic.is_empty())?;
        Some(Self::new(topic, partition, offset))
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.topic, self.partition, self.offset)
    }
}

/// One record as a raw consumer returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawRecord {
    pub position: Position,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl RawRecord {
    /// A header's value as text, if present.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| String::from_utf8_lossy(value).into_owned())
    }
}

/// The three streams, by the `aggregate_type` field of the envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Facility,
    Booking,
    Payment,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Facility, Kind::Booking, Kind::Payment];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Facility => "facility",
            Self::Booking => "booking",
            Self::Payment => "payment",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == text)
    }

    /// The topic this stream lives on.
    pub fn topic(self, prefix: &str) -> String {
        format!("{prefix}.{}.events", self.as_str())
    }
}

/// An event envelope, with only what the checks need.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub position: Position,
    pub event_id: Uuid,
    pub event_type: String,
    /// The payload's version (`event_version`): read here in the checker's own words, not through
    /// the registry's upcasters (docs/evolution.md).
    pub version: u64,
    pub kind: Kind,
    pub aggregate_id: Uuid,
    pub sequence: u64,
    /// The token subject of whoever caused it.
    pub subject: String,
    pub idempotency_key: Option<String>,
    pub data: Value,
}

/// Parses a record of an event topic; the error says why it is not an event.
pub fn parse_event(record: &RawRecord, prefix: &str) -> Result<Event, String> {
    let value = record.value.as_deref().ok_or("no value")?;
    let json: Value =
        serde_json::from_slice(value).map_err(|error| format!("not JSON: {error}"))?;
    let text = |field: &str| {
        json.get(field)
            .and_then(Value::as_str)
            .ok_or_else(|| format!("no string field `{field}`"))
    };
    let uuid = |field: &str| {
        text(field)?
            .parse::<Uuid>()
            .map_err(|_| format!("`{field}` is not a UUID"))
    };
    let kind = Kind::parse(text("aggregate_type")?).ok_or("unknown aggregate_type")?;
    if record.position.topic != kind.topic(prefix) {
        return Err(format!(
            "a {} event on topic {}",
            kind.as_str(),
            record.position.topic
        ));
    }
    let sequence = json
        .get("sequence")
        .and_then(Value::as_u64)
        .filter(|sequence| *sequence > 0)
        .ok_or("no positive `sequence`")?;
    let version = json
        .get("event_version")
        .and_then(Value::as_u64)
        .filter(|version| *version > 0)
        .ok_or("no positive `event_version`")?;
    let subject = json
        .pointer("/actor/subject")
        .and_then(Value::as_str)
        .ok_or("no `actor.subject`")?
        .to_owned();
    let idempotency_key = json
        .pointer("/idempotency/key")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let data = json.get("data").cloned().ok_or("no `data`")?;
    if !data.is_object() {
        return Err("`data` is not an object".to_owned());
    }
    // The one domain rule beyond the schemas that the soak's poison breaks: a facility's time
    // zone must exist (the services dead-letter such a record; so this reading skips it).
    if let Some(zone) = data.get("time_zone").and_then(Value::as_str)
        && zone.parse::<chrono_tz::Tz>().is_err()
    {
        return Err(format!("time zone {zone:?} does not exist"));
    }
    Ok(Event {
        position: record.position.clone(),
        event_id: uuid("event_id")?,
        event_type: text("event_type")?.to_owned(),
        version,
        kind,
        aggregate_id: uuid("aggregate_id")?,
        sequence,
        subject,
        idempotency_key,
        data,
    })
}

/// A slot, in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

impl Slot {
    fn from_json(value: &Value) -> Option<Self> {
        let time = |field: &str| {
            value
                .get(field)
                .and_then(Value::as_str)
                .and_then(|text| DateTime::parse_from_rfc3339(text).ok())
                .map(|time| time.with_timezone(&Utc))
        };
        Some(Self {
            start: time("start")?,
            end: time("end")?,
        })
    }

    /// Whether two slots are closer than `buffer` (the facility's turnaround) or overlap.
    pub fn conflicts(&self, other: &Slot, buffer: Duration) -> bool {
        self.start < other.end + buffer && other.start < self.end + buffer
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}–{}", self.start.to_rfc3339(), self.end.to_rfc3339())
    }
}

/// Integer minor units and a currency.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Money {
    pub minor: i64,
    pub currency: String,
}

impl Money {
    fn from_json(value: &Value) -> Option<Self> {
        Some(Self {
            minor: value.get("amount_minor")?.as_i64()?,
            currency: value.get("currency")?.as_str()?.to_owned(),
        })
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.minor, self.currency)
    }
}

/// A facility as its admitted events leave it.
#[derive(Debug, Clone, PartialEq)]
pub struct FacilityFold {
    pub version: u64,
    pub turnaround: Duration,
    /// The slot each booking holds now.
    pub held: BTreeMap<Uuid, Slot>,
}

/// A booking as its admitted events leave it.
#[derive(Debug, Clone, PartialEq)]
pub struct BookingFold {
    pub version: u64,
    pub facility_id: Uuid,
    pub slot: Slot,
    pub price: Money,
    pub status: String,
    /// Every status it went through, in order.
    pub statuses: Vec<String>,
    /// The family contacts' e-mail addresses, as `BookingRequested` v1 held them in the clear;
    /// `None` from v2 on, whose contacts are sealed under a key this checker does not hold (it
    /// keeps no key material: docs/privacy.md), and once the data is erased.
    pub emails: Option<BTreeSet<String>>,
}

impl BookingFold {
    /// Whether it was ever confirmed (a cancellation after confirmation refunds).
    pub fn was_confirmed(&self) -> bool {
        self.statuses.iter().any(|status| status == "confirmed")
    }
}

/// A payment as its admitted events leave it.
#[derive(Debug, Clone, PartialEq)]
pub struct PaymentFold {
    pub version: u64,
    pub booking_id: Uuid,
    pub status: String,
    pub amount: Money,
    pub capture_reference: Option<String>,
    pub refund_reference: Option<String>,
    pub refunded_minor: Option<i64>,
}

/// Something the log itself shows to be wrong, found while folding it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogFault {
    /// A sequence beyond the next one: an event is missing.
    Gap {
        kind: Kind,
        aggregate_id: Uuid,
        expected: u64,
        found: u64,
        at: Position,
    },
    /// One aggregate's records in two partitions: readers could order them differently.
    SplitStream {
        kind: Kind,
        aggregate_id: Uuid,
        partitions: Vec<i32>,
    },
    /// A slot reserved while another booking held an overlapping one (turnaround included),
    /// or reserved twice for one booking without a release between.
    DoubleBooked {
        facility_id: Uuid,
        booking_id: Uuid,
        slot: Slot,
        other_booking: Uuid,
        other_slot: Slot,
        at: Position,
    },
    /// An admitted event its aggregate's lifecycle does not allow here.
    IllegalTransition {
        kind: Kind,
        aggregate_id: Uuid,
        from: String,
        event_type: String,
        at: Position,
    },
}

/// A record of an event topic that is not an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Undecodable {
    pub position: Position,
    pub reason: String,
    pub value: Vec<u8>,
}

/// The whole log, read and folded.
#[derive(Debug, Default)]
pub struct History {
    /// Records read from the event topics.
    pub records: usize,
    /// Admitted events by (aggregate id, sequence).
    pub admitted: HashMap<(Uuid, u64), Event>,
    /// Records refused by the rule as stale (losers of races, redeliveries).
    pub stale: Vec<Event>,
    /// Records that are not events, with the reason.
    pub undecodable: Vec<Undecodable>,
    pub facilities: BTreeMap<Uuid, FacilityFold>,
    pub bookings: BTreeMap<Uuid, BookingFold>,
    pub payments: BTreeMap<Uuid, PaymentFold>,
    pub faults: Vec<LogFault>,
}

impl History {
    /// Reads `records` (every event topic; any order across partitions, offset order within
    /// each) with the admission rule and folds what it admits.
    pub fn build(records: &[RawRecord], prefix: &str) -> Self {
        let mut ordered: Vec<&RawRecord> = records.iter().collect();
        // One aggregate lives in one partition, so a per-partition order is all the rule needs;
        // sorting makes the fold independent of the order the consumer interleaved partitions.
        ordered.sort_by(|a, b| a.position.cmp(&b.position));
        let mut history = Self {
            records: records.len(),
            ..Self::default()
        };
        let mut last: HashMap<(Kind, Uuid), u64> = HashMap::new();
        let mut partitions: HashMap<(Kind, Uuid), BTreeSet<i32>> = HashMap::new();
        for record in ordered {
            let event = match parse_event(record, prefix) {
                Ok(event) => event,
                Err(reason) => {
                    history.undecodable.push(Undecodable {
                        position: record.position.clone(),
                        reason,
                        value: record.value.clone().unwrap_or_default(),
                    });
                    continue;
                }
            };
            let stream = (event.kind, event.aggregate_id);
            partitions
                .entry(stream)
                .or_default()
                .insert(event.position.partition);
            let last_admitted = last.entry(stream).or_default();
            let expected = *last_admitted + 1;
            if event.sequence < expected {
                history.stale.push(event);
                continue;
            }
            if event.sequence > expected {
                history.faults.push(LogFault::Gap {
                    kind: event.kind,
                    aggregate_id: event.aggregate_id,
                    expected,
                    found: event.sequence,
                    at: event.position.clone(),
                });
                continue;
            }
            *last_admitted = event.sequence;
            history.apply(&event);
            history
                .admitted
                .insert((event.aggregate_id, event.sequence), event);
        }
        for ((kind, aggregate_id), partitions) in partitions {
            if partitions.len() > 1 {
                history.faults.push(LogFault::SplitStream {
                    kind,
                    aggregate_id,
                    partitions: partitions.into_iter().collect(),
                });
            }
        }
        history
    }

    fn illegal(&mut self, event: &Event, from: &str) {
        self.faults.push(LogFault::IllegalTransition {
            kind: event.kind,
            aggregate_id: event.aggregate_id,
            from: from.to_owned(),
            event_type: event.event_type.clone(),
            at: event.position.clone(),
        });
    }

    fn apply(&mut self, event: &Event) {
        match event.kind {
            Kind::Facility => self.apply_facility(event),
            Kind::Booking => self.apply_booking(event),
            Kind::Payment => self.apply_payment(event),
        }
    }

    fn apply_facility(&mut self, event: &Event) {
        let id = event.aggregate_id;
        let data = &event.data;
        let booking = || {
            data.get("booking_id")
                .and_then(Value::as_str)
                .and_then(|id| id.parse::<Uuid>().ok())
        };
        if event.event_type == "FacilityRegistered" {
            if self.facilities.contains_key(&id) {
                return self.illegal(event, "registered");
            }
            // v1 and v2 carry the turnaround the same way; v2 adds the funeral home, which
            // nothing here checks. A version this checker has not learnt is not guessed at.
            if !matches!(event.version, 1 | 2) {
                return self.illegal(
                    event,
                    "unregistered (a FacilityRegistered version unknown here)",
                );
            }
            let minutes = data
                .get("turnaround_minutes")
                .and_then(Value::as_i64)
                .unwrap_or_default();
            self.facilities.insert(
                id,
                FacilityFold {
                    version: event.sequence,
                    turnaround: Duration::minutes(minutes),
                    held: BTreeMap::new(),
                },
            );
            return;
        }
        let Some(facility) = self.facilities.get_mut(&id) else {
            return self.illegal(event, "unregistered");
        };
        facility.version = event.sequence;
        match event.event_type.as_str() {
            "SlotReserved" => {
                let (Some(booking_id), Some(slot)) =
                    (booking(), data.get("slot").and_then(Slot::from_json))
                else {
                    return self
                        .illegal(event, "registered (SlotReserved without booking or slot)");
                };
                let clash = facility
                    .held
                    .iter()
                    .find(|(other, held)| {
                        **other == booking_id || held.conflicts(&slot, facility.turnaround)
                    })
                    .map(|(other, held)| (*other, *held));
                facility.held.insert(booking_id, slot);
                if let Some((other_booking, other_slot)) = clash {
                    self.faults.push(LogFault::DoubleBooked {
                        facility_id: id,
                        booking_id,
                        slot,
                        other_booking,
                        other_slot,
                        at: event.position.clone(),
                    });
                }
            }
            "SlotReleased" => {
                if let Some(booking_id) = booking() {
                    facility.held.remove(&booking_id);
                }
            }
            "SlotRejected" | "OpeningHoursChanged" => {}
            _ => self.illegal(event, "registered"),
        }
    }

    fn apply_booking(&mut self, event: &Event) {
        let id = event.aggregate_id;
        let data = &event.data;
        if event.event_type == "BookingRequested" {
            if self.bookings.contains_key(&id) {
                return self.illegal(event, "requested");
            }
            let facility_id = data
                .get("facility_id")
                .and_then(Value::as_str)
                .and_then(|id| id.parse().ok());
            let slot = data.get("slot").and_then(Slot::from_json);
            let price = data.get("price").and_then(Money::from_json);
            let (Some(facility_id), Some(slot), Some(price)) = (facility_id, slot, price) else {
                return self.illegal(
                    event,
                    "nothing (BookingRequested without facility, slot or price)",
                );
            };
            // v1: the contacts in the clear; v2 and v3: sealed in `personal`, which only the
            // services open. A version this checker has not learnt is a fault, not a guess.
            let emails = match event.version {
                1 => Some(
                    data.get("family_contacts")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .filter_map(|contact| contact.get("email").and_then(Value::as_str))
                        .map(str::to_owned)
                        .collect(),
                ),
                2 if data.get("personal").is_some_and(Value::is_object) => None,
                // v3: v2 with the itemised statement the server priced it with; its lines and
                // adjustments must add up to its total, and the total must be the price.
                3 if data.get("personal").is_some_and(Value::is_object) => {
                    if !statement_adds_up_to(data.get("statement"), &price) {
                        return self.illegal(
                            event,
                            "nothing (a BookingRequested whose statement is not its price)",
                        );
                    }
                    None
                }
                _ => {
                    return self.illegal(
                        event,
                        "nothing (a BookingRequested version this checker has not learnt)",
                    );
                }
            };
            self.bookings.insert(
                id,
                BookingFold {
                    version: event.sequence,
                    facility_id,
                    slot,
                    price,
                    status: "requested".to_owned(),
                    statuses: vec!["requested".to_owned()],
                    emails,
                },
            );
            return;
        }
        let Some(booking) = self.bookings.get_mut(&id) else {
            return self.illegal(event, "nothing");
        };
        // The event is admitted whatever it says, so the stream's version moves; a transition
        // the lifecycle forbids is reported and leaves the status where it was.
        booking.version = event.sequence;
        // An erasure changes nothing about the booking's lifecycle, in any status.
        if event.event_type == "PersonalDataErased" {
            booking.emails = None;
            return;
        }
        let from = booking.status.clone();
        // The lifecycle of PRODUCT.md: requested → slot_held → confirmed, or rejected (from
        // requested), failed (before confirmation), cancelled (from any open status).
        let to = match (from.as_str(), event.event_type.as_str()) {
            ("requested", "BookingSlotHeld") => "slot_held",
            ("slot_held", "BookingConfirmed") => "confirmed",
            ("requested", "BookingRejected") => "rejected",
            ("requested" | "slot_held", "BookingFailed") => "failed",
            ("requested" | "slot_held" | "confirmed", "BookingCancelled") => "cancelled",
            _ => return self.illegal(event, &from),
        };
        to.clone_into(&mut booking.status);
        booking.statuses.push(to.to_owned());
    }

    fn apply_payment(&mut self, event: &Event) {
        let id = event.aggregate_id;
        let data = &event.data;
        let text = |field: &str| data.get(field).and_then(Value::as_str).map(str::to_owned);
        let amount = data.get("amount").and_then(Money::from_json);
        match (self.payments.get_mut(&id), event.event_type.as_str()) {
            (None, "PaymentCaptured" | "PaymentDeclined") => {
                let booking_id = text("booking_id").and_then(|id| id.parse().ok());
                let (Some(booking_id), Some(amount)) = (booking_id, amount) else {
                    return self.illegal(event, "nothing (no booking or amount)");
                };
                let captured = event.event_type == "PaymentCaptured";
                self.payments.insert(
                    id,
                    PaymentFold {
                        version: event.sequence,
                        booking_id,
                        status: if captured { "captured" } else { "declined" }.to_owned(),
                        amount,
                        capture_reference: if captured {
                            text("gateway_reference")
                        } else {
                            None
                        },
                        refund_reference: None,
                        refunded_minor: None,
                    },
                );
            }
            (Some(payment), "PaymentRefunded") if payment.status == "captured" => {
                payment.version = event.sequence;
                "refunded".clone_into(&mut payment.status);
                payment.refund_reference = text("gateway_reference");
                payment.refunded_minor = amount.map(|amount| amount.minor);
            }
            (Some(payment), _) => {
                payment.version = event.sequence;
                let from = payment.status.clone();
                self.illegal(event, &from);
            }
            (None, _) => self.illegal(event, "nothing"),
        }
    }

    /// The admitted event carrying `(subject, key)`, if any (every command decides at most one
    /// event today, `docs/consistency.md`).
    pub fn admitted_with_key(&self) -> HashMap<(String, String), Vec<&Event>> {
        let mut by_key: HashMap<(String, String), Vec<&Event>> = HashMap::new();
        for event in self.admitted.values() {
            if let Some(key) = &event.idempotency_key {
                by_key
                    .entry((event.subject.clone(), key.clone()))
                    .or_default()
                    .push(event);
            }
        }
        by_key
    }
}

/// Whether a `BookingRequested` v3 statement's lines and adjustments add up to its total, in the
/// price's currency, and the total is the price (read in the checker's own words).
fn statement_adds_up_to(statement: Option<&Value>, price: &Money) -> bool {
    let Some(statement) = statement else {
        return false;
    };
    let sum = |field: &str| -> Option<i64> {
        statement
            .get(field)?
            .as_array()?
            .iter()
            .map(|item| item.get("amount_minor").and_then(Value::as_i64))
            .sum()
    };
    let total = statement.get("total_minor").and_then(Value::as_i64);
    let currency = statement.get("currency").and_then(Value::as_str);
    match (sum("lines"), sum("adjustments"), total, currency) {
        (Some(lines), Some(adjustments), Some(total), Some(currency)) => {
            lines + adjustments == total && total == price.minor && currency == price.currency
        }
        _ => false,
    }
}
