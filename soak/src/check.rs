//! The invariants, as pure functions of what was gathered: the folded log, the journal, the
//! read models, the saga's rows, the gateway's ledger, the mailbox and the dead letters.
//!
//! Each check names the guarantee of `../shared/PRODUCT.md` it holds the system to, counts what
//! it checked, and reports every violation it finds with enough detail to find it again.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::{self, Write as _};

use serde::Serialize;
use uuid::Uuid;

use crate::history::{BookingFold, History, LogFault, Money, PaymentFold, Position, Slot};
use crate::journal::Entry;

mod outage;
#[cfg(test)]
mod tests;

pub use outage::{GRACE_MS, QUORUM_LOSS, REJOIN, RESUME_LIMIT_MS};

/// The invariants, in the order the summary prints them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Invariant {
    /// Every 2xx write is in the log, admitted at the version and position it was answered with.
    NoLostAcknowledgedWrite,
    /// One admitted event per sequence: no gaps, no stream split over partitions, no two
    /// different acknowledgements of one sequence.
    OneEventPerSequence,
    /// A replay is answered with the first outcome, one admitted event per key, and a refused
    /// request wrote nothing.
    Idempotency,
    /// No two reservations of a facility overlap, turnaround included, without a release between.
    NoDoubleBooking,
    /// Every admitted event is allowed by its aggregate's lifecycle.
    Lifecycle,
    /// The read models equal the fold of the log, have caught up with it, and report no gap.
    ReadModelsEqualFold,
    /// Every booking's saga has finished: a final status (or confirmed), a slot held exactly by
    /// the confirmed bookings, no saga row still pending.
    SagasTerminal,
    /// The gateway's money (captured − refunded) equals the prices of the confirmed bookings,
    /// per booking and in total, the log records what the gateway did, and no booking the
    /// gateway charged ended failed.
    MoneyBalances,
    /// Exactly one mail (by distinct Message-ID) per outcome, to the family's addresses.
    OneMailPerOutcome,
    /// Every dead letter has a reason and comes from a record put there on purpose; every such
    /// record was dead-lettered.
    DeadLettersExplained,
    /// While two of three brokers were down, no write was newly acknowledged and writes were
    /// answered 503, reads kept answering, and writes were acknowledged again without help once
    /// a broker returned.
    QuorumLoss,
}

impl Invariant {
    pub const ALL: [Invariant; 11] = [
        Self::NoLostAcknowledgedWrite,
        Self::OneEventPerSequence,
        Self::Idempotency,
        Self::NoDoubleBooking,
        Self::Lifecycle,
        Self::ReadModelsEqualFold,
        Self::SagasTerminal,
        Self::MoneyBalances,
        Self::OneMailPerOutcome,
        Self::DeadLettersExplained,
        Self::QuorumLoss,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::NoLostAcknowledgedWrite => "no-lost-acknowledged-write",
            Self::OneEventPerSequence => "one-event-per-sequence",
            Self::Idempotency => "idempotency",
            Self::NoDoubleBooking => "no-double-booking",
            Self::Lifecycle => "lifecycle",
            Self::ReadModelsEqualFold => "read-models-equal-fold",
            Self::SagasTerminal => "sagas-terminal",
            Self::MoneyBalances => "money-balances",
            Self::OneMailPerOutcome => "one-mail-per-outcome",
            Self::DeadLettersExplained => "dead-letters-explained",
            Self::QuorumLoss => "quorum-loss",
        }
    }
}

impl fmt::Display for Invariant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One broken invariant, with what shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    pub invariant: Invariant,
    pub detail: String,
}

/// One row of the `bookings` read model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BookingRow {
    pub booking_id: Uuid,
    pub facility_id: Uuid,
    pub status: String,
    pub version: u64,
    pub price: Money,
}

/// One row of the `facilities` read model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FacilityRow {
    pub facility_id: Uuid,
    pub version: u64,
}

/// One row of the `reservations` read model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReservationRow {
    pub facility_id: Uuid,
    pub booking_id: Uuid,
    pub slot: Slot,
}

/// One row of the `payments` read model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentRow {
    pub payment_id: Uuid,
    pub booking_id: Uuid,
    pub status: String,
    pub version: u64,
    pub amount: Money,
    pub capture_reference: Option<String>,
    pub refund_reference: Option<String>,
}

/// The live read models.
#[derive(Debug, Clone, Default)]
pub struct ReadModels {
    pub bookings: Vec<BookingRow>,
    pub facilities: Vec<FacilityRow>,
    pub reservations: Vec<ReservationRow>,
    pub payments: Vec<PaymentRow>,
    /// Rows of `projection_anomalies` (gaps the projector saw).
    pub anomalies: u64,
    /// `projection_offsets`: the next offset of each partition.
    pub offsets: BTreeMap<(String, i32), i64>,
}

