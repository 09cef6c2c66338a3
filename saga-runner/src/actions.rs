//! Performing one step: commands to the command-service, calls to the payment gateway, mails.
//!
//! Every step is safe to perform again (docs/saga.md, "Durable state, effectively once"):
//! commands carry `Idempotency-Key: saga:<booking_id>:<step>` and are no-ops when their effect
//! already holds; the gateway gets `capture:<booking_id>` / `refund:<booking_id>`; a mail has a
//! deterministic Message-ID. Each call returns what the saga learned, and whether the step is
//! finished (its event will arrive) or must be retried.

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use domain::values::BookingId;
use notifications::{Mailer, Notification, NotificationKind};
use payment_gateway::{
    BreakingGateway, CaptureRequest, GatewayError, HttpGateway, PaymentGateway, PaymentRecord,
    RefundRequest,
};
use platform::auth::ServiceToken;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::{
    saga::{Learned, PaymentFact, Saga, Step},
    store,
};

/// Why a step was not done, which decides what happens next (docs/saga.md, "Permanent,
/// unavailable, refused for now").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The system could not answer: the command-service unreachable, timing out, 5xx or 503
    /// (the broker or PostgreSQL behind it down). Retried with backoff; never the family's
    /// failure.
    Unavailable,
    /// The other side answered "not now": a lost race, a transition the facts have not caught up
    /// with, the provider's own trouble, the open breaker. Retried with backoff until the
    /// step's deadline.
    Transient,
    /// No retry of this request can succeed (a 422 from the command-service, the gateway's
    /// refusal of the request itself): the saga parks for an operator at once.
    Permanent,
}

/// How a step went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepOutcome {
    /// Done. For a command, its event is on its way; the saga decides again when it arrives.
    Performed { learned: Option<Learned> },
    /// Not done; try again after a backoff, or park (`Failure::Permanent`).
    Failed {
        error: String,
        learned: Option<Learned>,
        failure: Failure,
    },
}

impl StepOutcome {
    fn failed(error: impl std::fmt::Display) -> Self {
        Self::Failed {
            error: error.to_string(),
            learned: None,
            failure: Failure::Transient,
        }
    }

    fn failed_as(failure: Failure, error: impl std::fmt::Display) -> Self {
        Self::Failed {
            error: error.to_string(),
            learned: None,
            failure,
        }
    }

    /// The label of `saga_steps_total{outcome}`: `performed`, `abandoned` (a mail given up),
    /// `failed` (refused for now), `unavailable` (the system could not answer), `permanent`
    /// (parked).
    pub fn label(&self) -> &'static str {
        match self {
            Self::Performed {
                learned: Some(Learned::NotificationAbandoned(_)),
            } => "abandoned",
            Self::Performed { .. } => "performed",
            Self::Failed {
                failure: Failure::Transient,
                ..
            } => "failed",
            Self::Failed {
                failure: Failure::Unavailable,
                ..
            } => "unavailable",
            Self::Failed {
                failure: Failure::Permanent,
                ..
            } => "permanent",
        }
    }
}

/// The idempotency key of a gateway capture for a booking.
pub fn capture_key(booking_id: BookingId) -> String {
    format!("capture:{booking_id}")
}

/// The idempotency key of a gateway refund for a booking.
pub fn refund_key(booking_id: BookingId) -> String {
    format!("refund:{booking_id}")
}

/// Everything a step may touch.
#[derive(Debug, Clone)]
pub struct Effects {
    pub commands: CommandClient,
    pub gateway: Arc<BreakingGateway<HttpGateway>>,
    pub mailer: Arc<Mailer>,
    pub pool: PgPool,
    /// The data keys a letter's recipients are opened with, when it is sent.
    pub keys: Arc<privacy::KeyStore>,
}

