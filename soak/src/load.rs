//! The load generator: concurrent clients driving bookings with a mix of outcomes through the
//! public API while the soak kills processes underneath them, and a journal of every answer
//! the checker must hold the system to.
//!
//! Every write carries an `Idempotency-Key`, so a client that got no answer (a killed process,
//! a broker restart) retries with the same key until it gets one: that is what a careful real
//! client does, and it is what makes "no acknowledged write lost" checkable. A write still
//! unanswered when the client gives up is journalled as unknown, not as lost.

use std::collections::BTreeMap;
use std::sync::{
    Arc, Mutex,
    atomic::{AtomicU64, Ordering},
};
use std::time::Duration;

use anyhow::{Context, bail};
use chrono::{Days, NaiveTime, TimeZone as _, Utc};
use platform::auth::TokenKeys;
use rdkafka::{
    ClientConfig,
    producer::{FutureProducer, FutureRecord},
};
use reqwest::{Client, StatusCode};
use schemas::Role;
use secrecy::SecretString;
use serde_json::{Value, json};
use tokio::time::{Instant, sleep};
use uuid::Uuid;

use crate::journal::{Entry, JournalWriter};

/// What the load generator needs to know.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Every command-service replica; clients spread over them and fail over.
    pub command_urls: Vec<String>,
    pub query_url: String,
    pub gateway_url: String,
    pub brokers: String,
    pub topic_prefix: String,
    pub secret: SecretString,
    /// How long new bookings are started.
    pub duration: Duration,
    /// How long scenarios in flight may still take after that.
    pub drain: Duration,
    /// Concurrent clients.
    pub clients: usize,
    /// New bookings per second at most (all clients together).
    pub rate: f64,
    pub facilities: usize,
    pub seed: u64,
    /// Whether a saga runner drives bookings on (then scenarios wait for confirmations).
    pub saga: bool,
    /// Poison records to put on the event topics during the run.
    pub poison: usize,
    /// How long one write is retried without an answer before it is journalled as unknown.
    pub give_up_after: Duration,
    /// How long the gateway takes to answer a [`Scenario::LateCapture`] capture.
    pub late_capture_delay: Duration,
    /// How long the gateway works on a [`Scenario::DetachedCapture`] capture before it takes the
    /// money, whether or not the saga still waits.
    pub detached_capture_delay: Duration,
    /// When this file appears, no new scenario starts (as if `duration` had passed): the fault
    /// injector ends the load once it has injected what it meant to.
    pub stop_file: Option<std::path::PathBuf>,
}

/// What a booking is set up to meet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scenario {
    /// The gateway approves at once.
    Approve,
    /// The gateway declines: the slot is released and the booking fails.
    Decline,
    /// The gateway answers after 1.5 s.
    Slow,
    /// The gateway answers 500 twice, then approves.
    Error5xx,
    /// The gateway's first answer never comes (nothing charged); the saga retries or looks up.
    Timeout,
    /// The gateway captures, then its answer never comes: the saga must find the capture.
    CaptureThenTimeout,
    /// The gateway captures and answers after the saga's capture deadline, inside its request
    /// timeout: the saga must record the capture and confirm, never fail the paid booking
    /// (docs/reliability.md, soak finding 6).
    LateCapture,
    /// The gateway works on the capture past the saga's request timeout and then takes the
    /// money although the saga gave up, as a real provider does; meanwhile a lookup finds
    /// nothing. The saga must not trust that "nothing" before its settle window, and must end
    /// up keeping or refunding the money (docs/payments.md, "Captures in doubt").
    DetachedCapture,
    /// A slot overlapping another booking's: one of them is rejected.
    Contest,
    /// Cancelled right after the request, racing the saga.
    CancelEarly,
    /// Cancelled once confirmed: refund and release.
    CancelConfirmed,
    /// The same request sent twice at once with one `Idempotency-Key`, to both replicas.
    Replay,
    /// A request the API must refuse, writing nothing.
    BadRequest,
}