/// A saga row that has not finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenSaga {
    pub booking_id: Uuid,
    pub state: String,
}

/// One capture in the gateway's ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capture {
    pub reference: String,
    pub booking_id: Uuid,
    pub amount: Money,
    pub refunded_minor: i64,
}

/// One refund in the gateway's ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refund {
    pub reference: String,
    pub capture_reference: String,
    pub amount: Money,
}

/// The gateway simulator's `GET /ledger`.
#[derive(Debug, Clone, Default)]
pub struct Ledger {
    pub captures: Vec<Capture>,
    pub refunds: Vec<Refund>,
}

/// One message in the SMTP sink's Maildir.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mail {
    /// Its file, to find it again.
    pub file: String,
    pub message_id: Option<String>,
    pub to: BTreeSet<String>,
}

/// One record of the dead-letter topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub position: Position,
    pub reason: Option<String>,
    /// From the `fm-origin-*` headers, when all three are present and readable.
    pub origin: Option<Position>,
    /// The original record's bytes.
    pub value: Vec<u8>,
}

/// Whether `haystack` holds `needle` (poison markers inside record bytes).
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty()
        && haystack
            .windows(needle.len())
            .any(|window| window == needle)
}

/// The mail kinds the saga sends, by the outcome they announce: the `kind` of
/// `Message-ID: <kind.booking_id@funeral-manager>` (`docs/saga.md`; the names are those of
/// the `notifications` crate, written out here rather than imported).
#[derive(Debug, Clone)]
pub struct MailKinds {
    pub confirmed: String,
    pub rejected: String,
    pub failed: String,
    pub cancelled: String,
}

impl Default for MailKinds {
    fn default() -> Self {
        Self {
            confirmed: "confirmation".to_owned(),
            rejected: "rejection".to_owned(),
            failed: "failure".to_owned(),
            cancelled: "cancellation".to_owned(),
        }
    }
}

/// A fault that lasted a while (a broker stalled, cut off, two brokers down, latency), from the
/// fault injector's `windows.log`: `<begin_ms> <end_ms> <kind> <detail>` (Unix milliseconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultWindow {
    pub kind: String,
    pub begin_ms: i64,
    pub end_ms: i64,
    pub detail: String,
}

impl FaultWindow {
    /// Reads one line of `windows.log`.
    pub fn parse(line: &str) -> Option<Self> {
        let mut words = line.split_whitespace();
        let begin_ms = words.next()?.parse().ok()?;
        let end_ms = words.next()?.parse().ok()?;
        let kind = words.next()?.to_owned();
        let detail = words.collect::<Vec<_>>().join(" ");
        Some(Self {
            kind,
            begin_ms,
            end_ms,
            detail,
        })
    }
}

/// Everything the checks read.
#[derive(Debug, Default)]
pub struct Inputs {
    pub history: History,
    /// The end offset of every event-topic partition when the log was read.
    pub log_ends: BTreeMap<(String, i32), i64>,
    pub journal: Vec<Entry>,
    pub read_models: Option<ReadModels>,
    /// Whether the saga ran: then bookings must finish, money move, mail go out.
    pub saga: bool,
    pub open_sagas: Vec<OpenSaga>,
    pub ledger: Ledger,
    pub mails: Vec<Mail>,
    pub mail_kinds: MailKinds,
    pub dead_letters: Vec<DeadLetter>,
    /// The faults that lasted a while, for the outage figures and the `quorum-loss` checks.
    pub windows: Vec<FaultWindow>,
}

/// What the checks found.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// How many things each invariant looked at.
    pub checked: BTreeMap<Invariant, u64>,
    pub violations: Vec<Violation>,
    /// Figures for the summary (records, bookings by status, money, mails, ...).
    pub figures: BTreeMap<String, String>,
}

impl Report {
    fn checked(&mut self, invariant: Invariant, count: usize) {
        *self.checked.entry(invariant).or_default() += count as u64;
    }

    fn violation(&mut self, invariant: Invariant, detail: impl Into<String>) {
        self.violations.push(Violation {
            invariant,
            detail: detail.into(),
        });
    }

    fn figure(&mut self, name: &str, value: impl fmt::Display) {
        self.figures.insert(name.to_owned(), value.to_string());
    }

    /// Violations of one invariant.
    pub fn count(&self, invariant: Invariant) -> usize {
        self.violations
            .iter()
            .filter(|violation| violation.invariant == invariant)
            .count()
    }