impl Effects {
    /// Performs `step` for `saga`. `overdue` says whether the step's deadline has passed (a
    /// mail past it is given up on rather than retried).
    pub async fn perform(&self, saga: &Saga, step: &Step, now: DateTime<Utc>) -> StepOutcome {
        let Some(request) = saga.request.as_ref() else {
            return StepOutcome::failed("the booking request has not been read yet");
        };
        let id = saga.booking_id;
        let facility = request.facility_id;
        let command = |path: String, body: Value| self.commands.send(saga, step, path, body);
        match step {
            Step::ReserveSlot => {
                command(
                    format!("/facilities/{facility}/reservations"),
                    json!({
                        "booking_id": id,
                        "slot": {
                            "start": request.slot.start().to_rfc3339(),
                            "end": request.slot.end().to_rfc3339(),
                        },
                    }),
                )
                .await
            }
            Step::MarkSlotHeld => command(format!("/bookings/{id}/slot-held"), json!({})).await,
            Step::Confirm => command(format!("/bookings/{id}/confirm"), json!({})).await,
            Step::Reject { reason } => {
                command(
                    format!("/bookings/{id}/reject"),
                    json!({ "reason": reason }),
                )
                .await
            }
            Step::Fail { reason } => {
                command(format!("/bookings/{id}/fail"), json!({ "reason": reason })).await
            }
            Step::ReleaseSlot => {
                command(
                    format!("/facilities/{facility}/reservations/{id}/release"),
                    json!({}),
                )
                .await
            }
            Step::Capture => self.capture(saga).await,
            Step::LookupCapture => self.lookup(saga).await,
            Step::Refund => self.refund(saga).await,
            Step::Notify { kind } => self.notify(saga, *kind, now).await,
            Step::Park { at, reason } => {
                command(
                    format!("/sagas/{id}/park"),
                    json!({ "step": at, "reason": reason }),
                )
                .await
            }
        }
    }

    async fn capture(&self, saga: &Saga) -> StepOutcome {
        let Some(request) = saga.request.as_ref() else {
            return StepOutcome::failed("no booking request");
        };
        let capture = CaptureRequest {
            idempotency_key: capture_key(saga.booking_id),
            booking_id: saga.booking_id,
            amount: request.price,
        };
        match self.gateway.capture(&capture).await {
            Ok(captured) => {
                self.record(
                    saga,
                    "captured",
                    &captured.reference,
                    request.price.amount_minor(),
                )
                .await
            }
            Err(GatewayError::Declined { reason }) => {
                self.record_decline(saga, &reason, request.price.amount_minor())
                    .await
            }
            Err(error) => StepOutcome::Failed {
                learned: error
                    .may_have_moved_money()
                    .then_some(Learned::CaptureUncertain),
                failure: gateway_failure(&error),
                error: error.to_string(),
            },
        }
    }

    /// Records the gateway's capture on the payment. Until it is recorded the money has moved
    /// without the log knowing, which is exactly "uncertain": past the deadline, a lookup
    /// finds it rather than the booking failing with the money kept.
    async fn record(
        &self,
        saga: &Saga,
        outcome: &str,
        reference: &str,
        amount_minor: i64,
    ) -> StepOutcome {
        let Some(request) = saga.request.as_ref() else {
            return StepOutcome::failed("no booking request");
        };
        let id = saga.booking_id;
        let body = json!({
            "amount": {"amount_minor": amount_minor, "currency": request.price.currency().code()},
            "gateway_reference": reference,
        });
        match self
            .commands
            .send(
                saga,
                &Step::Capture,
                format!("/bookings/{id}/payment/{outcome}"),
                body,
            )
            .await
        {
            StepOutcome::Performed { .. } => StepOutcome::Performed {
                learned: Some(Learned::CaptureRecorded),
            },
            // The money moved: whatever kept it off the log, the capture stays in doubt and is
            // looked up, never failed; recording it again is a no-op.
            StepOutcome::Failed { error, failure, .. } => StepOutcome::Failed {
                error: format!("the gateway captured, but recording it failed: {error}"),
                learned: Some(Learned::CaptureUncertain),
                failure,
            },
        }
    }

    async fn record_decline(&self, saga: &Saga, reason: &str, amount_minor: i64) -> StepOutcome {
        let Some(request) = saga.request.as_ref() else {
            return StepOutcome::failed("no booking request");
        };
        let id = saga.booking_id;
        let body = json!({
            "amount": {"amount_minor": amount_minor, "currency": request.price.currency().code()},
            "reason": reason,
        });
        match self
            .commands
            .send(
                saga,
                &Step::Capture,
                format!("/bookings/{id}/payment/declined"),
                body,
            )
            .await
        {
            StepOutcome::Performed { .. } => StepOutcome::Performed {
                learned: Some(Learned::CaptureSettled),
            },
            // A decline moved no money: nothing is uncertain, the retry replays the decline.
            failed @ StepOutcome::Failed { .. } => failed,
        }
    }

