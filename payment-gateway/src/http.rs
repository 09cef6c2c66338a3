//! [`HttpGateway`]: the [`PaymentGateway`] over HTTP, speaking the simulator's API
//! (`docs/payments.md`). A real provider's adapter would sit beside it behind the same trait.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::values::{BookingId, Money};
use reqwest::{Client, StatusCode, header::HeaderName};
use serde::{Deserialize, Deserializer, Serialize, de::DeserializeOwned};

use crate::gateway::{
    CaptureRequest, Captured, GatewayError, LedgerCapture, PaymentGateway, PaymentRecord,
    RefundRequest, Refunded,
};

/// The header that carries the idempotency key.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// Where the gateway is and how long to wait for it (`FM_PAYMENT_GATEWAY__*` in the saga's
/// settings, durations in milliseconds).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct GatewaySettings {
    /// The provider's base URL, without a trailing slash.
    pub base_url: String,
    /// A call with no answer after this long fails with [`GatewayError::Timeout`].
    #[serde(deserialize_with = "millis")]
    pub request_timeout: Duration,
    /// A connection not made after this long fails with [`GatewayError::Unavailable`].
    #[serde(deserialize_with = "millis")]
    pub connect_timeout: Duration,
}

impl Default for GatewaySettings {
    fn default() -> Self {
        Self {
            base_url: "http://127.0.0.1:8090".to_owned(),
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
        }
    }
}

fn millis<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    u64::deserialize(deserializer).map(Duration::from_millis)
}

/// The payment gateway over HTTP: one `reqwest` client, a per-request timeout, the
/// `Idempotency-Key` header on every call that moves money.
#[derive(Debug, Clone)]
pub struct HttpGateway {
    client: Client,
    base_url: String,
}

impl HttpGateway {
    /// Builds the client. Fails only if the TLS/HTTP stack cannot be initialised.
    pub fn new(settings: &GatewaySettings) -> Result<Self, GatewayError> {
        let client = Client::builder()
            .timeout(settings.request_timeout)
            .connect_timeout(settings.connect_timeout)
            .build()
            .map_err(|error| GatewayError::Unavailable(error.to_string()))?;
        Ok(Self {
            client,
            base_url: settings.base_url.trim_end_matches('/').to_owned(),
        })
    }

    async fn post<B: Serialize + Sync, T: DeserializeOwned>(
        &self,
        path: &str,
        idempotency_key: &str,
        body: &B,
    ) -> Result<T, GatewayError> {
        let response = self
            .client
            .post(format!("{}{path}", self.base_url))
            .header(IDEMPOTENCY_KEY, idempotency_key)
            .json(body)
            .send()
            .await
            .map_err(|error| transport_error(&error))?;
        let status = response.status();
        if status.is_success() {
            return response
                .json()
                .await
                .map_err(|error| transport_error(&error));
        }
        Err(error_answer(status, response).await)
    }
}

#[derive(Serialize)]
struct CaptureBody {
    booking_id: BookingId,
    amount: Money,
}

#[derive(Serialize)]
struct RefundBody<'a> {
    capture_reference: &'a str,
    amount: Money,
}

#[derive(Deserialize)]
struct Reference {
    reference: String,
}

/// The part of a problem+json body the adapter reads.
#[derive(Deserialize, Default)]
struct ProblemBody {
    #[serde(default)]
    detail: Option<String>,
    /// Why a capture was declined (402 answers).
    #[serde(default)]
    reason: Option<String>,
}

#[async_trait]
impl PaymentGateway for HttpGateway {
    #[tracing::instrument(skip_all, fields(booking_id = %request.booking_id, idempotency_key = %request.idempotency_key))]
    async fn capture(&self, request: &CaptureRequest) -> Result<Captured, GatewayError> {
        let body = CaptureBody {
            booking_id: request.booking_id,
            amount: request.amount,
        };
        let answer: Reference = self
            .post("/captures", &request.idempotency_key, &body)
            .await?;
        Ok(Captured {
            reference: answer.reference,
        })
    }

    #[tracing::instrument(skip_all, fields(capture_reference = %request.capture_reference, idempotency_key = %request.idempotency_key))]
    async fn refund(&self, request: &RefundRequest) -> Result<Refunded, GatewayError> {
        let body = RefundBody {
            capture_reference: &request.capture_reference,
            amount: request.amount,
        };
        let answer: Reference = self
            .post("/refunds", &request.idempotency_key, &body)
            .await?;
        Ok(Refunded {
            reference: answer.reference,
        })
    }

    #[tracing::instrument(skip_all, fields(idempotency_key = %idempotency_key))]
    async fn lookup(&self, idempotency_key: &str) -> Result<Option<PaymentRecord>, GatewayError> {
        let mut url = reqwest::Url::parse(&self.base_url)
            .map_err(|error| GatewayError::Unavailable(format!("bad base URL: {error}")))?;
        url.path_segments_mut()
            .map_err(|()| GatewayError::Unavailable("bad base URL".to_owned()))?
            .pop_if_empty()
            .extend(["payments", idempotency_key]);
        let response = self
            .client
            .get(url)
            .send()
            .await
            .map_err(|error| transport_error(&error))?;
        match response.status() {
            StatusCode::NOT_FOUND => Ok(None),
            status if status.is_success() => response
                .json()
                .await
                .map(Some)
                .map_err(|error| transport_error(&error)),
            status => Err(error_answer(status, response).await),
        }
    }

    #[tracing::instrument(skip_all, fields(%since))]
    async fn captures(&self, since: DateTime<Utc>) -> Result<Vec<LedgerCapture>, GatewayError> {
        let response = self
            .client
            .get(format!("{}/captures", self.base_url))
            .query(&[("since", since.to_rfc3339())])
            .send()
            .await
            .map_err(|error| transport_error(&error))?;
        let status = response.status();
        if !status.is_success() {
            return Err(error_answer(status, response).await);
        }
        response
            .json()
            .await
            .map_err(|error| transport_error(&error))
    }
}

/// A request that got no usable answer.
fn transport_error(error: &reqwest::Error) -> GatewayError {
    if error.is_timeout() {
        GatewayError::Timeout
    } else if error.is_connect() {
        GatewayError::Unavailable(error.to_string())
    } else {
        // The request may have been sent before the connection broke: the outcome is unknown,
        // exactly like a garbled answer.
        GatewayError::InvalidResponse(error.to_string())
    }
}

/// A non-2xx answer: 402 is a decline, 409 a request with this key still in progress, 5xx the
/// provider's failure, any other 4xx a refusal of the request itself.
async fn error_answer(status: StatusCode, response: reqwest::Response) -> GatewayError {
    if status.is_server_error() {
        return GatewayError::Server(status.as_u16());
    }
    if status == StatusCode::CONFLICT {
        return GatewayError::InProgress;
    }
    let problem = match response.bytes().await {
        Ok(bytes) => serde_json::from_slice::<ProblemBody>(&bytes).unwrap_or_default(),
        Err(error) => return transport_error(&error),
    };
    if status == StatusCode::PAYMENT_REQUIRED {
        GatewayError::Declined {
            reason: problem
                .reason
                .or(problem.detail)
                .unwrap_or_else(|| "declined".to_owned()),
        }
    } else {
        GatewayError::Rejected {
            status: status.as_u16(),
            detail: problem.detail.unwrap_or_default(),
        }
    }
}
