//! Serving a router: limits, timeouts, request tracing, HTTP metrics, and the operational
//! endpoints every service has (`/health`, `/metrics`, and the shape of `/ready`).
//!
//! Every request gets an `http_request` span named by its route template (never the raw URI,
//! which may carry ids), continuing the caller's `traceparent` when it sent a valid one
//! ([`crate::trace`]). The HTTP metrics, labelled the same way so that their cardinality is
//! bounded by the routes, are:
//!
//! - `http_requests_total{method, route, status}` — rate, and errors by status;
//! - `http_request_duration_seconds{method, route, status}` — a histogram.
//!
//! A path no route matches is labelled `route="unmatched"`.

use std::{
    sync::OnceLock,
    time::{Duration, Instant},
};

use axum::{
    BoxError, Json, Router,
    error_handling::HandleErrorLayer,
    extract::{DefaultBodyLimit, MatchedPath, Request},
    http::StatusCode,
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;
use tower_http::trace::TraceLayer;

use crate::{problem::Problem, settings::HttpSettings};

/// Adds what every service's router needs: `/health` and `/metrics`, a body limit, a request
/// timeout (answered 503 problem), request tracing and HTTP metrics.
pub fn standard_layers(router: Router, settings: &HttpSettings) -> Router {
    let handle = metrics_handle().clone();
    router
        .route("/health", get(health))
        .route("/metrics", get(move || std::future::ready(handle.render())))
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(timeout_problem))
                .timeout(settings.request_timeout),
        )
        .layer(DefaultBodyLimit::max(settings.body_limit_bytes))
        .layer(middleware::from_fn(track_http))
        .layer(TraceLayer::new_for_http().make_span_with(request_span))
}

/// The span of one request: its route template, and the caller's trace if it named one.
fn request_span<B>(request: &axum::http::Request<B>) -> tracing::Span {
    let span = tracing::info_span!(
        "http_request",
        method = %request.method(),
        route = route_of(request),
        trace_id = tracing::field::Empty,
    );
    crate::trace::continue_trace(
        &span,
        crate::trace::context_from_http_headers(request.headers()),
    );
    span
}

/// The route template a request matched (`/bookings/{id}/cancel`), or `unmatched`.
fn route_of<B>(request: &axum::http::Request<B>) -> &str {
    request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
}

/// A service's HTTP server: its router with the standard layers, bound to its address.
#[derive(Debug)]
pub struct HttpServer {
    listener: TcpListener,
    router: Router,
    port: u16,
}

/// The address could not be listened on (taken, or not this machine's).
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {address}: {source}")]
pub struct BindError {
    address: String,
    source: std::io::Error,
}

impl HttpServer {
    /// Adds [`standard_layers`] to `router` and binds `settings`' address (port 0 picks a
    /// free one).
    pub async fn bind(router: Router, settings: &HttpSettings) -> Result<Self, BindError> {
        let address = format!("{}:{}", settings.host, settings.port);
        let bound = TcpListener::bind((settings.host.as_str(), settings.port)).await;
        let listener = bound.map_err(|source| BindError {
            address: address.clone(),
            source,
        })?;
        let port = listener
            .local_addr()
            .map_err(|source| BindError { address, source })?
            .port();
        Ok(Self {
            listener,
            router: standard_layers(router, settings),
            port,
        })
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until `shutdown` is cancelled, then lets in-flight requests finish.
    pub async fn serve(self, shutdown: CancellationToken) -> std::io::Result<()> {
        // With the peer's address in each request (`ConnectInfo`), for per-address rate limits
        // (`crate::rate_limit`).
        axum::serve(
            self.listener,
            self.router
                .into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
    }
}

async fn timeout_problem(error: BoxError) -> Problem {
    if error.is::<tower::timeout::error::Elapsed>() {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            "Request timed out",
        )
        .with_detail(
            "The request took too long and was abandoned. Retry with the same Idempotency-Key.",
        )
    } else {
        tracing::error!(%error, "unhandled middleware error");
        Problem::internal()
    }
}

/// `GET /health`: the process is alive and serving. Says nothing about dependencies.
pub async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "alive"}))
}

