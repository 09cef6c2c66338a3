//! One module per route group; DTOs become the ledger's types here.

pub(crate) mod control;
pub(crate) mod ops;
pub(crate) mod payments;

use axum::http::HeaderMap;
use domain::values::{Currency, Money};
use platform::problem::{FieldError, Problem};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Integer minor units and an ISO 4217 code.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Amount {
    #[schema(example = 125_000)]
    amount_minor: i64,
    #[schema(example = "GBP")]
    currency: String,
}

/// A positive amount of money, or the violations found at `field`.
fn money(field: &str, amount: &Amount) -> Result<Money, Problem> {
    let currency = Currency::parse(&amount.currency).map_err(|error| {
        Problem::validation(vec![FieldError::new(
            format!("{field}.currency"),
            error.rule,
            error.message,
        )])
    })?;
    if amount.amount_minor <= 0 {
        return Err(Problem::validation(vec![FieldError::new(
            format!("{field}.amount_minor"),
            "money.positive",
            "the amount must be more than zero minor units",
        )]));
    }
    Money::new(amount.amount_minor, currency).map_err(|error| {
        Problem::validation(vec![FieldError::new(
            format!("{field}.amount_minor"),
            error.rule,
            error.message,
        )])
    })
}

/// The `Idempotency-Key` header: required, 1 to 255 visible ASCII characters.
fn idempotency_key(headers: &HeaderMap) -> Result<String, Problem> {
    let invalid = |rule: &str, message: &str| {
        Problem::validation(vec![FieldError::new("Idempotency-Key", rule, message)])
    };
    let value = headers
        .get("idempotency-key")
        .ok_or_else(|| invalid("required", "send an Idempotency-Key header"))?;
    let key = value
        .to_str()
        .map_err(|_| invalid("idempotency_key.format", "visible ASCII only"))?;
    if key.is_empty() || key.len() > 255 {
        return Err(invalid(
            "idempotency_key.format",
            "between 1 and 255 characters",
        ));
    }
    Ok(key.to_owned())
}
