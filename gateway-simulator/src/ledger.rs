//! The simulator's memory, pure and synchronous: which idempotency keys it has seen and what it
//! answered, the captures and refunds it made, and the behaviour tests asked for. The routes
//! hold it behind one mutex and never await while holding it.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use domain::values::Money;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// How the simulator answers captures and refunds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Take (or give back) the money.
    #[default]
    Approve,
    /// Refuse with 402 and `decline_reason`.
    Decline,
    /// Wait `delay_ms`, then approve.
    Slow,
    /// Answer 500 without recording anything.
    #[serde(rename = "error_5xx")]
    Error5xx,
    /// Never answer within any sane client timeout; record nothing.
    Timeout,
    /// Record the capture (or refund), then hang: the client times out although the money moved.
    CaptureThenTimeout,
    /// Work on the capture (or refund) for `delay_ms`, then record it **whether or not the
    /// client is still waiting**, as a real provider does: a client that gave up has not
    /// cancelled anything. Meanwhile a request with the same key is answered 409 (in progress)
    /// and a lookup of the key finds nothing.
    DetachedCapture,
    /// Refuse the request itself with 422, recording nothing: no retry can succeed.
    Reject,
}

/// A behaviour, globally or for one booking (`PUT /control`, `PUT /control/bookings/{id}`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Behaviour {
    pub mode: Mode,
    /// How long `slow` waits (default 1000 ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
    /// What `decline` says (default `"card_declined"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decline_reason: Option<String>,
    /// Apply to this many new requests only, then go back to `approve` (default: until changed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub times: Option<u32>,
}

impl Behaviour {
    /// `mode` for the next request only, then back to `approve`.
    pub fn once(mode: Mode) -> Self {
        Self {
            mode,
            times: Some(1),
            ..Self::default()
        }
    }
}

/// What a request asked for; a replay with the same key must ask for exactly the same.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    Capture {
        booking_id: Uuid,
        amount: Money,
    },
    Refund {
        capture_reference: String,
        amount: Money,
    },
}

/// What the simulator answered to a key (only answers that are final are remembered).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Captured { reference: String },
    Refunded { reference: String },
    Declined { reason: String },
}

/// Why a request was refused without an answer being recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The key was used before for a different request (422).
    KeyReused,
    /// The refund names no capture (404).
    UnknownCapture,
    /// The refund's currency is not the capture's (422).
    CurrencyMismatch,
    /// The refunds would exceed the capture (422); `refundable_minor` is what is left.
    ExceedsCapture { refundable_minor: i64 },
    /// A request with this key is still being worked on (409): ask again later.
    InProgress,
    /// The `reject` mode: the provider refuses the request (422).
    Rejected,
}

#[derive(Debug, Clone)]
struct Seen {
    operation: Operation,
    answer: Answer,
}

/// Money on the wire: integer minor units and an ISO 4217 code. The requests' shape, and the
/// schema of every amount the views show.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Amount {
    #[schema(example = 125_000)]
    pub(crate) amount_minor: i64,
    #[schema(example = "GBP")]
    pub(crate) currency: String,
}

/// One capture the simulator made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CaptureRow {
    pub reference: String,
    pub idempotency_key: String,
    pub booking_id: Uuid,
    #[schema(value_type = Amount)]
    pub amount: Money,
    pub refunded_minor: i64,
    /// When the capture was made.
    pub created_at: DateTime<Utc>,
}

/// One refund the simulator made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RefundRow {
    pub reference: String,
    pub idempotency_key: String,
    pub capture_reference: String,
    #[schema(value_type = Amount)]
    pub amount: Money,
}

/// Money moved in one currency.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Totals {
    pub captured_minor: i64,
    pub refunded_minor: i64,
}

/// `GET /ledger`: every capture and refund, and totals per currency. Deserialisable, so tests
/// read it back as this type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LedgerView {
    pub captures: Vec<CaptureRow>,
    pub refunds: Vec<RefundRow>,
    /// Declined captures and refunds (no money moved).
    pub declined: u64,
    /// Keyed by ISO 4217 code.
    pub totals: BTreeMap<String, Totals>,
}

impl LedgerView {
    /// The captures made for `booking`.
    pub fn captures_for(&self, booking: Uuid) -> Vec<&CaptureRow> {
        self.captures
            .iter()
            .filter(|capture| capture.booking_id == booking)
            .collect()
    }