/// The process-wide Prometheus recorder (installed once, shared by every service in a process).
pub fn metrics_handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Suffix("_seconds".to_owned()),
                &[
                    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ],
            )
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        // Fails only if another recorder is installed, in which case ours just renders empty.
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed");
        }
        metrics::describe_counter!(
            "http_requests_total",
            "HTTP requests answered, by method, route template and status"
        );
        metrics::describe_histogram!(
            "http_request_duration_seconds",
            metrics::Unit::Seconds,
            "Time to answer an HTTP request, by method, route template and status"
        );
        handle
    })
}

async fn track_http(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().to_string();
    let route = route_of(&request).to_owned();
    let response = next.run(request).await;
    let labels = [
        ("method", method),
        ("route", route),
        ("status", response.status().as_u16().to_string()),
    ];
    metrics::counter!("http_requests_total", &labels).increment(1);
    metrics::histogram!("http_request_duration_seconds", &labels)
        .record(started.elapsed().as_secs_f64());
    response
}

/// The answer of `/ready`: 200 if every dependency check passed, 503 naming the ones that
/// failed otherwise.
#[derive(Debug, Serialize)]
pub struct ReadyReport {
    pub ready: bool,
    pub checks: Vec<ReadyCheck>,
}

/// One dependency check of `/ready`.
#[derive(Debug, Serialize)]
pub struct ReadyCheck {
    pub name: &'static str,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl ReadyReport {
    pub fn new(checks: Vec<ReadyCheck>) -> Self {
        Self {
            ready: checks.iter().all(|check| check.ok),
            checks,
        }
    }
}

impl ReadyCheck {
    pub fn from_result<E: std::fmt::Display>(name: &'static str, result: Result<(), E>) -> Self {
        match result {
            Ok(()) => Self {
                name,
                ok: true,
                detail: None,
            },
            Err(error) => Self {
                name,
                ok: false,
                detail: Some(error.to_string()),
            },
        }
    }
}

impl IntoResponse for ReadyReport {
    fn into_response(self) -> Response {
        let status = if self.ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        (status, Json(self)).into_response()
    }
}

/// Runs a readiness probe with a deadline, so that `/ready` answers even when a dependency hangs.
pub async fn probe<F, E>(deadline: Duration, check: F) -> Result<(), String>
where
    F: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    match tokio::time::timeout(deadline, check).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err(format!("no answer within {} ms", deadline.as_millis())),
    }
}

/// Declares the security schemes that every authenticated route of a service's OpenAPI
/// document refers to (`modifiers(&BearerAuth)`): `bearer` (a JWT in `Authorization: Bearer`)
/// and, as the alternative every such route also accepts, `oidc`: the same token, issued by the
/// OpenID Connect provider whose discovery document it names (docs/identity.md). The address is
/// the local realm's; a deployment's is its `FM_AUTH__ISSUER` followed by
/// `/.well-known/openid-configuration`.
#[derive(Debug)]
pub struct BearerAuth;

/// The discovery document of the local stack's provider (compose/up).
pub const LOCAL_OIDC_DISCOVERY: &str =
    "http://127.0.0.1:8180/realms/funeral-manager/.well-known/openid-configuration";

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{
            HttpAuthScheme, HttpBuilder, OpenIdConnect, SecurityRequirement, SecurityScheme,
        };
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "An access token of the OpenID Connect provider (scheme `oidc`)",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "oidc",
            SecurityScheme::OpenIdConnect(OpenIdConnect::with_description(
                LOCAL_OIDC_DISCOVERY,
                "Staff sign in at the provider; the roles are the token's `roles` claim \
                 (director, group_admin, ops, family; system for internal clients)",
            )),
        );
        let bearer = SecurityRequirement::new("bearer", Vec::<String>::new());
        let oidc = SecurityRequirement::new("oidc", Vec::<String>::new());
        for item in openapi.paths.paths.values_mut() {
            for operation in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                if let Some(security) = &mut operation.security
                    && security.contains(&bearer)
                    && !security.contains(&oidc)
                {
                    security.push(oidc.clone());
                }
            }
        }
    }
}
