//! The booking saga as a pure state machine: what is known about one booking, and what to do
//! next. No I/O, no clock: the caller passes the time in.
//!
//! The saga is **level-triggered**. It does not remember "where in the flow it is"; it keeps the
//! facts the log has told it (the booking's status, whether the facility holds the slot, what
//! the payment aggregate recorded) plus the few facts only the saga itself can learn (a capture
//! whose answer never came, a mail that was sent), and [`decide`] derives the one next step from
//! them. A crash, a redelivered event, events from three topics arriving in any order, a family
//! cancelling half-way: each only changes the facts, and the next decision is right for the new
//! facts. That is what makes every step safe to repeat and the flow resumable anywhere.

use std::collections::BTreeSet;

use chrono::{DateTime, TimeDelta, Utc};
use domain::pricing::Statement;
use domain::{
    booking::{BookingEvent, BookingStatus, SealedPersonal},
    facility::{FacilityEvent, SlotRejectionReason},
    payment::PaymentEvent,
    saga::{SagaEvent, SagaStep},
    values::{BookingId, EmailAddress, FacilityId, Money, Slot},
};
use notifications::NotificationKind;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[cfg(test)]
mod tests;

/// How long each step may take before the saga stops trying it and compensates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    /// From the saga's first attempt at a reservation until the facility should have answered:
    /// past it the saga is *stuck* (shown, counted), but it keeps trying, because in this stage
    /// only the system itself can fail to answer.
    pub reserve: TimeDelta,
    /// From the saga's first attempt at a booking until it must have an outcome, however long
    /// the system (broker, command-service, PostgreSQL) could not answer: an outage shorter than
    /// this never fails a booking whose slot was free.
    pub booking: TimeDelta,
    /// From the slot being held until the payment must be taken (or known to be impossible).
    pub capture: TimeDelta,
    /// From the outcome until the family's mail must have been accepted by the SMTP server.
    pub notify: TimeDelta,
    /// How long after its last capture request the saga trusts a lookup that finds nothing:
    /// longer than any request can be in flight at the provider, so that a capture still being
    /// processed after its client gave up is found rather than the booking failed.
    pub settle: TimeDelta,
}

impl Default for Deadlines {
    fn default() -> Self {
        Self {
            reserve: TimeDelta::seconds(30),
            booking: TimeDelta::minutes(30),
            capture: TimeDelta::minutes(2),
            notify: TimeDelta::hours(1),
            settle: TimeDelta::minutes(10),
        }
    }
}

/// What the booking request said that the saga needs later.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub facility_id: FacilityId,
    pub slot: Slot,
    pub price: Money,
    /// The deceased's name and the contacts, sealed as the log carries them: opened only at the
    /// moment a letter is sent, so an erased booking gets no letter (docs/privacy.md).
    #[serde(default)]
    pub personal: Option<SealedPersonal>,
    /// Facts stored by the release before held the recipients in the clear; kept for the letters
    /// of sagas that were in flight then, never written by this release.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recipients: Vec<EmailAddress>,
    /// As `recipients`: the deceased's name in facts of the release before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deceased_name: Option<String>,
    /// The itemised statement, for the confirmation letter (docs/pricing.md). Absent in facts
    /// stored before price lists: their letters then show no statement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statement: Option<Statement>,
}

/// Whether the facility holds the booking's slot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum SlotFact {
    /// No answer from the facility yet.
    #[default]
    Unknown,
    Reserved,
    Rejected {
        reason: String,
    },
    Released,
}

/// What the payment aggregate has recorded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum PaymentFact {
    #[default]
    None,
    Captured {
        reference: String,
        amount: Money,
    },
    Declined {
        reason: String,
    },
    Refunded,
}