    /// The refunds made against `booking`'s captures.
    pub fn refunds_for(&self, booking: Uuid) -> Vec<&RefundRow> {
        self.refunds
            .iter()
            .filter(|refund| {
                self.captures.iter().any(|capture| {
                    capture.reference == refund.capture_reference && capture.booking_id == booking
                })
            })
            .collect()
    }

    /// Money kept in `currency` (an ISO 4217 code): captured minus refunded, in minor units.
    pub fn net_minor(&self, currency: &str) -> i64 {
        self.totals
            .get(currency)
            .map_or(0, |totals| totals.captured_minor - totals.refunded_minor)
    }
}

/// The simulator's whole state.
#[derive(Debug, Default)]
pub struct Simulator {
    seen: HashMap<String, Seen>,
    captures: Vec<CaptureRow>,
    refunds: Vec<RefundRow>,
    declined: u64,
    /// Capture reference → index in `captures`.
    by_reference: HashMap<String, usize>,
    global: Behaviour,
    per_booking: HashMap<Uuid, Behaviour>,
    /// Keys whose request is being worked on detached from its client (`detached_capture`).
    in_flight: HashSet<String>,
}

impl Simulator {
    /// The first answer to `key`, if it was seen; `KeyReused` if it was seen for another
    /// request; `InProgress` while a detached request with this key is being worked on.
    pub fn replay(&self, key: &str, operation: &Operation) -> Option<Result<Answer, Refusal>> {
        if self.in_flight.contains(key) {
            return Some(Err(Refusal::InProgress));
        }
        self.seen.get(key).map(|seen| {
            if &seen.operation == operation {
                Ok(seen.answer.clone())
            } else {
                Err(Refusal::KeyReused)
            }
        })
    }

    /// Starts working on `key` detached from its client: until [`Self::finish_detached`],
    /// requests with this key are answered `InProgress` and lookups find nothing.
    pub fn begin_detached(&mut self, key: &str) {
        self.in_flight.insert(key.to_owned());
    }

    /// Forgets the detached work on `key` without deciding it (the simulator is stopping).
    pub fn abandon_detached(&mut self, key: &str) {
        self.in_flight.remove(key);
    }

    /// Ends the detached work on `key` and decides it as [`Self::decide`] would.
    pub fn finish_detached(
        &mut self,
        key: &str,
        operation: Operation,
        now: DateTime<Utc>,
    ) -> Result<Answer, Refusal> {
        self.in_flight.remove(key);
        self.decide(key, operation, None, now)
    }

    /// The booking a request is about (a refund's is its capture's), for per-booking behaviour.
    pub fn booking_of(&self, operation: &Operation) -> Option<Uuid> {
        match operation {
            Operation::Capture { booking_id, .. } => Some(*booking_id),
            Operation::Refund {
                capture_reference, ..
            } => self
                .by_reference
                .get(capture_reference)
                .map(|index| self.captures[*index].booking_id),
        }
    }

    /// The behaviour for a new request about `booking`, counting it against `times`.
    pub fn take_behaviour(&mut self, booking: Option<Uuid>) -> Behaviour {
        if let Some(booking) = booking
            && let Some(behaviour) = self.per_booking.get_mut(&booking)
        {
            let taken = behaviour.clone();
            if consume(behaviour) {
                self.per_booking.remove(&booking);
            }
            return taken;
        }
        let taken = self.global.clone();
        if consume(&mut self.global) {
            self.global = Behaviour::default();
        }
        taken
    }

