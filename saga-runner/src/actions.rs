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
use platform::auth::TokenKeys;
use reqwest::StatusCode;
use schemas::Role;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::{
    saga::{Learned, PaymentFact, Saga, Step},
    store,
};

/// How a step went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepOutcome {
    /// Done. For a command, its event is on its way; the saga decides again when it arrives.
    Performed { learned: Option<Learned> },
    /// Not done; try again after a backoff.
    Failed {
        error: String,
        learned: Option<Learned>,
    },
}

impl StepOutcome {
    fn failed(error: impl std::fmt::Display) -> Self {
        Self::Failed {
            error: error.to_string(),
            learned: None,
        }
    }

    /// The label of `saga_steps_total{outcome}`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Performed {
                learned: Some(Learned::NotificationAbandoned(_)),
            } => "abandoned",
            Self::Performed { .. } => "performed",
            Self::Failed { .. } => "failed",
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
                learned: may_have_moved_money(&error).then_some(Learned::CaptureUncertain),
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
            StepOutcome::Failed { error, .. } => StepOutcome::Failed {
                error: format!("the gateway captured, but recording it failed: {error}"),
                learned: Some(Learned::CaptureUncertain),
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
            Ok(Some(record)) => StepOutcome::failed(format!(
                "lookup: unexpected record for the capture key: {:?}",
                record.status
            )),
            Ok(None) => {
                tracing::info!(booking_id = %saga.booking_id, "lookup: the gateway never took money");
                StepOutcome::Performed {
                    learned: Some(Learned::CaptureSettled),
                }
            }
            Err(error) => StepOutcome::failed(format!("lookup: {error}")),
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
            Err(error) => StepOutcome::failed(error),
        }
    }

    async fn notify(&self, saga: &Saga, kind: NotificationKind, now: DateTime<Utc>) -> StepOutcome {
        let Some(request) = saga.request.as_ref() else {
            return StepOutcome::failed("no booking request");
        };
        let facility_name = store::facility_name(&self.pool, *request.facility_id.as_uuid())
            .await
            .ok()
            .flatten();
        let notification = Notification {
            kind,
            booking_id: saga.booking_id,
            recipients: request.recipients.clone(),
            deceased_name: request.deceased_name.clone(),
            facility_name,
            slot: request.slot,
            reason: saga.reason.clone(),
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

/// Whether a failed capture may have taken money anyway: the request may have reached the
/// provider and only its answer was lost. A refused connection or an open breaker sent nothing;
/// a decline or a refusal of the request is an answer.
fn may_have_moved_money(error: &GatewayError) -> bool {
    matches!(
        error,
        GatewayError::Timeout | GatewayError::Server(_) | GatewayError::InvalidResponse(_)
    )
}

/// The command-service's internal routes, called with a `system` token.
#[derive(Debug, Clone)]
pub struct CommandClient {
    http: reqwest::Client,
    base_url: String,
    keys: Arc<TokenKeys>,
}

/// The subject of the saga runner's tokens (the `actor` of the events its commands cause).
pub const SUBJECT: &str = "saga-runner";

impl CommandClient {
    pub fn new(base_url: &str, keys: Arc<TokenKeys>, timeout: Duration) -> anyhow::Result<Self> {
        Ok(Self {
            http: reqwest::Client::builder()
                .timeout(timeout)
                .connect_timeout(timeout.min(Duration::from_secs(2)))
                .build()?,
            base_url: base_url.trim_end_matches('/').to_owned(),
            keys,
        })
    }

    /// Sends one command. 2xx: performed (including "already so"). Anything else: failed, to be
    /// decided again: a 409 or a refused transition means the facts moved on, which the next
    /// decision sees once the event arrives.
    pub async fn send(&self, saga: &Saga, step: &Step, path: String, body: Value) -> StepOutcome {
        let token = match self
            .keys
            .mint(SUBJECT, Role::System, chrono::Duration::minutes(5))
        {
            Ok(token) => token,
            Err(error) => return StepOutcome::failed(format!("cannot mint a token: {error}")),
        };
        let mut request = self
            .http
            .post(format!("{}{path}", self.base_url))
            .bearer_auth(token)
            .header(
                "Idempotency-Key",
                format!("saga:{}:{}", saga.booking_id, idempotency_step(step, &path)),
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
                let detail = problem_detail(response).await;
                StepOutcome::failed(format!("{path}: {status}: {detail}"))
            }
            Err(error) => StepOutcome::failed(format!("{path}: {error}")),
        }
    }
}

/// The last part of a command's idempotency key: the step, and for a payment record what is
/// recorded (a capture step may record a capture or a decline, with different bodies).
fn idempotency_step<'a>(step: &'a Step, path: &'a str) -> &'a str {
    match step {
        Step::Capture | Step::LookupCapture | Step::Refund => {
            path.rsplit('/').next().unwrap_or(step.name())
        }
        _ => step.name(),
    }
}

async fn problem_detail(response: reqwest::Response) -> String {
    let status = response.status();
    match response.json::<Value>().await {
        Ok(body) => body
            .get("detail")
            .or_else(|| body.get("title"))
            .and_then(Value::as_str)
            .map_or_else(|| body.to_string(), str::to_owned),
        Err(_) if status == StatusCode::SERVICE_UNAVAILABLE => "unavailable".to_owned(),
        Err(error) => error.to_string(),
    }
}