    async fn lookup(&self, saga: &Saga) -> StepOutcome {
        match self.gateway.lookup(&capture_key(saga.booking_id)).await {
            Ok(Some(PaymentRecord {
                status: domain::payment::PaymentStatus::Captured,
                reference: Some(reference),
                amount,
                ..
            })) => {
                tracing::info!(booking_id = %saga.booking_id, "lookup: the gateway had captured; recording it");
                self.record(saga, "captured", &reference, amount.amount_minor())
                    .await
            }
            Ok(Some(PaymentRecord {
                status: domain::payment::PaymentStatus::Declined,
                decline_reason,
                amount,
                ..
            })) => {
                let reason = decline_reason.unwrap_or_else(|| "declined".to_owned());
                self.record_decline(saga, &reason, amount.amount_minor())
                    .await
            }
            Ok(Some(record)) => StepOutcome::failed_as(
                Failure::Permanent,
                format!(
                    "lookup: unexpected record for the capture key: {:?}",
                    record.status
                ),
            ),
            Ok(None) => {
                // Believed only once the settle window has passed (`Saga::learn_at`).
                tracing::info!(booking_id = %saga.booking_id, "lookup: the gateway has no capture under the key");
                StepOutcome::Performed {
                    learned: Some(Learned::NothingFound),
                }
            }
            Err(error) => {
                StepOutcome::failed_as(gateway_failure(&error), format!("lookup: {error}"))
            }
        }
    }

    async fn refund(&self, saga: &Saga) -> StepOutcome {
        let PaymentFact::Captured { reference, amount } = &saga.payment else {
            return StepOutcome::failed("nothing captured to refund");
        };
        let refund = RefundRequest {
            idempotency_key: refund_key(saga.booking_id),
            capture_reference: reference.clone(),
            amount: *amount,
        };
        match self.gateway.refund(&refund).await {
            Err(error) => StepOutcome::failed_as(gateway_failure(&error), error),
            Ok(refunded) => {
                let id = saga.booking_id;
                let body = json!({
                    "amount": {"amount_minor": amount.amount_minor(), "currency": amount.currency().code()},
                    "gateway_reference": refunded.reference,
                });
                self.commands
                    .send(
                        saga,
                        &Step::Refund,
                        format!("/bookings/{id}/payment/refunded"),
                        body,
                    )
                    .await
            }
        }
    }

    async fn notify(&self, saga: &Saga, kind: NotificationKind, now: DateTime<Utc>) -> StepOutcome {
        let Some(request) = saga.request.as_ref() else {
            return StepOutcome::failed("no booking request");
        };
        // The recipients are read now, not when the booking was requested: an erasure in between
        // (or a key destroyed without its event yet) means no letter (docs/privacy.md).
        let personal = if saga.personal_data_erased {
            None
        } else if let Some(sealed) = &request.personal {
            match self.keys.open(*saga.booking_id.as_uuid(), sealed).await {
                Ok(opened) => opened.personal(),
                Err(error) => return StepOutcome::failed_as(opening_failure(&error), error),
            }
        } else {
            None
        };
        let (recipients, deceased_name) = match personal {
            Some(personal) => (
                personal
                    .family_contacts
                    .into_iter()
                    .map(|contact| contact.email)
                    .collect(),
                personal.deceased_full_name.as_str().to_owned(),
            ),
            None => (
                request.recipients.clone(),
                request.deceased_name.clone().unwrap_or_default(),
            ),
        };
        if recipients.is_empty() {
            tracing::info!(booking_id = %saga.booking_id, %kind, "personal data erased: no letter");
            return StepOutcome::Performed {
                learned: Some(Learned::NotificationAbandoned(kind)),
            };
        }
        let facility_name = store::facility_name(&self.pool, *request.facility_id.as_uuid())
            .await
            .ok()
            .flatten();
        let notification = Notification {
            kind,
            booking_id: saga.booking_id,
            recipients,
            deceased_name,
            facility_name,
            slot: request.slot,
            reason: saga.reason.clone(),
            statement: request.statement.clone(),
        };
        match self.mailer.send(&notification).await {
            Ok(sent) => {
                tracing::info!(
                    booking_id = %saga.booking_id,
                    %kind,
                    message_id = %sent.message_id,
                    refused_recipients = sent.refused.len(),
                    "family notified"
                );
                StepOutcome::Performed {
                    learned: Some(Learned::Notified(kind)),
                }
            }
            Err(error) if !error.is_transient() || saga.notification_overdue(now) => {
                tracing::error!(booking_id = %saga.booking_id, %kind, %error, "giving up on the family's mail");
                StepOutcome::Performed {
                    learned: Some(Learned::NotificationAbandoned(kind)),
                }
            }
            Err(error) => StepOutcome::failed(error),
        }
    }
}