    /// Whether every invariant held.
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    /// The summary table, the figures, then every violation (at most `limit` per invariant).
    pub fn render(&self, limit: usize) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<28} {:>10} {:>10}",
            "invariant", "checked", "violations"
        );
        for invariant in Invariant::ALL {
            let checked = self.checked.get(&invariant).copied().unwrap_or_default();
            let _ = writeln!(
                out,
                "{:<28} {:>10} {:>10}",
                invariant.name(),
                checked,
                self.count(invariant)
            );
        }
        let _ = writeln!(out);
        for (name, value) in &self.figures {
            let _ = writeln!(out, "{name:<28} {value}");
        }
        for invariant in Invariant::ALL {
            let violations: Vec<_> = self
                .violations
                .iter()
                .filter(|violation| violation.invariant == invariant)
                .collect();
            if violations.is_empty() {
                continue;
            }
            let _ = writeln!(out, "\nVIOLATED {invariant} ({}):", violations.len());
            for violation in violations.iter().take(limit) {
                let _ = writeln!(out, "  - {}", violation.detail);
            }
            if violations.len() > limit {
                let _ = writeln!(out, "  ... and {} more", violations.len() - limit);
            }
        }
        out
    }
}

/// Runs every check.
pub fn check(inputs: &Inputs) -> Report {
    let mut report = Report::default();
    figures(inputs, &mut report);
    acknowledged_writes(inputs, &mut report);
    sequences(inputs, &mut report);
    idempotency(inputs, &mut report);
    double_booking(inputs, &mut report);
    lifecycle(inputs, &mut report);
    read_models(inputs, &mut report);
    sagas(inputs, &mut report);
    money(inputs, &mut report);
    mails(inputs, &mut report);
    dead_letters(inputs, &mut report);
    outage::quorum_loss(inputs, &mut report);
    outage::figures(inputs, &mut report);
    report
}

fn figures(inputs: &Inputs, report: &mut Report) {
    let history = &inputs.history;
    report.figure("log records", history.records);
    report.figure("  admitted events", history.admitted.len());
    report.figure("  refused as stale", history.stale.len());
    report.figure("  not events", history.undecodable.len());
    report.figure("facilities", history.facilities.len());
    let mut by_status: BTreeMap<&str, usize> = BTreeMap::new();
    for booking in history.bookings.values() {
        *by_status.entry(booking.status.as_str()).or_default() += 1;
    }
    let statuses: Vec<String> = by_status
        .iter()
        .map(|(status, count)| format!("{status} {count}"))
        .collect();
    report.figure(
        "bookings",
        format!("{} ({})", history.bookings.len(), statuses.join(", ")),
    );
    let cancelled_after_confirmation = history
        .bookings
        .values()
        .filter(|booking| booking.status == "cancelled" && booking.was_confirmed())
        .count();
    report.figure("  cancelled after confirmed", cancelled_after_confirmation);
    let mut journal: BTreeMap<String, usize> = BTreeMap::new();
    for entry in &inputs.journal {
        let name = match entry {
            Entry::Acknowledged { op, .. } => format!("acknowledged {op}"),
            Entry::Refused { op, status, .. } => format!("refused {op} ({status})"),
            Entry::Unknown { op, .. } => format!("unknown outcome {op}"),
            Entry::Poison { written: None, .. } => "poison records sent".to_owned(),
            Entry::Poison { .. } => "poison records acknowledged".to_owned(),
            Entry::Scenario { scenario, .. } => format!("scenario {scenario}"),
            Entry::Attempt { .. } | Entry::Read { .. } => continue,
        };
        *journal.entry(name).or_default() += 1;
    }
    for (name, count) in journal {
        report.figure(&format!("journal: {name}"), count);
    }
    report.figure("gateway captures", inputs.ledger.captures.len());
    report.figure("gateway refunds", inputs.ledger.refunds.len());
    report.figure("mails", inputs.mails.len());
    report.figure("dead letters", inputs.dead_letters.len());
}

fn acknowledged_writes(inputs: &Inputs, report: &mut Report) {
    let invariant = Invariant::NoLostAcknowledgedWrite;
    let stale: HashMap<&Position, &crate::history::Event> = inputs
        .history
        .stale
        .iter()
        .map(|event| (&event.position, event))
        .collect();
    for entry in &inputs.journal {
        let Entry::Acknowledged {
            op,
            aggregate_id,
            version,
            token,
            status,
            ..
        } = entry
        else {
            continue;
        };
        report.checked(invariant, 1);
        let what = format!("{op} {aggregate_id} answered {status} at version {version}");
        let Some(event) = inputs.history.admitted.get(&(*aggregate_id, *version)) else {
            report.violation(
                invariant,
                format!("{what}: no admitted event at that version"),
            );
            continue;
        };
        let Some(token) = token else {
            continue;
        };
        match Position::parse_token(token) {
            None => report.violation(invariant, format!("{what}: unreadable token {token:?}")),
            Some(position) if position == event.position => {}
            Some(position) => {
                let why = if stale.contains_key(&position) {
                    "a record the admission rule refused"
                } else {
                    "not the admitted record"
                };
                report.violation(
                    invariant,
                    format!(
                        "{what}: its token {position} names {why}; version {version} is at {}",
                        event.position
                    ),
                );
            }
        }
    }
}