impl Scenario {
    /// The mix, with weights (out of 100).
    const MIX: [(Scenario, u32); 13] = [
        (Self::Approve, 24),
        (Self::LateCapture, 3),
        (Self::DetachedCapture, 3),
        (Self::Decline, 9),
        (Self::Slow, 4),
        (Self::Error5xx, 5),
        (Self::Timeout, 3),
        (Self::CaptureThenTimeout, 5),
        (Self::Contest, 14),
        (Self::CancelEarly, 7),
        (Self::CancelConfirmed, 10),
        (Self::Replay, 6),
        (Self::BadRequest, 7),
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Approve => "approve",
            Self::Decline => "decline",
            Self::Slow => "slow",
            Self::Error5xx => "error_5xx",
            Self::Timeout => "timeout",
            Self::CaptureThenTimeout => "capture_then_timeout",
            Self::LateCapture => "late_capture",
            Self::DetachedCapture => "detached_capture",
            Self::Contest => "contest",
            Self::CancelEarly => "cancel_early",
            Self::CancelConfirmed => "cancel_confirmed",
            Self::Replay => "replay",
            Self::BadRequest => "bad_request",
        }
    }

    fn pick(rng: &mut fastrand::Rng) -> Self {
        let total: u32 = Self::MIX.iter().map(|(_, weight)| weight).sum();
        let mut roll = rng.u32(0..total);
        for (scenario, weight) in Self::MIX {
            if roll < weight {
                return scenario;
            }
            roll -= weight;
        }
        Self::Approve
    }

    /// The gateway behaviour this scenario sets for its booking (`docs/payments.md`).
    fn gateway_behaviour(self, config: &LoadConfig) -> Option<Value> {
        match self {
            Self::LateCapture => Some(json!({
                "mode": "slow",
                "delay_ms": u64::try_from(config.late_capture_delay.as_millis()).unwrap_or(u64::MAX),
                "times": 1
            })),
            Self::DetachedCapture => Some(json!({
                "mode": "detached_capture",
                "delay_ms": u64::try_from(config.detached_capture_delay.as_millis()).unwrap_or(u64::MAX),
                "times": 1
            })),
            Self::Decline => Some(json!({"mode": "decline", "decline_reason": "soak_decline"})),
            Self::Slow => Some(json!({"mode": "slow", "delay_ms": 1500})),
            Self::Error5xx => Some(json!({"mode": "error_5xx", "times": 2})),
            Self::Timeout => Some(json!({"mode": "timeout", "times": 1})),
            Self::CaptureThenTimeout => Some(json!({"mode": "capture_then_timeout", "times": 1})),
            _ => None,
        }
    }
}

/// A slot on the grid the clients book from: every facility opens 08:00–20:00 (London) daily
/// and takes one-hour services at even hours, which never conflict with a 30-minute turnaround;
/// a contest asks for a taken one, or for the half hour after it, which conflicts.
#[derive(Debug, Clone, Copy)]
struct GridSlot {
    facility: usize,
    day: u64,
    hour: u32,
    minute: u32,
}

#[derive(Debug, Default)]
struct Grid {
    next: u64,
    taken: Vec<GridSlot>,
}

impl Grid {
    fn fresh(&mut self, facilities: usize) -> GridSlot {
        let facilities = facilities.max(1) as u64;
        let index = self.next;
        self.next += 1;
        let per_facility = index / facilities;
        let slot = GridSlot {
            facility: usize::try_from(index % facilities).unwrap_or_default(),
            day: 2 + per_facility / 6,
            hour: 8 + 2 * u32::try_from(per_facility % 6).unwrap_or_default(),
            minute: 0,
        };
        self.taken.push(slot);
        slot
    }

    fn contested(&mut self, facilities: usize, rng: &mut fastrand::Rng) -> GridSlot {
        if self.taken.is_empty() {
            return self.fresh(facilities);
        }
        let mut slot = self.taken[rng.usize(0..self.taken.len())];
        if rng.bool() {
            slot.minute = 30;
        }
        slot
    }
}

/// Counters for the load's own summary.
#[derive(Debug, Default)]
struct Stats {
    answers: Mutex<BTreeMap<String, u64>>,
    scenarios: Mutex<BTreeMap<&'static str, u64>>,
    retries: AtomicU64,
    unknown: AtomicU64,
    /// Write attempts answered 503.
    unavailable: AtomicU64,
}

impl Stats {
    fn answer(&self, op: &str, status: u16) {
        let mut answers = self
            .answers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *answers.entry(format!("{op} {status}")).or_default() += 1;
    }
}

/// What a write's answer told the client.
#[derive(Debug, Clone)]
struct Answer {
    status: u16,
    body: Value,
}

struct Shared {
    config: LoadConfig,
    http: Client,
    keys: TokenKeys,
    journal: JournalWriter,
    facilities: Vec<Uuid>,
    grid: Mutex<Grid>,
    stats: Stats,
    keys_issued: AtomicU64,
    people: AtomicU64,
    /// When the next booking may start (the rate limit).
    next_start: Mutex<Instant>,
    started: Instant,
    /// When the stop file was first seen.
    stopped: Mutex<Option<Instant>>,
}

impl Shared {
    fn token(&self, role: Role, subject: &str) -> anyhow::Result<String> {
        self.keys
            .mint(subject, role, chrono::Duration::hours(12))
            .context("Failed to mint a token")
    }

    fn key(&self) -> String {
        let n = self.keys_issued.fetch_add(1, Ordering::Relaxed);
        format!("soak-{:x}-{n}", self.config.seed)
    }

    fn record(&self, entry: &Entry) {
        if let Err(error) = self.journal.record(entry) {
            // Without its journal the soak proves nothing: stop at once, loudly.
            eprintln!("soak-load: {error:#}");
            std::process::exit(2);
        }
    }

