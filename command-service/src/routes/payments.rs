//! Payment writes: the saga records what the gateway did. One payment per booking; its id is
//! derived from the booking id.

use axum::{extract::State, http::StatusCode, response::Response};
use domain::{
    payment::{Payment, PaymentCommand},
    values::{BookingId, Currency, Money, PaymentId},
};
use platform::path::ValidPath;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::{AppState, Services, Violations, WriteRequest, reason_text, written};
use crate::error::ApiError;

/// Integer minor units and an ISO 4217 code.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AmountDto {
    #[schema(example = 125_000, minimum = 0)]
    amount_minor: i64,
    #[schema(schema_with = super::schema::currencies)]
    currency: String,
}

/// What the gateway answered to a capture or a refund.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct GatewayOutcome {
    amount: AmountDto,
    /// The gateway's reference for the capture or refund.
    #[schema(min_length = 1)]
    gateway_reference: String,
}

/// What the gateway answered to a declined capture.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Declined {
    amount: AmountDto,
    #[schema(min_length = 1, max_length = 500)]
    reason: String,
}

/// Answer to payment writes.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct PaymentWritten {
    payment_id: Uuid,
    version: u64,
    consistency_token: Option<String>,
}

fn money(amount: &AmountDto) -> Result<Money, ApiError> {
    let mut violations = Violations::default();
    let currency = violations.check("amount.currency", Currency::parse(&amount.currency));
    let money = currency.and_then(|currency| {
        violations.check(
            "amount.amount_minor",
            Money::new(amount.amount_minor, currency),
        )
    });
    money.ok_or_else(|| violations.into_error())
}

async fn record(
    state: &AppState,
    booking_id: Uuid,
    request: &WriteRequest<impl Sized, Services>,
    command: PaymentCommand,
) -> Result<Response, ApiError> {
    let payment_id = *PaymentId::for_booking(BookingId::from_uuid(booking_id)).as_uuid();
    let executed = state
        .commands
        .execute::<Payment>(payment_id, request.if_match, command, &request.context)
        .await?;
    Ok(written(StatusCode::OK, "payment_id", &executed.appended))
}

/// Record a captured payment for a booking (the saga's command).
#[utoipa::path(
    post,
    path = "/bookings/{id}/payment/captured",
    tag = "internal",
    request_body = GatewayOutcome,
    params(
        ("id" = Uuid, Path, description = "The booking id"),
        ("If-Match" = Option<String>, Header, description = "The version (or ETag) you read: 412 if it is not the current one"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Recorded (or already so)", body = PaymentWritten),
        (status = 409, description = "Conflicts with what is recorded, or changed concurrently", body = platform::problem::Problem, content_type = "application/problem+json"),
        (status = 412, description = "If-Match is not the current version", body = platform::problem::Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn captured(
    State(state): State<AppState>,
    ValidPath(booking_id): ValidPath<Uuid>,
    request: WriteRequest<GatewayOutcome, Services>,
) -> Result<Response, ApiError> {
    let booking = BookingId::from_uuid(booking_id);
    let command = PaymentCommand::RecordCapture {
        payment_id: PaymentId::for_booking(booking),
        booking_id: booking,
        amount: money(&request.body.amount)?,
        gateway_reference: request.body.gateway_reference.clone(),
    };
    record(&state, booking_id, &request, command).await
}

/// Record a declined payment for a booking (the saga's command).
#[utoipa::path(
    post,
    path = "/bookings/{id}/payment/declined",
    tag = "internal",
    request_body = Declined,
    params(
        ("id" = Uuid, Path, description = "The booking id"),
        ("If-Match" = Option<String>, Header, description = "The version (or ETag) you read: 412 if it is not the current one"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Recorded (or already so)", body = PaymentWritten),
        (status = 409, description = "Conflicts with what is recorded, or changed concurrently", body = platform::problem::Problem, content_type = "application/problem+json"),
        (status = 412, description = "If-Match is not the current version", body = platform::problem::Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn declined(
    State(state): State<AppState>,
    ValidPath(booking_id): ValidPath<Uuid>,
    request: WriteRequest<Declined, Services>,
) -> Result<Response, ApiError> {
    let booking = BookingId::from_uuid(booking_id);
    let command = PaymentCommand::RecordDecline {
        payment_id: PaymentId::for_booking(booking),
        booking_id: booking,
        amount: money(&request.body.amount)?,
        reason: reason_text(&request.body.reason)?,
    };
    record(&state, booking_id, &request, command).await
}

/// Record a refund for a booking (the saga's command after a cancellation).
#[utoipa::path(
    post,
    path = "/bookings/{id}/payment/refunded",
    tag = "internal",
    request_body = GatewayOutcome,
    params(
        ("id" = Uuid, Path, description = "The booking id"),
        ("If-Match" = Option<String>, Header, description = "The version (or ETag) you read: 412 if it is not the current one"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Recorded (or already so)", body = PaymentWritten),
        (status = 404, description = "No payment to refund", body = platform::problem::Problem, content_type = "application/problem+json"),
        (status = 409, description = "Conflicts with what is recorded, or changed concurrently", body = platform::problem::Problem, content_type = "application/problem+json"),
        (status = 412, description = "If-Match is not the current version", body = platform::problem::Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn refunded(
    State(state): State<AppState>,
    ValidPath(booking_id): ValidPath<Uuid>,
    request: WriteRequest<GatewayOutcome, Services>,
) -> Result<Response, ApiError> {
    let command = PaymentCommand::RecordRefund {
        amount: money(&request.body.amount)?,
        gateway_reference: request.body.gateway_reference.clone(),
    };
    record(&state, booking_id, &request, command).await
}