fn sequences(inputs: &Inputs, report: &mut Report) {
    let invariant = Invariant::OneEventPerSequence;
    report.checked(invariant, inputs.history.records);
    for fault in &inputs.history.faults {
        match fault {
            LogFault::Gap {
                kind,
                aggregate_id,
                expected,
                found,
                at,
            } => report.violation(
                invariant,
                format!(
                    "{} {aggregate_id}: sequence {found} at {at} while {expected} was expected (a gap)",
                    kind.as_str()
                ),
            ),
            LogFault::SplitStream {
                kind,
                aggregate_id,
                partitions,
            } => report.violation(
                invariant,
                format!(
                    "{} {aggregate_id}: records in partitions {partitions:?}",
                    kind.as_str()
                ),
            ),
            LogFault::DoubleBooked { .. } | LogFault::IllegalTransition { .. } => {}
        }
    }
    // Two clients told "yes" for one sequence with different records: two accepted writers.
    let mut answered: HashMap<(Uuid, u64), BTreeSet<String>> = HashMap::new();
    for entry in &inputs.journal {
        if let Entry::Acknowledged {
            aggregate_id,
            version,
            token: Some(token),
            ..
        } = entry
        {
            answered
                .entry((*aggregate_id, *version))
                .or_default()
                .insert(token.clone());
        }
    }
    for ((aggregate_id, version), tokens) in answered {
        if tokens.len() > 1 {
            report.violation(
                invariant,
                format!(
                    "{aggregate_id} version {version} was acknowledged with different records: {tokens:?}"
                ),
            );
        }
    }
}

/// An answer to a write: the aggregate, its version and the consistency token.
type Outcome<'a> = (Uuid, u64, Option<&'a str>);

fn idempotency(inputs: &Inputs, report: &mut Report) {
    let invariant = Invariant::Idempotency;
    // (subject, key) → every (aggregate, version, token) it was answered with.
    let mut answers: HashMap<(&str, &str), BTreeSet<Outcome>> = HashMap::new();
    for entry in &inputs.journal {
        if let Entry::Acknowledged {
            subject,
            idempotency_key: Some(key),
            aggregate_id,
            version,
            token,
            ..
        } = entry
        {
            answers.entry((subject, key)).or_default().insert((
                *aggregate_id,
                *version,
                token.as_deref(),
            ));
        }
    }
    report.checked(invariant, answers.len());
    for ((subject, key), outcomes) in &answers {
        if outcomes.len() > 1 {
            report.violation(
                invariant,
                format!(
                    "{subject}'s key {key:?} was answered with different outcomes: {outcomes:?}"
                ),
            );
        }
    }
    let by_key = inputs.history.admitted_with_key();
    report.checked(invariant, by_key.len());
    for ((subject, key), events) in &by_key {
        if events.len() > 1 {
            let positions: Vec<String> = events.iter().map(|e| e.position.to_string()).collect();
            report.violation(
                invariant,
                format!(
                    "{subject}'s key {key:?} wrote {} admitted events: {}",
                    events.len(),
                    positions.join(", ")
                ),
            );
        }
    }
    for entry in &inputs.journal {
        if let Entry::Refused {
            op,
            subject,
            idempotency_key,
            status,
        } = entry
        {
            report.checked(invariant, 1);
            if let Some(events) = by_key.get(&(subject.clone(), idempotency_key.clone())) {
                report.violation(
                    invariant,
                    format!(
                        "{op} refused with {status} (key {idempotency_key:?}) wrote an admitted event at {}",
                        events[0].position
                    ),
                );
            }
        }
    }
}

fn double_booking(inputs: &Inputs, report: &mut Report) {
    let invariant = Invariant::NoDoubleBooking;
    let reservations = inputs
        .history
        .admitted
        .values()
        .filter(|event| event.event_type == "SlotReserved")
        .count();
    report.checked(invariant, reservations);
    for fault in &inputs.history.faults {
        if let LogFault::DoubleBooked {
            facility_id,
            booking_id,
            slot,
            other_booking,
            other_slot,
            at,
        } = fault
        {
            report.violation(
                invariant,
                format!(
                    "facility {facility_id}: {booking_id} reserved {slot} at {at} while {other_booking} held {other_slot}"
                ),
            );
        }
    }
}

fn lifecycle(inputs: &Inputs, report: &mut Report) {
    let invariant = Invariant::Lifecycle;
    report.checked(invariant, inputs.history.admitted.len());
    for fault in &inputs.history.faults {
        if let LogFault::IllegalTransition {
            kind,
            aggregate_id,
            from,
            event_type,
            at,
        } = fault
        {
            report.violation(
                invariant,
                format!(
                    "{} {aggregate_id}: {event_type} at {at} from {from}",
                    kind.as_str()
                ),
            );
        }
    }
}