/// What the saga alone knows about its capture attempts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureKnowledge {
    /// Money may have moved and the payment's event has not been read yet: a capture request
    /// may have reached the gateway and its answer was lost (a timeout, a 5xx, a broken
    /// connection), or the saga recorded a capture whose event it has not read. Cleared by the
    /// payment's event, or by the gateway saying no money moved (a lookup that finds nothing,
    /// a recorded decline).
    pub uncertain: bool,
    /// A capture request is being sent: set, and committed, before it goes out (write-ahead),
    /// and cleared by the pass that sent it when it records the outcome. Found set by a later
    /// pass, the record of an attempt was lost (the runner was killed, or its database
    /// connection broke while the request was out), so nothing says the request took no
    /// money: the capture is in doubt, as if `uncertain`.
    #[serde(default)]
    pub attempting: bool,
    /// When the last capture request went out (written ahead with `attempting`). A lookup that
    /// finds nothing is trusted only once the settle window has passed since then: until
    /// then the provider may still be processing the request.
    #[serde(default)]
    pub last_sent_at: Option<DateTime<Utc>>,
}

impl CaptureKnowledge {
    /// Whether money may have moved without the saga knowing: it must look before failing.
    pub fn in_doubt(&self) -> bool {
        self.uncertain || self.attempting
    }

    /// From when a lookup that finds nothing may be believed.
    pub fn settles_at(&self, settle: TimeDelta) -> Option<DateTime<Utc>> {
        self.last_sent_at.map(|sent| sent + settle)
    }
}

/// A park: at which step, why, and by whom (`None` while the runner is still recording its
/// own park on the log).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Parked {
    pub step: String,
    pub reason: String,
    #[serde(default)]
    pub by: Option<String>,
}

/// What operators (and the runner itself) decided about this saga, from its own stream
/// (`domain::saga`; docs/saga.md, "Operator actions").
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Control {
    /// Parked: nothing is done until a retry (or a resolution).
    #[serde(default)]
    pub parked: Option<Parked>,
    /// A step failed for good: the runner is recording the park on the log (the `park` step).
    #[serde(default)]
    pub park_pending: Option<Parked>,
    /// Steps an operator counted as done, with why and by whom (`step: "reason (by)"`).
    #[serde(default)]
    pub skipped: std::collections::BTreeMap<String, String>,
    /// Settled by hand: the operator's reason and who. Final.
    #[serde(default)]
    pub resolved: Option<Parked>,
    /// The last sequence of the saga stream read: a new park is a new request
    /// (`saga:<id>:park:<version>`), never a replay of an earlier one.
    #[serde(default)]
    pub version: u64,
}

/// Everything the saga knows about one booking.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Saga {
    pub booking_id: BookingId,
    /// The request, once `BookingRequested` has been read (events of the other topics may come
    /// first).
    pub request: Option<Request>,
    pub status: Option<BookingStatus>,
    pub slot: SlotFact,
    pub payment: PaymentFact,
    pub capture: CaptureKnowledge,
    /// When the facility must have answered.
    pub reserve_deadline: Option<DateTime<Utc>>,
    /// When the payment must have been taken.
    pub capture_deadline: Option<DateTime<Utc>>,
    /// When the outcome's mail must have gone.
    pub notify_deadline: Option<DateTime<Utc>>,
    /// When the booking must have an outcome, however long the system could not answer.
    #[serde(default)]
    pub booking_deadline: Option<DateTime<Utc>>,
    /// Operators' decisions, and the runner's own park.
    #[serde(default)]
    pub control: Control,
    /// Why the booking was rejected, failed or cancelled, as its event says (for the mail).
    #[serde(default)]
    pub reason: Option<String>,
    /// Mails the SMTP server accepted.
    pub notified: BTreeSet<NotificationKind>,
    /// Mails given up on (a permanent refusal, or past the deadline).
    pub notifications_abandoned: BTreeSet<NotificationKind>,
    /// The flow's correlation id (the booking request's).
    pub correlation_id: Option<Uuid>,
    /// The last event that changed these facts: the causation of the saga's next command.
    pub last_event_id: Option<Uuid>,
    /// That event's W3C `traceparent`, so the saga's next step continues the booking's trace.
    #[serde(default)]
    pub traceparent: Option<String>,
    /// The booking's personal data was erased (`PersonalDataErased`): no letter goes out.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub personal_data_erased: bool,
}