/// What a letter's recipients that do not open mean for the step (docs/privacy.md, "When
/// personal data does not open"). A box or a data key that fails authentication (tampered, or
/// another booking's) opens under no settings: the saga parks for an operator at once, the
/// reason naming the key and the cause, never a value. A data key wrapped by a master key the
/// settings lack is the runner's own configuration, which fixing (and restarting) must resume
/// every saga without an operator touching each: retried, like a 401. The key store failing
/// otherwise (PostgreSQL) is the system not answering. No letter goes without its recipients.
fn opening_failure(error: &privacy::PrivacyError) -> Failure {
    match error {
        privacy::PrivacyError::Unopenable { .. } => Failure::Permanent,
        privacy::PrivacyError::UnknownMasterKey { .. } | privacy::PrivacyError::Database(_) => {
            Failure::Unavailable
        }
        _ => Failure::Transient,
    }
}

/// What a gateway error means for the step: the provider's refusal of the request itself is
/// permanent; anything else is its own trouble (or the breaker), retried until the deadline.
fn gateway_failure(error: &GatewayError) -> Failure {
    if error.is_permanent() {
        Failure::Permanent
    } else {
        Failure::Transient
    }
}

/// What a command-service answer other than 2xx means for the step. 5xx and 503: the system
/// could not answer (the broker or its own reading of the log). 409, 412 and 404: the facts
/// have moved on or a replica is behind, which the next decision sees. A reused idempotency
/// key: the step's first attempt (with other words) already took effect, and its event is on
/// its way. 401 and 403: the runner's own configuration (its secret), which fixing must resume
/// every saga without an operator touching each. Any other 4xx (400, 413, 415, 422): the
/// request itself is wrong, and no retry can mend it.
fn command_failure(status: StatusCode, rule: Option<&str>) -> Failure {
    match status.as_u16() {
        500..=599 => Failure::Unavailable,
        401 | 403 | 404 | 408 | 409 | 412 | 429 => Failure::Transient,
        422 if rule == Some("idempotency_key.reused") => Failure::Transient,
        _ => Failure::Permanent,
    }
}

/// The command-service's internal routes, called with a `system` token.
#[derive(Debug, Clone)]
pub struct CommandClient {
    http: reqwest::Client,
    base_url: String,
    token: Arc<ServiceToken>,
}

/// The subject of the saga runner's tokens (the `actor` of the events its commands cause).
pub const SUBJECT: &str = "saga-runner";