    fn loading(&self) -> bool {
        if self.started.elapsed() >= self.config.duration {
            return false;
        }
        let mut stopped = self
            .stopped
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if stopped.is_some() {
            return false;
        }
        if let Some(path) = &self.config.stop_file
            && path.exists()
        {
            println!(
                "soak-load: {} appeared after {:.0}s: no new scenarios",
                path.display(),
                self.started.elapsed().as_secs_f64()
            );
            *stopped = Some(Instant::now());
            return false;
        }
        true
    }

    /// When the load stopped (or will stop) starting scenarios.
    fn load_end(&self) -> Instant {
        let end = self.started + self.config.duration;
        self.stopped
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .map_or(end, |stopped| stopped.min(end))
    }

    fn draining_deadline(&self) -> Instant {
        self.load_end() + self.config.drain
    }

    /// Waits for this client's turn under the rate limit.
    async fn pace(&self) {
        let interval = Duration::from_secs_f64(1.0 / self.config.rate.max(0.1));
        let start = {
            let mut next = self
                .next_start
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let start = (*next).max(Instant::now());
            *next = start + interval;
            start
        };
        tokio::time::sleep_until(start).await;
    }
}

/// One write as the client sends it, every attempt alike.
struct WriteRequest<'a> {
    /// What it is, for the journal: `request_booking`, `cancel_booking`, ...
    op: &'a str,
    /// The token's subject.
    subject: &'a str,
    path: &'a str,
    token: &'a str,
    key: &'a str,
    body: Option<&'a Value>,
    if_match: Option<u64>,
}

impl<'a> WriteRequest<'a> {
    /// `POST /bookings` as `who`, with this key and body.
    fn booking(who: &'a Caller, key: &'a str, body: &'a Value) -> Self {
        Self {
            op: "request_booking",
            subject: &who.subject,
            path: "/bookings",
            token: &who.token,
            key,
            body: Some(body),
            if_match: None,
        }
    }
}

/// Milliseconds since the Unix epoch: journal times, comparable with the fault injector's.
pub fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// Sends one write, retrying with the same key while no answer comes (or a 5xx), spreading over
/// the replicas, and journals every attempt. Answers 2xx or 4xx; `None` if the client gave up.
async fn write(
    shared: &Shared,
    rng: &mut fastrand::Rng,
    write: &WriteRequest<'_>,
) -> Option<Answer> {
    let urls = &shared.config.command_urls;
    let mut replica = rng.usize(0..urls.len());
    let give_up = Instant::now() + shared.config.give_up_after;
    let mut delay = Duration::from_millis(100);
    loop {
        let mut request = shared
            .http
            .post(format!("{}{}", urls[replica], write.path))
            .bearer_auth(write.token)
            .header("Idempotency-Key", write.key);
        if let Some(body) = write.body {
            request = request.json(body);
        }
        if let Some(version) = write.if_match {
            request = request.header("If-Match", version.to_string());
        }
        let sent_ms = now_ms();
        let answer = match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                let body = response.json().await.unwrap_or(Value::Null);
                Some(Answer { status, body })
            }
            Err(_) => None,
        };
        shared.record(&Entry::Attempt {
            op: write.op.to_owned(),
            subject: write.subject.to_owned(),
            idempotency_key: write.key.to_owned(),
            sent_ms,
            answered_ms: now_ms(),
            status: answer.as_ref().map(|answer| answer.status),
        });
        if answer.as_ref().is_some_and(|answer| answer.status == 503) {
            shared.stats.unavailable.fetch_add(1, Ordering::Relaxed);
        }
        match answer {
            Some(answer) if answer.status < 500 => return Some(answer),
            _ => {}
        }
        if Instant::now() + delay > give_up {
            return None;
        }
        shared.stats.retries.fetch_add(1, Ordering::Relaxed);
        sleep(delay + Duration::from_millis(rng.u64(0..100))).await;
        delay = (delay * 2).min(Duration::from_secs(2));
        replica = (replica + 1) % urls.len();
    }
}