/// One thing the saga does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Step {
    /// Ask the facility for the slot.
    ReserveSlot,
    /// Record on the booking that the slot is held.
    MarkSlotHeld,
    /// Take the money at the gateway, then record the answer on the payment.
    Capture,
    /// Ask the gateway what happened to a capture whose answer was lost.
    LookupCapture,
    /// Confirm the booking.
    Confirm,
    /// Reject the booking (the facility refused the slot).
    Reject { reason: String },
    /// Give the slot back to the facility.
    ReleaseSlot,
    /// Fail the booking.
    Fail { reason: String },
    /// Give the money back at the gateway, then record the refund.
    Refund,
    /// Tell the family.
    Notify { kind: NotificationKind },
    /// Record on the log that the saga parks at step `at` (it failed for good): `SagaParked`.
    Park { at: String, reason: String },
}

impl Step {
    /// A stable name: metrics label, idempotency-key suffix, ops view.
    pub fn name(&self) -> &'static str {
        match self {
            Self::ReserveSlot => "reserve_slot",
            Self::MarkSlotHeld => "mark_slot_held",
            Self::Capture => "capture",
            Self::LookupCapture => "lookup_capture",
            Self::Confirm => "confirm",
            Self::Reject { .. } => "reject",
            Self::ReleaseSlot => "release_slot",
            Self::Fail { .. } => "fail",
            Self::Refund => "refund",
            Self::Notify { kind } => match kind {
                NotificationKind::Confirmation => "notify_confirmation",
                NotificationKind::Rejection => "notify_rejection",
                NotificationKind::Failure => "notify_failure",
                NotificationKind::Cancellation => "notify_cancellation",
            },
            Self::Park { .. } => "park",
        }
    }

    /// The compensation this step is, if it is one (`saga_compensations_total{kind}`).
    pub fn compensation(&self) -> Option<&'static str> {
        match self {
            Self::ReleaseSlot => Some("release_slot"),
            Self::Refund => Some("refund"),
            Self::Fail { .. } => Some("fail"),
            Self::Reject { .. } => Some("reject"),
            _ => None,
        }
    }
}

/// What the saga should do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Perform this step.
    Do(Step),
    /// Nothing to do until an event arrives (the booking request has not been read yet).
    Wait,
    /// The booking has its outcome, nothing is left half-done, and the family has been told
    /// (or an operator resolved it by hand).
    Done,
    /// Parked: nothing is done until an operator retries, skips or resolves.
    Parked,
}

/// Where a saga stands, for the ops view and the `sagas_in_flight{state}` gauge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Waiting,
    Reserving,
    Paying,
    Confirming,
    Compensating,
    Notifying,
    Parked,
    Done,
}

impl Stage {
    pub const ALL: [Self; 8] = [
        Self::Waiting,
        Self::Reserving,
        Self::Paying,
        Self::Confirming,
        Self::Compensating,
        Self::Notifying,
        Self::Parked,
        Self::Done,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Waiting => "waiting",
            Self::Reserving => "reserving",
            Self::Paying => "paying",
            Self::Confirming => "confirming",
            Self::Compensating => "compensating",
            Self::Notifying => "notifying",
            Self::Parked => "parked",
            Self::Done => "done",
        }
    }

    /// The stage a decision belongs to.
    pub fn of(decision: &Decision) -> Self {
        match decision {
            Decision::Wait => Self::Waiting,
            Decision::Done => Self::Done,
            Decision::Parked => Self::Parked,
            Decision::Do(step) => match step {
                Step::ReserveSlot | Step::MarkSlotHeld => Self::Reserving,
                Step::Capture | Step::LookupCapture => Self::Paying,
                Step::Confirm => Self::Confirming,
                Step::Reject { .. } | Step::ReleaseSlot | Step::Fail { .. } | Step::Refund => {
                    Self::Compensating
                }
                Step::Notify { .. } => Self::Notifying,
                Step::Park { .. } => Self::Parked,
            },
        }
    }
}

/// An event of the log, as far as the saga cares, with its envelope's ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed<E> {
    pub event: E,
    pub event_id: Uuid,
    pub correlation_id: Uuid,
    pub occurred_at: DateTime<Utc>,
    /// The record's `traceparent` header, if it had one.
    pub traceparent: Option<String>,
    /// Who caused it: the envelope's actor, `subject (role)`.
    pub actor: String,
}