fn read_models(inputs: &Inputs, report: &mut Report) {
    let invariant = Invariant::ReadModelsEqualFold;
    let Some(models) = &inputs.read_models else {
        report.violation(invariant, "the read models could not be read");
        return;
    };
    let mut differences = Vec::new();
    let compared = compare_bookings_and_facilities(&inputs.history, models, &mut differences)
        + compare_reservations_and_payments(&inputs.history, models, &mut differences);
    if models.anomalies > 0 {
        differences.push(format!(
            "the projector recorded {} anomalies (gaps)",
            models.anomalies
        ));
    }
    for ((topic, partition), end) in &inputs.log_ends {
        let stored = models
            .offsets
            .get(&(topic.clone(), *partition))
            .copied()
            .unwrap_or_default();
        if stored < *end {
            differences.push(format!(
                "the read models stopped at {topic}:{partition}:{stored}, the log ends at {end}"
            ));
        }
    }
    report.checked(invariant, compared + inputs.log_ends.len());
    for detail in differences {
        report.violation(invariant, detail);
    }
}

fn compare_bookings_and_facilities(
    history: &History,
    models: &ReadModels,
    differ: &mut Vec<String>,
) -> usize {
    let rows: HashMap<Uuid, &BookingRow> = models
        .bookings
        .iter()
        .map(|row| (row.booking_id, row))
        .collect();
    for (id, booking) in &history.bookings {
        let expected = BookingRow {
            booking_id: *id,
            facility_id: booking.facility_id,
            status: booking.status.clone(),
            version: booking.version,
            price: booking.price.clone(),
        };
        match rows.get(id) {
            None => differ.push(format!("booking {id} is missing from the read model")),
            Some(row) if **row != expected => {
                differ.push(format!(
                    "booking {id}: read model {row:?}, log {expected:?}"
                ));
            }
            Some(_) => {}
        }
    }
    for id in rows.keys().filter(|id| !history.bookings.contains_key(id)) {
        differ.push(format!(
            "booking {id} is in the read model but not in the log"
        ));
    }
    let rows: HashMap<Uuid, &FacilityRow> = models
        .facilities
        .iter()
        .map(|row| (row.facility_id, row))
        .collect();
    for (id, facility) in &history.facilities {
        match rows.get(id) {
            None => differ.push(format!("facility {id} is missing from the read model")),
            Some(row) if row.version != facility.version => differ.push(format!(
                "facility {id}: read model at version {}, log at {}",
                row.version, facility.version
            )),
            Some(_) => {}
        }
    }
    for id in rows
        .keys()
        .filter(|id| !history.facilities.contains_key(id))
    {
        differ.push(format!(
            "facility {id} is in the read model but not in the log"
        ));
    }
    history.bookings.len() + history.facilities.len()
}

fn compare_reservations_and_payments(
    history: &History,
    models: &ReadModels,
    differ: &mut Vec<String>,
) -> usize {
    let held: BTreeMap<(Uuid, Uuid), Slot> = history
        .facilities
        .iter()
        .flat_map(|(facility, fold)| {
            fold.held
                .iter()
                .map(move |(booking, slot)| ((*facility, *booking), *slot))
        })
        .collect();
    let rows: BTreeMap<(Uuid, Uuid), Slot> = models
        .reservations
        .iter()
        .map(|row| ((row.facility_id, row.booking_id), row.slot))
        .collect();
    for (key, slot) in &held {
        if rows.get(key) != Some(slot) {
            differ.push(format!(
                "reservation of facility {} for booking {} ({slot}): read model has {:?}",
                key.0,
                key.1,
                rows.get(key)
            ));
        }
    }
    for key in rows.keys().filter(|key| !held.contains_key(key)) {
        differ.push(format!(
            "reservation of facility {} for booking {} is in the read model but not held in the log",
            key.0, key.1
        ));
    }
    let rows: HashMap<Uuid, &PaymentRow> = models
        .payments
        .iter()
        .map(|row| (row.payment_id, row))
        .collect();
    for (id, payment) in &history.payments {
        let expected = PaymentRow {
            payment_id: *id,
            booking_id: payment.booking_id,
            status: payment.status.clone(),
            version: payment.version,
            amount: payment.amount.clone(),
            capture_reference: payment.capture_reference.clone(),
            refund_reference: payment.refund_reference.clone(),
        };
        match rows.get(id) {
            None => differ.push(format!("payment {id} is missing from the read model")),
            Some(row) if **row != expected => {
                differ.push(format!(
                    "payment {id}: read model {row:?}, log {expected:?}"
                ));
            }
            Some(_) => {}
        }
    }
    for id in rows.keys().filter(|id| !history.payments.contains_key(id)) {
        differ.push(format!(
            "payment {id} is in the read model but not in the log"
        ));
    }
    held.len() + history.payments.len()
}