/// Journals a write's final answer.
fn journal_answer(
    shared: &Shared,
    op: &str,
    subject: &str,
    key: &str,
    id_field: &str,
    answer: Option<&Answer>,
) -> Option<(Uuid, u64)> {
    let Some(answer) = answer else {
        shared.stats.unknown.fetch_add(1, Ordering::Relaxed);
        shared.record(&Entry::Unknown {
            op: op.to_owned(),
            subject: subject.to_owned(),
            idempotency_key: key.to_owned(),
        });
        return None;
    };
    shared.stats.answer(op, answer.status);
    if (200..300).contains(&answer.status) {
        let id = answer.body[id_field]
            .as_str()
            .and_then(|id| id.parse().ok());
        let version = answer.body["version"].as_u64();
        let (Some(id), Some(version)) = (id, version) else {
            eprintln!(
                "soak-load: a {op} answered {} without id or version: {}",
                answer.status, answer.body
            );
            return None;
        };
        shared.record(&Entry::Acknowledged {
            op: op.to_owned(),
            subject: subject.to_owned(),
            idempotency_key: Some(key.to_owned()),
            aggregate_id: id,
            version,
            token: answer.body["consistency_token"].as_str().map(str::to_owned),
            status: answer.status,
        });
        Some((id, version))
    } else {
        shared.record(&Entry::Refused {
            op: op.to_owned(),
            subject: subject.to_owned(),
            idempotency_key: key.to_owned(),
            status: answer.status,
        });
        None
    }
}

fn facility_body(index: usize) -> Value {
    let hours: Vec<Value> = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
        .iter()
        .map(|day| json!({"weekday": day, "opens": "08:00", "closes": "20:00"}))
        .collect();
    json!({
        "name": format!("Soak Chapel {index}"),
        "kind": "chapel",
        "capacity": 100,
        "time_zone": "Europe/London",
        "opening_hours": hours,
        "turnaround_minutes": 30,
    })
}

fn booking_body(shared: &Shared, rng: &mut fastrand::Rng, slot: GridSlot) -> Value {
    let today = Utc::now()
        .with_timezone(&chrono_tz::Europe::London)
        .date_naive();
    let day = today.checked_add_days(Days::new(slot.day)).unwrap_or(today);
    let time = NaiveTime::from_hms_opt(slot.hour, slot.minute, 0).unwrap_or_default();
    let start = chrono_tz::Europe::London
        .from_local_datetime(&day.and_time(time))
        .earliest()
        .map(|start| start.fixed_offset());
    // Every grid time exists on every London day (the clocks change at night).
    let start = start.unwrap_or_else(|| Utc::now().fixed_offset() + chrono::Duration::days(30));
    let end = start + chrono::Duration::hours(1);
    let person = shared.people.fetch_add(1, Ordering::Relaxed);
    let death = today.checked_sub_days(Days::new(3)).unwrap_or(today);
    let mut contacts = vec![json!({
        "name": "Byron King",
        "relationship": "son",
        "email": format!("family-{person}@soak.example"),
        "phone": "+447700900123",
    })];
    if rng.u8(0..4) == 0 {
        contacts.push(json!({
            "name": "Ada King",
            "relationship": "daughter",
            "email": format!("family-{person}-b@soak.example"),
        }));
    }
    let service = ["burial", "cremation", "memorial", "viewing"][rng.usize(0..4)];
    // The home's list prices each booking (docs/pricing.md); add-ons vary the totals.
    let add_ons: Vec<&str> = ["celebrant", "transport"]
        .into_iter()
        .filter(|_| rng.bool())
        .collect();
    json!({
        "facility_id": shared.facilities[slot.facility % shared.facilities.len()],
        "service_type": service,
        "slot": {"start": start.to_rfc3339(), "end": end.to_rfc3339()},
        "deceased": {"full_name": format!("Soak Person {person}"), "date_of_death": death.format("%Y-%m-%d").to_string()},
        "family_contacts": contacts,
        "add_ons": add_ons,
    })
}

/// Who a client acts as: directors book for families; some families book for themselves.
struct Caller {
    subject: String,
    token: String,
}

fn caller(shared: &Shared, rng: &mut fastrand::Rng, client: usize) -> anyhow::Result<Caller> {
    let (role, subject) = if rng.u8(0..5) == 0 {
        (Role::Family, format!("soak-family-{client}"))
    } else {
        (Role::Director, format!("soak-director-{}", client % 4))
    };
    Ok(Caller {
        token: shared.token(role, &subject)?,
        subject,
    })
}

async fn request_booking(
    shared: &Shared,
    rng: &mut fastrand::Rng,
    who: &Caller,
    slot: GridSlot,
) -> Option<(Uuid, u64)> {
    let body = booking_body(shared, rng, slot);
    let key = shared.key();
    let answer = write(shared, rng, &WriteRequest::booking(who, &key, &body)).await;
    journal_answer(
        shared,
        "request_booking",
        &who.subject,
        &key,
        "booking_id",
        answer.as_ref(),
    )
}

async fn set_gateway(shared: &Shared, booking: Uuid, behaviour: &Value) {
    for _ in 0..5 {
        let sent = shared
            .http
            .put(format!(
                "{}/control/bookings/{booking}",
                shared.config.gateway_url
            ))
            .json(behaviour)
            .send()
            .await;
        if sent.is_ok_and(|response| response.status().is_success()) {
            return;
        }
        sleep(Duration::from_millis(100)).await;
    }
    eprintln!("soak-load: could not set the gateway behaviour of {booking}");
}