/// What the saga learns by acting, beside the events its commands cause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learned {
    /// A capture request's answer was lost: money may have moved.
    CaptureUncertain,
    /// The gateway captured (its answer, or a lookup that found the capture) and the saga
    /// recorded it on the payment. The money has moved, but until the saga reads the payment's
    /// event its facts do not show it: it must not act as if nothing was taken (a capture
    /// answered just after its deadline would otherwise fail a paid booking and refund it).
    CaptureRecorded,
    /// The gateway said no money moved for the capture's key (a lookup that found nothing, a
    /// recorded decline).
    CaptureSettled,
    /// A lookup found no capture under the key: trusted once the settle window has passed
    /// since the last capture request, until then the capture stays in doubt.
    NothingFound,
    /// The SMTP server accepted the mail.
    Notified(NotificationKind),
    /// The mail will not be sent (refused for good, or past its deadline).
    NotificationAbandoned(NotificationKind),
}

impl Saga {
    /// A saga that knows nothing yet.
    pub fn new(booking_id: BookingId) -> Self {
        Self {
            booking_id,
            request: None,
            status: None,
            slot: SlotFact::Unknown,
            payment: PaymentFact::None,
            capture: CaptureKnowledge::default(),
            reserve_deadline: None,
            capture_deadline: None,
            notify_deadline: None,
            booking_deadline: None,
            control: Control::default(),
            reason: None,
            notified: BTreeSet::new(),
            notifications_abandoned: BTreeSet::new(),
            correlation_id: None,
            last_event_id: None,
            traceparent: None,
            personal_data_erased: false,
        }
    }

    fn observed<E>(&mut self, observed: &Observed<E>) {
        self.last_event_id = Some(observed.event_id);
        self.traceparent.clone_from(&observed.traceparent);
        self.correlation_id.get_or_insert(observed.correlation_id);
    }

    /// Takes in an event of the booking's own stream.
    pub fn on_booking(&mut self, observed: &Observed<BookingEvent>) {
        self.observed(observed);
        let status = match &observed.event {
            BookingEvent::BookingRequested {
                facility_id,
                slot,
                personal,
                price,
                statement,
                ..
            } => {
                self.request = Some(Request {
                    facility_id: *facility_id,
                    slot: *slot,
                    price: *price,
                    personal: Some(personal.clone()),
                    recipients: Vec::new(),
                    deceased_name: None,
                    statement: Some(statement.clone()),
                });
                // The booking request is the flow's origin: its correlation id wins.
                self.correlation_id = Some(observed.correlation_id);
                BookingStatus::Requested
            }
            BookingEvent::BookingSlotHeld {} => BookingStatus::SlotHeld,
            BookingEvent::BookingConfirmed {} => BookingStatus::Confirmed,
            BookingEvent::BookingRejected { reason } => {
                self.reason = Some(reason.clone());
                BookingStatus::Rejected
            }
            BookingEvent::BookingFailed { reason } => {
                self.reason = Some(reason.clone());
                BookingStatus::Failed
            }
            BookingEvent::BookingCancelled { reason, .. } => {
                self.reason.clone_from(reason);
                BookingStatus::Cancelled
            }
            // Nothing else about the booking changes: no new outcome, no new mail.
            BookingEvent::PersonalDataErased { .. } => {
                self.personal_data_erased = true;
                if let Some(request) = self.request.as_mut() {
                    request.recipients.clear();
                    request.deceased_name = None;
                }
                return;
            }
        };
        if self.status != Some(status) {
            // A new outcome (a confirmed booking may still be cancelled) gets its own mail, with
            // its own deadline.
            self.notify_deadline = None;
        }
        self.status = Some(status);
    }

    /// Takes in a facility event about this booking.
    pub fn on_facility(&mut self, observed: &Observed<FacilityEvent>) {
        self.observed(observed);
        self.slot = match &observed.event {
            FacilityEvent::SlotReserved { .. } => SlotFact::Reserved,
            FacilityEvent::SlotRejected { reason, .. } => SlotFact::Rejected {
                reason: rejection_text(*reason).to_owned(),
            },
            FacilityEvent::SlotReleased { .. } => SlotFact::Released,
            _ => return,
        };
    }