fn sagas(inputs: &Inputs, report: &mut Report) {
    let invariant = Invariant::SagasTerminal;
    if !inputs.saga {
        return;
    }
    let history = &inputs.history;
    report.checked(invariant, history.bookings.len());
    let held: HashMap<Uuid, Uuid> = history
        .facilities
        .iter()
        .flat_map(|(facility, fold)| fold.held.keys().map(move |booking| (*booking, *facility)))
        .collect();
    for (id, booking) in &history.bookings {
        let finished = matches!(
            booking.status.as_str(),
            "confirmed" | "rejected" | "failed" | "cancelled"
        );
        if !finished {
            report.violation(
                invariant,
                format!("booking {id} stopped at {}", booking.status),
            );
        }
        let holds = held.contains_key(id);
        if booking.status == "confirmed" && !holds {
            report.violation(
                invariant,
                format!("booking {id} is confirmed but its facility holds no slot for it"),
            );
        }
        if finished && booking.status != "confirmed" && holds {
            report.violation(
                invariant,
                format!(
                    "booking {id} is {} but facility {} still holds its slot",
                    booking.status, booking.facility_id
                ),
            );
        }
    }
    for booking in held.keys().filter(|id| !history.bookings.contains_key(id)) {
        report.violation(
            invariant,
            format!("a slot is held for {booking}, which is not a booking in the log"),
        );
    }
    report.checked(invariant, inputs.open_sagas.len());
    for saga in &inputs.open_sagas {
        report.violation(
            invariant,
            format!(
                "the saga of {} is still pending in state {}",
                saga.booking_id, saga.state
            ),
        );
    }
}

fn money(inputs: &Inputs, report: &mut Report) {
    let captures_of = ledger_consistency(&inputs.ledger, report);
    money_totals(inputs, report);
    money_per_booking(inputs, &captures_of, report);
}

/// The ledger against itself: refunds add up on their captures and name real captures.
/// Returns the captures of each booking.
fn ledger_consistency<'a>(
    ledger: &'a Ledger,
    report: &mut Report,
) -> HashMap<Uuid, Vec<&'a Capture>> {
    let invariant = Invariant::MoneyBalances;
    let refunded_by_capture: HashMap<&str, i64> =
        ledger
            .refunds
            .iter()
            .fold(HashMap::new(), |mut sums, refund| {
                *sums.entry(refund.capture_reference.as_str()).or_default() += refund.amount.minor;
                sums
            });
    let mut captures_of: HashMap<Uuid, Vec<&Capture>> = HashMap::new();
    for capture in &ledger.captures {
        captures_of
            .entry(capture.booking_id)
            .or_default()
            .push(capture);
        let refunded = refunded_by_capture
            .get(capture.reference.as_str())
            .copied()
            .unwrap_or_default();
        if refunded != capture.refunded_minor {
            report.violation(
                invariant,
                format!(
                    "capture {} says {} refunded, its refunds add up to {refunded}",
                    capture.reference, capture.refunded_minor
                ),
            );
        }
    }
    let capture_references: BTreeSet<&str> = ledger
        .captures
        .iter()
        .map(|c| c.reference.as_str())
        .collect();
    for refund in &ledger.refunds {
        if !capture_references.contains(refund.capture_reference.as_str()) {
            report.violation(
                invariant,
                format!("refund {} names no capture", refund.reference),
            );
        }
    }
    captures_of
}

/// Totals per currency: what the gateway kept against what the confirmed bookings cost.
fn money_totals(inputs: &Inputs, report: &mut Report) {
    let invariant = Invariant::MoneyBalances;
    let ledger = &inputs.ledger;
    let mut kept: BTreeMap<&str, i64> = BTreeMap::new();
    for capture in &ledger.captures {
        *kept.entry(capture.amount.currency.as_str()).or_default() += capture.amount.minor;
    }
    for refund in &ledger.refunds {
        *kept.entry(refund.amount.currency.as_str()).or_default() -= refund.amount.minor;
    }
    let mut owed: BTreeMap<&str, i64> = BTreeMap::new();
    for booking in inputs.history.bookings.values() {
        if booking.status == "confirmed" {
            *owed.entry(booking.price.currency.as_str()).or_default() += booking.price.minor;
        }
    }
    let currencies: BTreeSet<&str> = kept.keys().chain(owed.keys()).copied().collect();
    for currency in currencies {
        let kept = kept.get(currency).copied().unwrap_or_default();
        let owed = owed.get(currency).copied().unwrap_or_default();
        report.figure(
            &format!("money {currency}"),
            format!("captured − refunded {kept}, confirmed prices {owed}"),
        );
        if kept != owed {
            report.violation(
                invariant,
                format!(
                    "{currency}: the gateway kept {kept}, the confirmed bookings cost {owed} (difference {})",
                    kept - owed
                ),
            );
        }
    }
}