    /// Decides a request whose key is new (or answers it as a replay, if a concurrent request
    /// with the same key got there first): declines it with `decline`'s reason if given,
    /// approves it otherwise. Refusals are not remembered: nothing happened.
    pub fn decide(
        &mut self,
        key: &str,
        operation: Operation,
        decline: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<Answer, Refusal> {
        if let Some(replayed) = self.replay(key, &operation) {
            return replayed;
        }
        let capture_index = match &operation {
            Operation::Capture { .. } => None,
            Operation::Refund {
                capture_reference,
                amount,
            } => Some(self.check_refund(capture_reference, *amount)?),
        };
        let answer = if let Some(reason) = decline {
            self.declined += 1;
            Answer::Declined { reason }
        } else {
            match (&operation, capture_index) {
                (Operation::Capture { booking_id, amount }, _) => {
                    let reference = format!("cap_{}", Uuid::new_v4().simple());
                    self.by_reference
                        .insert(reference.clone(), self.captures.len());
                    self.captures.push(CaptureRow {
                        reference: reference.clone(),
                        idempotency_key: key.to_owned(),
                        booking_id: *booking_id,
                        amount: *amount,
                        refunded_minor: 0,
                        created_at: now,
                    });
                    Answer::Captured { reference }
                }
                (
                    Operation::Refund {
                        capture_reference,
                        amount,
                    },
                    Some(index),
                ) => {
                    let reference = format!("ref_{}", Uuid::new_v4().simple());
                    self.captures[index].refunded_minor += amount.amount_minor();
                    self.refunds.push(RefundRow {
                        reference: reference.clone(),
                        idempotency_key: key.to_owned(),
                        capture_reference: capture_reference.clone(),
                        amount: *amount,
                    });
                    Answer::Refunded { reference }
                }
                (Operation::Refund { .. }, None) => return Err(Refusal::UnknownCapture),
            }
        };
        self.seen.insert(
            key.to_owned(),
            Seen {
                operation,
                answer: answer.clone(),
            },
        );
        Ok(answer)
    }

    /// The index of the capture a refund may draw `amount` from.
    fn check_refund(&self, capture_reference: &str, amount: Money) -> Result<usize, Refusal> {
        let index = *self
            .by_reference
            .get(capture_reference)
            .ok_or(Refusal::UnknownCapture)?;
        let capture = &self.captures[index];
        if capture.amount.currency() != amount.currency() {
            return Err(Refusal::CurrencyMismatch);
        }
        let refundable_minor = capture.amount.amount_minor() - capture.refunded_minor;
        if amount.amount_minor() > refundable_minor {
            return Err(Refusal::ExceedsCapture { refundable_minor });
        }
        Ok(index)
    }

    /// What happened to `key`, if it was ever answered.
    pub fn record(&self, key: &str) -> Option<PaymentView> {
        let seen = self.seen.get(key)?;
        let (operation, booking_id, capture_reference, amount) = match &seen.operation {
            Operation::Capture { booking_id, amount } => {
                ("capture", Some(*booking_id), None, *amount)
            }
            Operation::Refund {
                capture_reference,
                amount,
            } => ("refund", None, Some(capture_reference.clone()), *amount),
        };
        let (status, reference, decline_reason) = match &seen.answer {
            Answer::Captured { reference } => ("captured", Some(reference.clone()), None),
            Answer::Refunded { reference } => ("refunded", Some(reference.clone()), None),
            Answer::Declined { reason } => ("declined", None, Some(reason.clone())),
        };
        let refunded_minor = reference
            .as_ref()
            .and_then(|reference| self.by_reference.get(reference))
            .map(|index| self.captures[*index].refunded_minor);
        Some(PaymentView {
            idempotency_key: key.to_owned(),
            operation,
            status,
            reference,
            decline_reason,
            amount,
            booking_id,
            capture_reference,
            refunded_minor,
        })
    }

    /// The captures made at or after `since`, oldest first.
    pub fn captures_since(&self, since: DateTime<Utc>) -> Vec<CaptureRow> {
        self.captures
            .iter()
            .filter(|capture| capture.created_at >= since)
            .cloned()
            .collect()
    }

    /// Every capture and refund, and the totals per currency.
    pub fn ledger(&self) -> LedgerView {
        let mut totals: BTreeMap<String, Totals> = BTreeMap::new();
        for capture in &self.captures {
            totals
                .entry(capture.amount.currency().code().to_owned())
                .or_default()
                .captured_minor += capture.amount.amount_minor();
        }
        for refund in &self.refunds {
            totals
                .entry(refund.amount.currency().code().to_owned())
                .or_default()
                .refunded_minor += refund.amount.amount_minor();
        }
        LedgerView {
            captures: self.captures.clone(),
            refunds: self.refunds.clone(),
            declined: self.declined,
            totals,
        }
    }

    /// Sets the behaviour of every booking without an override of its own.
    pub fn set_global(&mut self, behaviour: Behaviour) {
        self.global = behaviour;
    }

    /// Sets one booking's behaviour (its refunds included).
    pub fn set_booking(&mut self, booking: Uuid, behaviour: Behaviour) {
        self.per_booking.insert(booking, behaviour);
    }

    /// Removes one booking's override; true if it had one.
    pub fn clear_booking(&mut self, booking: Uuid) -> bool {
        self.per_booking.remove(&booking).is_some()
    }

    /// Back to approving everything (the ledger is kept).
    pub fn reset_control(&mut self) {
        self.global = Behaviour::default();
        self.per_booking.clear();
    }

    /// The behaviours in force.
    pub fn control(&self) -> ControlView {
        ControlView {
            global: self.global.clone(),
            bookings: self
                .per_booking
                .iter()
                .map(|(booking, behaviour)| (*booking, behaviour.clone()))
                .collect(),
        }
    }
}

/// `GET /payments/{idempotency_key}`: what happened to one key.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PaymentView {
    pub idempotency_key: String,
    /// `capture` or `refund`.
    pub operation: &'static str,
    /// `captured`, `refunded` or `declined`.
    pub status: &'static str,
    /// The capture's or refund's reference (none when declined).
    pub reference: Option<String>,
    pub decline_reason: Option<String>,
    #[schema(value_type = Amount)]
    pub amount: Money,
    /// For a capture.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub booking_id: Option<Uuid>,
    /// For a refund.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capture_reference: Option<String>,
    /// For a capture that was made: how much of it has been refunded since.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refunded_minor: Option<i64>,
}