    /// Takes in an event of the booking's payment.
    pub fn on_payment(&mut self, observed: &Observed<PaymentEvent>) {
        self.observed(observed);
        self.payment = match &observed.event {
            PaymentEvent::PaymentCaptured {
                amount,
                gateway_reference,
                ..
            } => PaymentFact::Captured {
                reference: gateway_reference.clone(),
                amount: *amount,
            },
            PaymentEvent::PaymentDeclined { reason, .. } => PaymentFact::Declined {
                reason: reason.clone(),
            },
            PaymentEvent::PaymentRefunded { .. } => PaymentFact::Refunded,
        };
        // The gateway's answer is on the log, and the gateway answers every later request
        // with this key the same way: nothing about the capture is in doubt any more.
        self.capture = CaptureKnowledge::default();
    }

    /// Takes in a decision about this saga (its own stream): operators', or the runner's park.
    pub fn on_saga(&mut self, observed: &Observed<SagaEvent>, sequence: u64) {
        self.observed(observed);
        self.control.version = self.control.version.max(sequence);
        let by = Some(observed.actor.clone());
        match &observed.event {
            SagaEvent::SagaParked { step, reason, .. } => {
                self.control.park_pending = None;
                self.control.parked = Some(Parked {
                    step: step.as_str().to_owned(),
                    reason: reason.clone(),
                    by,
                });
            }
            SagaEvent::SagaRetryRequested { .. } => {
                self.control.park_pending = None;
                self.control.parked = None;
                self.restart_clocks();
            }
            SagaEvent::SagaStepSkipped { step, reason, .. } => {
                match step {
                    SagaStep::LookupCapture => self.capture = CaptureKnowledge::default(),
                    SagaStep::NotifyConfirmation => {
                        self.skip_letter(NotificationKind::Confirmation);
                    }
                    SagaStep::NotifyRejection => self.skip_letter(NotificationKind::Rejection),
                    SagaStep::NotifyFailure => self.skip_letter(NotificationKind::Failure),
                    SagaStep::NotifyCancellation => {
                        self.skip_letter(NotificationKind::Cancellation);
                    }
                    // The stream's rules refuse the others; an old or foreign event changes
                    // nothing the log does not say.
                    _ => {}
                }
                self.control.skipped.insert(
                    step.as_str().to_owned(),
                    format!("{reason} ({})", observed.actor),
                );
                if self
                    .control
                    .parked
                    .as_ref()
                    .is_some_and(|parked| parked.step == step.as_str())
                {
                    self.control.parked = None;
                }
                self.control.park_pending = None;
            }
            SagaEvent::SagaResolvedByHand { reason, .. } => {
                self.control.park_pending = None;
                self.control.parked = None;
                self.control.resolved = Some(Parked {
                    step: String::new(),
                    reason: reason.clone(),
                    by,
                });
            }
        }
    }

    fn skip_letter(&mut self, kind: NotificationKind) {
        self.notifications_abandoned.insert(kind);
    }

    /// A retry starts the clocks of the stage the saga is in again (they are armed anew at the
    /// next pass).
    fn restart_clocks(&mut self) {
        match self.status {
            Some(BookingStatus::Requested) => {
                self.reserve_deadline = None;
                self.booking_deadline = None;
            }
            Some(BookingStatus::SlotHeld) => self.capture_deadline = None,
            Some(_) => self.notify_deadline = None,
            None => {}
        }
    }

    /// The step failed for good: park the saga at it. Nothing else is done until the park is on
    /// the log (the `park` step) and an operator acts.
    pub fn park_for_good(&mut self, step: &Step, error: &str) {
        if self.control.parked.is_some() || matches!(step, Step::Park { .. }) {
            return;
        }
        let reason: String = format!("{} failed for good: {error}", step.name())
            .chars()
            .take(480)
            .collect();
        self.control.park_pending = Some(Parked {
            step: step.name().to_owned(),
            reason,
            by: None,
        });
    }