/// Per booking: a confirmed booking has exactly one capture that was not given back, of its
/// price; every other booking has nothing kept; the log records what the gateway did.
fn money_per_booking(
    inputs: &Inputs,
    captures_of: &HashMap<Uuid, Vec<&Capture>>,
    report: &mut Report,
) {
    let invariant = Invariant::MoneyBalances;
    let history = &inputs.history;
    let payments_of: HashMap<Uuid, &PaymentFold> = history
        .payments
        .values()
        .map(|payment| (payment.booking_id, payment))
        .collect();
    report.checked(invariant, history.bookings.len());
    for (id, booking) in &history.bookings {
        let captures = captures_of.get(id).map(Vec::as_slice).unwrap_or_default();
        let net: Vec<i64> = captures
            .iter()
            .map(|c| c.amount.minor - c.refunded_minor)
            .filter(|net| *net != 0)
            .collect();
        let kept: i64 = net.iter().sum();
        if booking.status == "confirmed" {
            if net.len() != 1 || kept != booking.price.minor {
                report.violation(
                    invariant,
                    format!(
                        "booking {id} is confirmed at {} but the gateway kept {kept} over {} captures",
                        booking.price,
                        net.len()
                    ),
                );
            }
        } else if kept != 0 {
            report.violation(
                invariant,
                format!(
                    "booking {id} is {} but the gateway kept {kept} of it",
                    booking.status
                ),
            );
        }
        // The saga captures only once the slot is held, and a paid booking is confirmed (or
        // cancelled by the family): failing it, even with the money given back, is wrong.
        if booking.status == "failed" && !captures.is_empty() {
            report.violation(
                invariant,
                format!(
                    "booking {id} failed although the gateway captured its payment ({} captures; the family was charged and refunded instead of booked)",
                    captures.len()
                ),
            );
        }
        let payment = payments_of.get(id);
        let recorded_capture = payment.and_then(|p| p.capture_reference.as_deref());
        if let Some(reference) = recorded_capture
            && !captures.iter().any(|c| c.reference == reference)
        {
            report.violation(
                invariant,
                format!("booking {id}: the log records capture {reference}, the gateway has no such capture for it"),
            );
        }
        if booking.status == "confirmed" && payment.is_none_or(|p| p.status != "captured") {
            report.violation(
                invariant,
                format!(
                    "booking {id} is confirmed but its payment is {:?} in the log",
                    payment.map(|p| p.status.as_str())
                ),
            );
        }
        if booking.status == "cancelled"
            && booking.was_confirmed()
            && payment.is_none_or(|p| p.status != "refunded")
        {
            report.violation(
                invariant,
                format!(
                    "booking {id} was cancelled after confirmation but its payment is {:?} in the log",
                    payment.map(|p| p.status.as_str())
                ),
            );
        }
    }
    for booking in captures_of
        .keys()
        .filter(|id| !history.bookings.contains_key(id))
    {
        report.violation(
            invariant,
            format!("the gateway captured money for {booking}, which is not a booking in the log"),
        );
    }
}

/// The mail a booking's family must have had (its final outcome's), and the one it may also
/// have had: the saga tells the family the booking's outcome as it stands when it gets to the
/// mail (`saga-runner/src/saga.rs`), so a booking cancelled right after its confirmation may
/// never get the confirmation, only the cancellation.
fn expected_mails(booking: &BookingFold, kinds: &MailKinds) -> (Option<String>, Option<String>) {
    let required = match booking.status.as_str() {
        "confirmed" => Some(kinds.confirmed.clone()),
        "rejected" => Some(kinds.rejected.clone()),
        "failed" => Some(kinds.failed.clone()),
        "cancelled" => Some(kinds.cancelled.clone()),
        _ => None,
    };
    let allowed =
        (booking.status != "confirmed" && booking.was_confirmed()).then(|| kinds.confirmed.clone());
    (required, allowed)
}