impl CommandClient {
    pub fn new(
        base_url: &str,
        token: Arc<ServiceToken>,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            http: reqwest::Client::builder()
                .timeout(timeout)
                .connect_timeout(timeout.min(Duration::from_secs(2)))
                .build()?,
            base_url: base_url.trim_end_matches('/').to_owned(),
            token,
        })
    }

    /// Sends one command. 2xx: performed (including "already so"). Anything else: failed, to be
    /// decided again: a 409 or a refused transition means the facts moved on, which the next
    /// decision sees once the event arrives.
    pub async fn send(&self, saga: &Saga, step: &Step, path: String, body: Value) -> StepOutcome {
        let token = match self.token.token().await {
            Ok(token) => token,
            Err(error) => return StepOutcome::failed(format!("cannot get a token: {error}")),
        };
        let mut request = self
            .http
            .post(format!("{}{path}", self.base_url))
            .bearer_auth(token)
            .header(
                "Idempotency-Key",
                format!(
                    "saga:{}:{}",
                    saga.booking_id,
                    idempotency_step(saga, step, &path)
                ),
            )
            .json(&body);
        if let Some(correlation) = saga.correlation_id {
            request = request.header(platform::trace::CORRELATION_ID, correlation.to_string());
        }
        if let Some(causation) = saga.last_event_id {
            request = request.header(platform::trace::CAUSATION_ID, causation.to_string());
        }
        if let Some(traceparent) = platform::trace::current_traceparent() {
            request = request.header(platform::trace::TRACEPARENT, traceparent);
        }
        match request.send().await {
            Ok(response) if response.status().is_success() => {
                StepOutcome::Performed { learned: None }
            }
            Ok(response) => {
                let status = response.status();
                let (detail, rule) = problem_detail(response).await;
                StepOutcome::failed_as(
                    command_failure(status, rule.as_deref()),
                    format!("{path}: {status}: {detail}"),
                )
            }
            // Not reached, timed out, or the connection broke: the system could not answer.
            Err(error) => StepOutcome::failed_as(Failure::Unavailable, format!("{path}: {error}")),
        }
    }
}

impl CommandClient {
    /// Erases a booking's personal data (`POST /bookings/{id}/erase`, the privacy job's
    /// retention rule); 200 also when it was erased already.
    pub async fn erase(&self, booking_id: uuid::Uuid, reason: &str) -> Result<(), String> {
        let token = self
            .token
            .token()
            .await
            .map_err(|error| format!("cannot get a token: {error}"))?;
        let path = format!("/bookings/{booking_id}/erase");
        let response = self
            .http
            .post(format!("{}{path}", self.base_url))
            .bearer_auth(token)
            .header("Idempotency-Key", format!("retention:{booking_id}"))
            .json(&json!({ "reason": reason }))
            .send()
            .await
            .map_err(|error| format!("{path}: {error}"))?;
        if response.status().is_success() {
            Ok(())
        } else {
            let status = response.status();
            let (detail, _) = problem_detail(response).await;
            Err(format!("{path}: {status}: {detail}"))
        }
    }
}

/// The last part of a command's idempotency key: the step, and for a payment record what is
/// recorded (a capture step may record a capture or a decline, with different bodies). A park
/// is keyed by the saga stream's version, so that parking again after a retry is a new request
/// rather than a replay of the first park.
fn idempotency_step(saga: &Saga, step: &Step, path: &str) -> String {
    match step {
        Step::Capture | Step::LookupCapture | Step::Refund => {
            path.rsplit('/').next().unwrap_or(step.name()).to_owned()
        }
        Step::Park { .. } => format!("park:{}", saga.control.version),
        _ => step.name().to_owned(),
    }
}

/// The problem's detail (or title) and the rule of its first field error, if any.
async fn problem_detail(response: reqwest::Response) -> (String, Option<String>) {
    let status = response.status();
    match response.json::<Value>().await {
        Ok(body) => {
            let rule = body
                .pointer("/errors/0/rule")
                .and_then(Value::as_str)
                .map(str::to_owned);
            let detail = body
                .get("detail")
                .or_else(|| body.get("title"))
                .and_then(Value::as_str)
                .map_or_else(|| body.to_string(), str::to_owned);
            (detail, rule)
        }
        Err(_) if status == StatusCode::SERVICE_UNAVAILABLE => ("unavailable".to_owned(), None),
        Err(error) => (error.to_string(), None),
    }
}

#[cfg(test)]
mod tests {
    use privacy::{CryptoError, PrivacyError};
    use uuid::Uuid;

    use super::{Failure, opening_failure};

    #[test]
    fn recipients_that_fail_authentication_park_and_a_missing_master_key_is_retried() {
        let key_id = Uuid::from_u128(1);
        assert_eq!(
            opening_failure(&PrivacyError::Unopenable {
                key_id,
                cause: CryptoError::Undecryptable,
            }),
            Failure::Permanent
        );
        assert_eq!(
            opening_failure(&PrivacyError::UnknownMasterKey {
                key_id,
                master_key_id: "m0".to_owned(),
            }),
            Failure::Unavailable
        );
        assert_eq!(
            opening_failure(&PrivacyError::Database(sqlx::Error::PoolTimedOut)),
            Failure::Unavailable
        );
    }
}