    /// The pass that performed `step` is recording its outcome (what it taught comes next,
    /// through [`Saga::learn`]). `lost_capture_attempt`: the pass found a capture mark when it
    /// began, which, since passes on one booking take turns, an earlier pass left without
    /// recording its outcome; that attempt stays in doubt (`uncertain`) whatever this pass did.
    /// Then no mark is left: this pass's own attempt, if it sent one, is accounted for.
    /// `began`: when the pass began; a capture request it sent went out after that.
    pub fn performed(&mut self, step: &Step, lost_capture_attempt: bool, began: DateTime<Utc>) {
        if lost_capture_attempt {
            self.doubt_capture();
        }
        if *step == Step::Capture || lost_capture_attempt {
            self.capture.attempting = false;
        }
        if *step == Step::Capture {
            self.capture.last_sent_at =
                Some(self.capture.last_sent_at.map_or(began, |at| at.max(began)));
        }
    }

    /// Money may have moved without the saga reading it on the log, unless the payment's event
    /// has been read already: then the log knows what happened and there is nothing to doubt.
    fn doubt_capture(&mut self) {
        self.capture.uncertain = self.payment == PaymentFact::None;
    }

    /// Starts the clock of the step the saga is about to work on, once: a deadline runs from
    /// the saga's first attempt at a step, not from the event that made the step due, so a
    /// backlog of sagas (or a runner that was down) never fails a booking it has not tried.
    pub fn arm_deadlines(&mut self, now: DateTime<Utc>, deadlines: &Deadlines) {
        match self.status {
            Some(BookingStatus::Requested) => {
                self.reserve_deadline.get_or_insert(now + deadlines.reserve);
                self.booking_deadline.get_or_insert(now + deadlines.booking);
            }
            Some(BookingStatus::SlotHeld) => {
                self.capture_deadline.get_or_insert(now + deadlines.capture);
            }
            Some(_) => {
                self.notify_deadline.get_or_insert(now + deadlines.notify);
            }
            None => {}
        }
    }

    /// Takes in what acting taught the saga, `now`, with the settle window of `deadlines`.
    pub fn learn_at(&mut self, learned: Learned, now: DateTime<Utc>, deadlines: &Deadlines) {
        if learned == Learned::NothingFound {
            // A capture request the provider may still be processing is not "nothing": the
            // lookup is believed only once the last request cannot be in flight any more.
            let sent = *self.capture.last_sent_at.get_or_insert(now);
            if now >= sent + deadlines.settle {
                self.capture = CaptureKnowledge::default();
            }
            return;
        }
        self.learn(learned);
    }

    /// Takes in what acting taught the saga.
    pub fn learn(&mut self, learned: Learned) {
        match learned {
            Learned::CaptureUncertain | Learned::CaptureRecorded => self.doubt_capture(),
            Learned::CaptureSettled => self.capture = CaptureKnowledge::default(),
            // Without a clock and a window, nothing found proves nothing (see `learn_at`).
            Learned::NothingFound => {}
            Learned::Notified(kind) => {
                self.notified.insert(kind);
            }
            Learned::NotificationAbandoned(kind) => {
                self.notifications_abandoned.insert(kind);
            }
        }
    }

    fn slot_held(&self) -> bool {
        self.slot == SlotFact::Reserved
    }

    fn passed(deadline: Option<DateTime<Utc>>, now: DateTime<Utc>) -> bool {
        deadline.is_some_and(|deadline| now >= deadline)
    }

    /// Compensations owed once the booking has a final status, in the order of PRODUCT.md:
    /// first learn about or give back the money, then give back the slot.
    fn compensation(&self) -> Option<Step> {
        match self.payment {
            PaymentFact::Captured { .. } => Some(Step::Refund),
            PaymentFact::None if self.capture.in_doubt() => Some(Step::LookupCapture),
            _ => self.slot_held().then_some(Step::ReleaseSlot),
        }
    }

    /// Tell the family once (a mail given up on counts as done: it is reported, not retried
    /// for ever).
    fn notify_once(&self, kind: NotificationKind) -> Decision {
        if self.notified.contains(&kind) || self.notifications_abandoned.contains(&kind) {
            Decision::Done
        } else {
            Decision::Do(Step::Notify { kind })
        }
    }

    /// Compensate, then tell the family.
    fn settle(&self, kind: NotificationKind) -> Decision {
        self.compensation()
            .map_or_else(|| self.notify_once(kind), Decision::Do)
    }