/// `GET /control`: the behaviours in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ControlView {
    pub global: Behaviour,
    pub bookings: BTreeMap<Uuid, Behaviour>,
}

/// Counts one use against `times`; true when the behaviour is used up.
fn consume(behaviour: &mut Behaviour) -> bool {
    match behaviour.times.as_mut() {
        Some(times) => {
            *times = times.saturating_sub(1);
            *times == 0
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use domain::values::Currency;

    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2027-03-01T09:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn gbp(minor: i64) -> Money {
        Money::new(minor, Currency::GBP).unwrap()
    }

    fn capture(booking_id: Uuid, minor: i64) -> Operation {
        Operation::Capture {
            booking_id,
            amount: gbp(minor),
        }
    }

    fn captured(answer: Result<Answer, Refusal>) -> String {
        match answer {
            Ok(Answer::Captured { reference }) => reference,
            other => panic!("not captured: {other:?}"),
        }
    }

    #[test]
    fn a_replayed_capture_gets_the_first_answer_and_charges_once() {
        let mut sim = Simulator::default();
        let booking = Uuid::new_v4();
        let first = captured(sim.decide("k1", capture(booking, 500), None, now()));
        assert_eq!(
            sim.replay("k1", &capture(booking, 500)),
            Some(Ok(Answer::Captured {
                reference: first.clone()
            }))
        );
        assert_eq!(
            captured(sim.decide("k1", capture(booking, 500), None, now())),
            first
        );
        assert_eq!(sim.ledger().captures.len(), 1);
        assert_eq!(sim.ledger().totals["GBP"].captured_minor, 500);
    }

    #[test]
    fn a_key_reused_for_another_request_is_refused() {
        let mut sim = Simulator::default();
        let booking = Uuid::new_v4();
        captured(sim.decide("k1", capture(booking, 500), None, now()));
        assert_eq!(
            sim.decide("k1", capture(booking, 501), None, now()),
            Err(Refusal::KeyReused)
        );
    }

    #[test]
    fn a_decline_is_remembered_and_moves_no_money() {
        let mut sim = Simulator::default();
        let booking = Uuid::new_v4();
        let declined = sim.decide(
            "k1",
            capture(booking, 500),
            Some("no funds".to_owned()),
            now(),
        );
        assert_eq!(
            declined,
            Ok(Answer::Declined {
                reason: "no funds".to_owned()
            })
        );
        assert_eq!(
            sim.decide("k1", capture(booking, 500), None, now()),
            declined
        );
        let ledger = sim.ledger();
        assert!(ledger.captures.is_empty());
        assert_eq!(ledger.declined, 1);
        assert_eq!(sim.record("k1").unwrap().status, "declined");
    }

    #[test]
    fn refunds_never_exceed_the_capture() {
        let mut sim = Simulator::default();
        let reference = captured(sim.decide("c", capture(Uuid::new_v4(), 1000), None, now()));
        let refund = |minor| Operation::Refund {
            capture_reference: reference.clone(),
            amount: gbp(minor),
        };
        assert!(sim.decide("r1", refund(600), None, now()).is_ok());
        assert_eq!(
            sim.decide("r2", refund(401), None, now()),
            Err(Refusal::ExceedsCapture {
                refundable_minor: 400
            })
        );
        assert!(sim.decide("r2", refund(400), None, now()).is_ok());
        let totals = sim.ledger().totals["GBP"];
        assert_eq!(
            totals,
            Totals {
                captured_minor: 1000,
                refunded_minor: 1000
            }
        );
        assert_eq!(sim.record("c").unwrap().refunded_minor, Some(1000));
    }

    #[test]
    fn a_refund_must_name_a_capture_in_its_currency() {
        let mut sim = Simulator::default();
        let unknown = Operation::Refund {
            capture_reference: "cap_nope".to_owned(),
            amount: gbp(1),
        };
        assert_eq!(
            sim.decide("r", unknown, None, now()),
            Err(Refusal::UnknownCapture)
        );
        let reference = captured(sim.decide("c", capture(Uuid::new_v4(), 10), None, now()));
        let euros = Operation::Refund {
            capture_reference: reference,
            amount: Money::new(1, Currency::EUR).unwrap(),
        };
        assert_eq!(
            sim.decide("r", euros, None, now()),
            Err(Refusal::CurrencyMismatch)
        );
        assert!(sim.record("r").is_none());
    }

    #[test]
    fn the_ledger_view_counts_money_per_booking() {
        let mut sim = Simulator::default();
        let (one, two) = (Uuid::new_v4(), Uuid::new_v4());
        let first = captured(sim.decide("c1", capture(one, 1000), None, now()));
        captured(sim.decide("c2", capture(two, 700), None, now()));
        let refund = Operation::Refund {
            capture_reference: first,
            amount: gbp(1000),
        };
        assert!(sim.decide("r1", refund, None, now()).is_ok());
        let ledger = sim.ledger();
        assert_eq!(ledger.captures_for(one).len(), 1);
        assert_eq!(ledger.refunds_for(one).len(), 1);
        assert_eq!(ledger.captures_for(two)[0].amount, gbp(700));
        assert!(ledger.refunds_for(two).is_empty());
        assert_eq!(ledger.net_minor("GBP"), 700);
        assert_eq!(ledger.net_minor("EUR"), 0);
    }

    #[test]
    fn a_detached_request_is_in_progress_and_invisible_until_it_completes() {
        let mut sim = Simulator::default();
        let booking = Uuid::new_v4();
        sim.begin_detached("k1");
        assert_eq!(
            sim.replay("k1", &capture(booking, 500)),
            Some(Err(Refusal::InProgress))
        );
        assert!(sim.record("k1").is_none(), "a lookup finds nothing yet");
        let reference = captured(sim.finish_detached("k1", capture(booking, 500), now()));
        assert_eq!(sim.record("k1").unwrap().reference, Some(reference.clone()));
        assert_eq!(
            sim.replay("k1", &capture(booking, 500)),
            Some(Ok(Answer::Captured { reference }))
        );
        assert_eq!(sim.captures_since(now()).len(), 1);
        assert!(
            sim.captures_since(now() + chrono::TimeDelta::seconds(1))
                .is_empty()
        );
    }

    #[test]
    fn a_booking_override_wins_and_times_runs_out() {
        let mut sim = Simulator::default();
        let booking = Uuid::new_v4();
        sim.set_global(Behaviour {
            mode: Mode::Slow,
            ..Behaviour::default()
        });
        sim.set_booking(
            booking,
            Behaviour {
                mode: Mode::Error5xx,
                times: Some(2),
                ..Behaviour::default()
            },
        );
        assert_eq!(sim.take_behaviour(Some(booking)).mode, Mode::Error5xx);
        assert_eq!(sim.take_behaviour(Some(booking)).mode, Mode::Error5xx);
        assert_eq!(sim.take_behaviour(Some(booking)).mode, Mode::Slow);
        assert_eq!(sim.take_behaviour(None).mode, Mode::Slow);
        sim.reset_control();
        assert_eq!(sim.take_behaviour(None).mode, Mode::Approve);
    }
}