/// Cancels, retrying a lost race (409) or a stale `If-Match` (412) a few times, and a 404 from
/// a replica that has not read the booking yet.
async fn cancel(
    shared: &Shared,
    rng: &mut fastrand::Rng,
    who: &Caller,
    booking: Uuid,
    mut if_match: Option<u64>,
) {
    let key = shared.key();
    let path = format!("/bookings/{booking}/cancel");
    let body = json!({"reason": "The family asked for another date"});
    let mut answer = None;
    for attempt in 0..8 {
        let request = WriteRequest {
            op: "cancel_booking",
            subject: &who.subject,
            path: &path,
            token: &who.token,
            key: &key,
            body: Some(&body),
            if_match,
        };
        answer = write(shared, rng, &request).await;
        match answer.as_ref().map(|a| a.status) {
            Some(412) => if_match = None,
            Some(409 | 404) if attempt < 7 => {}
            _ => break,
        }
        shared.stats.retries.fetch_add(1, Ordering::Relaxed);
        sleep(Duration::from_millis(150 + rng.u64(0..150))).await;
    }
    journal_answer(
        shared,
        "cancel_booking",
        &who.subject,
        &key,
        "booking_id",
        answer.as_ref(),
    );
}

/// Polls the query-api until the booking is confirmed or final; its status and version.
async fn await_outcome(shared: &Shared, who: &Caller, booking: Uuid) -> Option<(String, u64)> {
    let deadline = shared
        .draining_deadline()
        .min(Instant::now() + Duration::from_secs(90));
    while Instant::now() < deadline {
        let response = shared
            .http
            .get(format!("{}/bookings/{booking}", shared.config.query_url))
            .bearer_auth(&who.token)
            .send()
            .await;
        if let Ok(response) = response
            && response.status() == StatusCode::OK
            && let Ok(body) = response.json::<Value>().await
        {
            let status = body["status"].as_str().unwrap_or_default().to_owned();
            if matches!(
                status.as_str(),
                "confirmed" | "rejected" | "failed" | "cancelled"
            ) {
                return Some((status, body["version"].as_u64().unwrap_or_default()));
            }
        }
        sleep(Duration::from_millis(500)).await;
    }
    None
}

async fn bad_request(shared: &Shared, rng: &mut fastrand::Rng, who: &Caller) {
    let slot = GridSlot {
        facility: 0,
        day: 40,
        hour: 10,
        minute: 0,
    };
    let mut body = booking_body(shared, rng, slot);
    let (path, body) = match rng.u8(0..5) {
        // A slot in the past, no family contact, a float amount: 422 naming each.
        0 => {
            body["slot"] =
                json!({"start": "2020-01-01T10:00:00+00:00", "end": "2020-01-01T11:00:00+00:00"});
            body["family_contacts"] = json!([]);
            ("/bookings".to_owned(), body)
        }
        // A price in the request: the home's list sets it, so the field is refused (422).
        1 => {
            body["price"] = json!({"amount_minor": 1, "currency": "GBP"});
            ("/bookings".to_owned(), body)
        }
        // An unknown facility: 404.
        2 => {
            body["facility_id"] = json!(Uuid::new_v4());
            ("/bookings".to_owned(), body)
        }
        // A slot outside opening hours (03:00): 422.
        3 => {
            let day = (Utc::now() + chrono::Duration::days(20)).date_naive();
            body["slot"] = json!({"start": format!("{day}T03:00:00+00:00"), "end": format!("{day}T04:00:00+00:00")});
            ("/bookings".to_owned(), body)
        }
        // Cancelling a booking that does not exist: 404.
        _ => (format!("/bookings/{}/cancel", Uuid::new_v4()), json!({})),
    };
    let key = shared.key();
    let request = WriteRequest {
        op: "bad_request",
        subject: &who.subject,
        path: &path,
        token: &who.token,
        key: &key,
        body: Some(&body),
        if_match: None,
    };
    let answer = write(shared, rng, &request).await;
    if let Some(answer) = &answer
        && (200..300).contains(&answer.status)
    {
        eprintln!(
            "soak-load: a bad request was accepted: {path} {body} -> {}",
            answer.body
        );
    }
    journal_answer(
        shared,
        "bad_request",
        &who.subject,
        &key,
        "booking_id",
        answer.as_ref(),
    );
}