/// Copies of one message (a resend) may each go to part of the family; together they must
/// reach exactly the family's addresses. When the log holds the addresses sealed (v2), the
/// checker cannot read them: then the copies must together reach one family only, as
/// soak-load writes them (`family-<n>@…` and `family-<n>-b@…`), and at least one address.
fn check_recipients(message_id: &str, mails: &[&Mail], booking: &BookingFold, report: &mut Report) {
    let to: BTreeSet<String> = mails
        .iter()
        .flat_map(|mail| mail.to.iter().map(|address| address.to_lowercase()))
        .collect();
    let Some(emails) = &booking.emails else {
        let families: BTreeSet<&str> = to
            .iter()
            .map(|address| {
                let local = address.split('@').next().unwrap_or_default();
                local.strip_suffix("-b").unwrap_or(local)
            })
            .collect();
        if families.len() != 1 {
            report.violation(
                Invariant::OneMailPerOutcome,
                format!(
                    "mail {message_id} ({}) went to {to:?}: not exactly one family",
                    mails[0].file
                ),
            );
        }
        return;
    };
    let family: BTreeSet<String> = emails
        .iter()
        .map(|address| address.to_lowercase())
        .collect();
    if to != family {
        report.violation(
            Invariant::OneMailPerOutcome,
            format!(
                "mail {message_id} ({}) went to {to:?}, the family is {family:?}",
                mails[0].file
            ),
        );
    }
}

fn mails(inputs: &Inputs, report: &mut Report) {
    let invariant = Invariant::OneMailPerOutcome;
    if !inputs.saga {
        return;
    }
    let mut received: BTreeMap<String, Vec<&Mail>> = BTreeMap::new();
    for mail in &inputs.mails {
        match &mail.message_id {
            Some(id) => received.entry(id.clone()).or_default().push(mail),
            None => report.violation(invariant, format!("mail {} has no Message-ID", mail.file)),
        }
    }
    let copies = inputs.mails.len().saturating_sub(received.len());
    report.figure("  mails re-sent (same Message-ID)", copies);
    let mut expected_ids = BTreeSet::new();
    let mut superseded = 0;
    for (id, booking) in &inputs.history.bookings {
        let (required, allowed) = expected_mails(booking, &inputs.mail_kinds);
        if let Some(kind) = required {
            let message_id = format!("{kind}.{id}@funeral-manager");
            report.checked(invariant, 1);
            match received.get(&message_id) {
                None => report.violation(
                    invariant,
                    format!(
                        "booking {id} is {} but no {kind} mail was sent",
                        booking.status
                    ),
                ),
                Some(mails) => check_recipients(&message_id, mails, booking, report),
            }
            expected_ids.insert(message_id);
        }
        if let Some(kind) = allowed {
            let message_id = format!("{kind}.{id}@funeral-manager");
            match received.get(&message_id) {
                None => superseded += 1,
                Some(mails) => check_recipients(&message_id, mails, booking, report),
            }
            expected_ids.insert(message_id);
        }
    }
    report.figure("  confirmations superseded by a cancellation", superseded);
    for (message_id, mails) in &received {
        if !expected_ids.contains(message_id) {
            report.violation(
                invariant,
                format!(
                    "mail {message_id} ({}) announces an outcome that did not happen",
                    mails[0].file
                ),
            );
        }
    }
}

fn dead_letters(inputs: &Inputs, report: &mut Report) {
    let invariant = Invariant::DeadLettersExplained;
    // marker → whether the broker acknowledged it
    let mut poison: BTreeMap<&str, bool> = BTreeMap::new();
    for entry in &inputs.journal {
        if let Entry::Poison {
            marker, written, ..
        } = entry
        {
            *poison.entry(marker.as_str()).or_default() |= written.is_some();
        }
    }
    let marker_in = |bytes: &[u8]| {
        poison
            .keys()
            .copied()
            .find(|marker| contains(bytes, marker.as_bytes()))
    };
    report.checked(invariant, inputs.dead_letters.len() + poison.len());
    let mut dead_lettered = BTreeSet::new();
    for letter in &inputs.dead_letters {
        let reason = letter.reason.as_deref().map(str::trim).unwrap_or_default();
        if reason.is_empty() {
            report.violation(
                invariant,
                format!("dead letter {} has no reason", letter.position),
            );
        }
        let Some(origin) = &letter.origin else {
            report.violation(
                invariant,
                format!(
                    "dead letter {} ({reason}) does not name its origin",
                    letter.position
                ),
            );
            continue;
        };
        match marker_in(&letter.value) {
            Some(marker) => {
                dead_lettered.insert(marker);
            }
            None => report.violation(
                invariant,
                format!(
                    "dead letter {} ({reason}) comes from {origin}, which nobody put there on purpose",
                    letter.position
                ),
            ),
        }
    }
    for (marker, written) in &poison {
        if *written && !dead_lettered.contains(marker) {
            report.violation(
                invariant,
                format!("the poison record {marker} was written but never dead-lettered"),
            );
        }
    }
    for record in &inputs.history.undecodable {
        if marker_in(&record.value).is_none() {
            report.violation(
                invariant,
                format!(
                    "the log holds a record that is not an event at {} ({}), and nobody put it there on purpose",
                    record.position, record.reason
                ),
            );
        }
    }
}