    /// Give the slot back if it is held, then fail the booking.
    fn fail(&self, reason: String) -> Decision {
        if self.slot_held() {
            Decision::Do(Step::ReleaseSlot)
        } else {
            Decision::Do(Step::Fail { reason })
        }
    }

    /// The one next step, from the facts and the time alone.
    pub fn decide(&self, now: DateTime<Utc>) -> Decision {
        use BookingStatus::{Cancelled, Confirmed, Failed, Rejected, Requested, SlotHeld};
        if self.control.resolved.is_some() {
            return Decision::Done;
        }
        if self.control.parked.is_some() {
            return Decision::Parked;
        }
        if let Some(park) = &self.control.park_pending {
            return Decision::Do(Step::Park {
                at: park.step.clone(),
                reason: park.reason.clone(),
            });
        }
        let Some(status) = self.status else {
            return Decision::Wait;
        };
        match status {
            Requested => match &self.slot {
                SlotFact::Rejected { reason } => Decision::Do(Step::Reject {
                    reason: format!("the slot could not be booked: {reason}"),
                }),
                SlotFact::Reserved => Decision::Do(Step::MarkSlotHeld),
                // Only the system itself can fail to answer a reservation (the facility is
                // ours): keep asking until the booking's overall deadline, so that an outage
                // never fails a booking whose slot was free. Past the reserve deadline the
                // saga shows as stuck.
                SlotFact::Unknown if !Self::passed(self.booking_deadline, now) => {
                    Decision::Do(Step::ReserveSlot)
                }
                SlotFact::Unknown | SlotFact::Released => Decision::Do(Step::Fail {
                    reason: "the facility could not confirm the slot in time".to_owned(),
                }),
            },
            SlotHeld => match &self.payment {
                // A booking is never confirmed without its slot: the saga gave it back before
                // the capture reached the log (it should not, see `attempting`), so the family
                // gets a failure and the money back rather than a slot that may be another's.
                PaymentFact::Captured { .. } if self.slot == SlotFact::Released => {
                    Decision::Do(Step::Fail {
                        reason: "the slot was released before the payment was recorded".to_owned(),
                    })
                }
                PaymentFact::Captured { .. } => Decision::Do(Step::Confirm),
                PaymentFact::Declined { reason } => {
                    self.fail(format!("the payment was declined ({reason})"))
                }
                PaymentFact::Refunded => self.fail("the payment was refunded".to_owned()),
                PaymentFact::None if !Self::passed(self.capture_deadline, now) => {
                    Decision::Do(Step::Capture)
                }
                // Never fail a booking while money may have been taken: ask first.
                PaymentFact::None if self.capture.in_doubt() => Decision::Do(Step::LookupCapture),
                PaymentFact::None => self.fail("the payment could not be taken in time".to_owned()),
            },
            Confirmed => self.notify_once(NotificationKind::Confirmation),
            Rejected => self.settle(NotificationKind::Rejection),
            Failed => self.settle(NotificationKind::Failure),
            Cancelled => self.settle(NotificationKind::Cancellation),
        }
    }

    /// The deadline of the step `decision` names, if it has one: past it, the saga is stuck
    /// (a lookup that cannot get an answer, a mail that keeps failing).
    pub fn deadline_of(&self, decision: &Decision) -> Option<DateTime<Utc>> {
        if self.control.park_pending.is_some() {
            return None;
        }
        match Stage::of(decision) {
            Stage::Reserving => self.reserve_deadline,
            Stage::Paying => self.capture_deadline,
            Stage::Notifying => self.notify_deadline,
            _ => None,
        }
    }

    /// Whether the mail of `kind` is past its deadline (the worker then gives up on it).
    pub fn notification_overdue(&self, now: DateTime<Utc>) -> bool {
        Self::passed(self.notify_deadline, now)
    }
}

/// A slot refusal in the family's words.
pub fn rejection_text(reason: SlotRejectionReason) -> &'static str {
    match reason {
        SlotRejectionReason::InPast => "the time has already passed",
        SlotRejectionReason::OutsideOpeningHours => "the facility is closed at that time",
        SlotRejectionReason::OverlapsExisting => "the facility is already booked at that time",
    }
}