async fn run_scenario(
    shared: &Shared,
    rng: &mut fastrand::Rng,
    client: usize,
    scenario: Scenario,
) -> anyhow::Result<()> {
    let who = caller(shared, rng, client)?;
    let facilities = shared.facilities.len();
    let slot = {
        let mut grid = shared
            .grid
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if scenario == Scenario::Contest {
            grid.contested(facilities, rng)
        } else {
            grid.fresh(facilities)
        }
    };
    match scenario {
        Scenario::BadRequest => bad_request(shared, rng, &who).await,
        Scenario::Replay => {
            let body = booking_body(shared, rng, slot);
            let key = shared.key();
            let (mut one, mut two) = (rng.fork(), rng.fork());
            let request = WriteRequest::booking(&who, &key, &body);
            let (first, second) = tokio::join!(
                write(shared, &mut one, &request),
                write(shared, &mut two, &request),
            );
            for answer in [first, second] {
                if let Some((booking, _)) = journal_answer(
                    shared,
                    "request_booking",
                    &who.subject,
                    &key,
                    "booking_id",
                    answer.as_ref(),
                ) {
                    scenario_entry(shared, booking, scenario);
                }
            }
        }
        _ => {
            let Some((booking, version)) = request_booking(shared, rng, &who, slot).await else {
                return Ok(());
            };
            scenario_entry(shared, booking, scenario);
            if let Some(behaviour) = scenario.gateway_behaviour(&shared.config) {
                set_gateway(shared, booking, &behaviour).await;
            }
            match scenario {
                Scenario::CancelEarly => {
                    let if_match = rng.bool().then_some(version);
                    cancel(shared, rng, &who, booking, if_match).await;
                }
                Scenario::CancelConfirmed => {
                    if shared.config.saga {
                        if let Some((status, version)) = await_outcome(shared, &who, booking).await
                            && status == "confirmed"
                        {
                            // At once half of the time (racing the confirmation mail), or after
                            // the family has had time to read it.
                            if rng.bool() {
                                sleep(Duration::from_millis(rng.u64(1000..5000))).await;
                            }
                            let if_match = rng.bool().then_some(version);
                            cancel(shared, rng, &who, booking, if_match).await;
                        }
                    } else {
                        sleep(Duration::from_millis(rng.u64(200..2000))).await;
                        cancel(shared, rng, &who, booking, None).await;
                    }
                }
                _ => {}
            }
        }
    }
    Ok(())
}

fn scenario_entry(shared: &Shared, booking: Uuid, scenario: Scenario) {
    shared.record(&Entry::Scenario {
        booking_id: booking,
        scenario: scenario.name().to_owned(),
    });
}

async fn client_loop(shared: Arc<Shared>, client: usize) -> anyhow::Result<()> {
    let mut rng = fastrand::Rng::with_seed(shared.config.seed.wrapping_add(client as u64 * 7919));
    while shared.loading() {
        shared.pace().await;
        if !shared.loading() {
            break;
        }
        let scenario = Scenario::pick(&mut rng);
        {
            let mut scenarios = shared
                .stats
                .scenarios
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            *scenarios.entry(scenario.name()).or_default() += 1;
        }
        run_scenario(&shared, &mut rng, client, scenario).await?;
    }
    Ok(())
}

/// The price list the test stacks publish too (every service type, every facility kind by the
/// hour, the add-ons the soak's requests pick from).
const PRICE_LIST: &str = include_str!("../../compose/price-list.json");

/// [`PRICE_LIST`] for the home the soak's facilities belong to (the deployment's default home:
/// its directors' shared-secret tokens name no home), published once on the first replica: the
/// replicas share the database it lives in.
async fn publish_price_list(shared: &Shared, token: &str) -> anyhow::Result<()> {
    let home = platform::settings::TenancySettings::LOCAL_HOME_A;
    let url = shared
        .config
        .command_urls
        .first()
        .context("no command-service to publish the price list on")?;
    let body: serde_json::Value = serde_json::from_str(PRICE_LIST)
        .context("compose/price-list.json is not JSON: the soak was built from a broken tree")?;
    // The stack may still be settling (a replica restarting): retry for a while.
    let mut last = String::new();
    for _ in 0..60 {
        let answer = shared
            .http
            .put(format!("{url}/homes/{home}/price-list"))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await;
        match answer {
            Ok(response) if response.status().is_success() => return Ok(()),
            Ok(response) => last = format!("{}", response.status()),
            Err(error) => last = error.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    bail!("publishing the soak's price list failed: {last}")
}

async fn register_facilities(
    shared: &Shared,
    rng: &mut fastrand::Rng,
) -> anyhow::Result<Vec<Uuid>> {
    let token = shared.token(Role::Director, "soak-director-0")?;
    publish_price_list(shared, &token).await?;
    let mut facilities = Vec::new();
    for index in 0..shared.config.facilities {
        let key = shared.key();
        let body = facility_body(index);
        let request = WriteRequest {
            op: "register_facility",
            subject: "soak-director-0",
            path: "/facilities",
            token: &token,
            key: &key,
            body: Some(&body),
            if_match: None,
        };
        let answer = write(shared, rng, &request).await;
        let Some((id, _)) = journal_answer(
            shared,
            "register_facility",
            "soak-director-0",
            &key,
            "facility_id",
            answer.as_ref(),
        ) else {
            bail!("registering facility {index} failed: {answer:?}");
        };
        facilities.push(id);
    }
    // Every replica must know every facility before clients book on it, or a replica that has
    // not read the registration yet answers 404. Releasing a slot nobody holds changes nothing
    // and answers 200 once the replica knows the facility.
    let system = shared.token(Role::System, "soak-probe")?;
    for url in &shared.config.command_urls {
        for facility in &facilities {
            let probe = format!(
                "{url}/facilities/{facility}/reservations/{}/release",
                Uuid::new_v4()
            );
            let known = async {
                loop {
                    let response = shared.http.post(&probe).bearer_auth(&system).send().await;
                    if response.is_ok_and(|r| r.status().is_success()) {
                        return;
                    }
                    sleep(Duration::from_millis(100)).await;
                }
            };
            tokio::time::timeout(Duration::from_mins(1), known)
                .await
                .with_context(|| format!("{url} never learnt of facility {facility}"))?;
        }
    }
    Ok(facilities)
}

/// Puts `count` records that are not events on the event topics at random moments of the run.
///
/// Each carries a marker journalled before it is sent, so that the checker recognises it (and
/// any copy a retried send wrote) without relying on where it landed. The producer is not
/// idempotent: an idempotent one whose send fails bumps its epoch, which Tansu 0.6 cannot take
/// (docs/reliability.md), and a duplicate poison record is harmless.
async fn inject_poison(shared: Arc<Shared>, seed: u64) -> anyhow::Result<()> {
    let count = shared.config.poison;
    if count == 0 {
        return Ok(());
    }
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &shared.config.brokers)
        .set("client.id", "soak-poison")
        .set("enable.idempotence", "false")
        .set("acks", "all")
        .set("message.timeout.ms", "30000")
        .create()
        .context("Failed to create the poison producer")?;
    let mut rng = fastrand::Rng::with_seed(seed ^ 0x5eed);
    // Spread over the run, but at most 30 s apart: a run ended early by its stop file (whose
    // duration is only a cap) still sends them all.
    let spacing = (shared.config.duration / u32::try_from(count + 1).unwrap_or(u32::MAX))
        .min(Duration::from_secs(30));
    for n in 0..count {
        sleep(spacing).await;
        if !shared.loading() {
            break;
        }
        // Four kinds in turn, over the topics in turn: bytes that are not JSON, JSON that is
        // not an envelope, an envelope of an event type nobody knows, and a facility that
        // passes every schema but that the domain refuses (a time zone that does not exist),
        // which only decoding finds (issue 14).
        let kinds = ["booking", "facility", "payment"];
        let variant = n % 4;
        let kind = if variant == 3 {
            "facility"
        } else {
            kinds[n % kinds.len()]
        };
        let topic = format!("{}.{kind}.events", shared.config.topic_prefix);
        let marker = format!("soak-poison-{:x}-{n}", shared.config.seed);
        let value: Vec<u8> = match variant {
            0 => format!("\u{0}\u{1} {marker}: this is not JSON").into_bytes(),
            1 => serde_json::to_vec(
                &json!({"soak": marker, "looks_like": "an envelope without its fields"}),
            )
            .context("Failed to build a poison record")?,
            3 => {
                let facility = Uuid::new_v4();
                serde_json::to_vec(&json!({
                    "event_id": Uuid::new_v4(), "event_type": "FacilityRegistered",
                    "event_version": 1, "aggregate_type": "facility", "aggregate_id": facility,
                    "sequence": 1, "occurred_at": Utc::now(), "correlation_id": Uuid::new_v4(),
                    "causation_id": Uuid::new_v4(),
                    "actor": {"subject": "soak", "role": "director"},
                    "data": {
                        "facility_id": facility, "name": marker, "kind": "chapel",
                        "capacity": 40, "time_zone": "Mars/Olympus_Mons",
                        "opening_hours": [{"weekday": "mon", "opens": "09:00", "closes": "17:00"}],
                        "turnaround_minutes": 30
                    }
                }))
                .context("Failed to build a poison record")?
            }
            _ => serde_json::to_vec(&json!({
                "event_id": Uuid::new_v4(), "event_type": "BookingTeleported", "event_version": 1,
                "aggregate_type": "booking", "aggregate_id": Uuid::new_v4(), "sequence": 1,
                "occurred_at": Utc::now(), "correlation_id": Uuid::new_v4(),
                "causation_id": Uuid::new_v4(), "actor": {"subject": "soak", "role": "system"},
                "data": {"soak": marker},
            }))
            .context("Failed to build a poison record")?,
        };
        let key = Uuid::new_v4().to_string();
        shared.record(&Entry::Poison {
            marker: marker.clone(),
            topic: topic.clone(),
            written: None,
        });
        // A broker restart may be under way: retry until the record lands.
        let deadline = Instant::now() + Duration::from_mins(2);
        loop {
            let record = FutureRecord::to(&topic).key(&key).payload(&value);
            match producer.send(record, Duration::from_secs(30)).await {
                Ok(delivery) => {
                    shared.record(&Entry::Poison {
                        marker: marker.clone(),
                        topic: topic.clone(),
                        written: Some(format!(
                            "{topic}:{}:{}",
                            delivery.partition, delivery.offset
                        )),
                    });
                    break;
                }
                Err((error, _)) if Instant::now() < deadline => {
                    eprintln!("soak-load: poison record not written yet ({error}); retrying");
                    sleep(Duration::from_millis(1000 + rng.u64(0..1000))).await;
                }
                Err((error, _)) => bail!("a poison record could not be written: {error}"),
            }
        }
    }
    Ok(())
}

/// Reads one facility from the query-api every half second and journals each answer, so that
/// the checker can tell whether reads kept answering while the brokers were out.
async fn probe_reads(shared: Arc<Shared>) -> anyhow::Result<()> {
    let token = shared.token(Role::Director, "soak-director-0")?;
    let Some(facility) = shared.facilities.first() else {
        return Ok(());
    };
    let url = format!("{}/facilities/{facility}", shared.config.query_url);
    loop {
        let answer = shared
            .http
            .get(&url)
            .bearer_auth(&token)
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        shared.record(&Entry::Read {
            at_ms: now_ms(),
            status: answer.ok().map(|response| response.status().as_u16()),
        });
        sleep(Duration::from_millis(500)).await;
    }
}

/// Runs the load; writes the journal as it goes; prints its own summary at the end.
pub async fn run(config: LoadConfig, journal: JournalWriter) -> anyhow::Result<()> {
    if config.command_urls.is_empty() {
        bail!("at least one command-service URL is needed");
    }
    let keys = TokenKeys::from_secret(&config.secret).context("Invalid FM_AUTH__SECRET")?;
    let http = Client::builder()
        .timeout(Duration::from_secs(20))
        .connect_timeout(Duration::from_secs(2))
        .build()
        .context("Failed to build the HTTP client")?;
    let seed = config.seed;
    let mut shared = Shared {
        config,
        http,
        keys,
        journal,
        facilities: Vec::new(),
        grid: Mutex::default(),
        stats: Stats::default(),
        keys_issued: AtomicU64::new(0),
        people: AtomicU64::new(0),
        next_start: Mutex::new(Instant::now()),
        started: Instant::now(),
        stopped: Mutex::new(None),
    };
    let mut rng = fastrand::Rng::with_seed(seed);
    shared.facilities = register_facilities(&shared, &mut rng).await?;
    shared.started = Instant::now();
    *shared
        .next_start
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Instant::now();
    let shared = Arc::new(shared);
    let mut tasks = tokio::task::JoinSet::new();
    for client in 0..shared.config.clients {
        tasks.spawn(client_loop(shared.clone(), client));
    }
    tasks.spawn(inject_poison(shared.clone(), seed));
    let probe = tokio::spawn(probe_reads(shared.clone()));
    let mut failure = None;
    loop {
        // The stop file moves the deadline: look again every second.
        let deadline = shared.draining_deadline() + Duration::from_secs(5);
        if Instant::now() >= deadline {
            eprintln!(
                "soak-load: {} clients still busy at the end of the drain; stopping them",
                tasks.len()
            );
            tasks.abort_all();
            break;
        }
        let _ = shared.loading();
        let wait = deadline.min(Instant::now() + Duration::from_secs(1));
        match tokio::time::timeout_at(wait, tasks.join_next()).await {
            // A client done, or a second without one (look at the stop file again).
            Ok(Some(Ok(Ok(())))) | Err(_) => {}
            Ok(Some(Ok(Err(error)))) => failure = Some(error),
            Ok(Some(Err(error))) => failure = Some(anyhow::anyhow!("a client panicked: {error}")),
            Ok(None) => break,
        }
    }
    probe.abort();
    let elapsed = shared.started.elapsed();
    let stats = &shared.stats;
    let scenarios = stats
        .scenarios
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let answers = stats
        .answers
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let started: u64 = scenarios.values().sum();
    println!(
        "soak-load: {started} scenarios in {:.0}s ({:.1}/s), {} retries, {} answers 503, {} unknown outcomes",
        elapsed.as_secs_f64(),
        f64::from(u32::try_from(started).unwrap_or(u32::MAX)) / elapsed.as_secs_f64().max(1.0),
        stats.retries.load(Ordering::Relaxed),
        stats.unavailable.load(Ordering::Relaxed),
        stats.unknown.load(Ordering::Relaxed),
    );
    println!("soak-load: scenarios {scenarios:?}");
    println!("soak-load: answers {answers:?}");
    match failure {
        Some(error) => Err(error),
        None => Ok(()),
    }
}
