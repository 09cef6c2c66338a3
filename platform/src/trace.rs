//! Trace context across services: the W3C `traceparent`, and the correlation and causation ids of
//! a business flow, carried in HTTP request headers and Kafka record headers.
//!
//! One booking reads as one trace because every hop passes the context on:
//!
//! - an HTTP request's span continues the caller's `traceparent` ([`crate::http`] does this for
//!   every service), and a client sets it with [`inject_http_headers`];
//! - a produced record carries the `traceparent` of the span that produced it
//!   ([`current_traceparent`]; `event_log::EventProducer` writes it);
//! - a consumer makes the span that handles a record continue the record's trace with
//!   [`continue_trace`] and the context the record names (`event_log::Record::trace_context`,
//!   which reads the Kafka headers with [`parse_traceparent`]).
//!
//! The correlation id (one business flow) and the causation id (what directly caused an event:
//! the command, or the event a saga reacted to) are not trace ids: they are recorded in every
//! event envelope and survive in the log for ever, while traces are sampled and expire. A client
//! of the command-service sends them as `Correlation-Id` and `Causation-Id` request headers.
//!
//! A malformed `traceparent` is ignored and a new trace starts, as the W3C recommendation asks
//! (a proxy's broken header must not fail a request).

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::{
    Context,
    propagation::{Extractor, Injector, TextMapPropagator},
    trace::TraceContextExt,
};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use uuid::Uuid;

/// The W3C trace-context header, in HTTP requests and Kafka records alike.
pub const TRACEPARENT: &str = "traceparent";
/// The W3C vendor-specific companion of `traceparent`; passed on untouched.
pub const TRACESTATE: &str = "tracestate";
/// HTTP request header: the business flow a command belongs to (a UUID). Without it the
/// command-service starts a new flow whose correlation id is the command's id.
pub const CORRELATION_ID: &str = "correlation-id";
/// HTTP request header: what caused this command (a UUID; for the saga, the `event_id` of the
/// event it reacts to). Recorded as the causation id of the events the command appends; without
/// it the causation is the command itself.
pub const CAUSATION_ID: &str = "causation-id";

/// The correlation and causation ids a command carries to the command-service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowIds {
    pub correlation_id: Uuid,
    pub causation_id: Uuid,
}

/// The `traceparent` of the current span (`00-<trace id>-<span id>-<flags>`), or `None` when it
/// has no trace context (no OpenTelemetry layer installed, or the span is disabled).
pub fn current_traceparent() -> Option<String> {
    traceparent_of(&tracing::Span::current())
}

/// The `traceparent` that names `span` as the parent of whatever it calls.
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    let context = span.context();
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = Carrier::default();
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    carrier.traceparent
}

/// The trace id (32 hex digits) of `span`, if it has a trace context.
pub fn trace_id_of(span: &tracing::Span) -> Option<String> {
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context
        .is_valid()
        .then(|| span_context.trace_id().to_string())
}

/// Parses a `traceparent` (and optional `tracestate`) into a parent context; `None` if it is
/// malformed or names the invalid all-zero ids.
pub fn parse_traceparent(traceparent: &str, tracestate: Option<&str>) -> Option<Context> {
    if !well_formed(traceparent.trim()) {
        return None;
    }
    let carrier = Carrier {
        traceparent: Some(traceparent.trim().to_owned()),
        tracestate: tracestate.map(str::to_owned),
    };
    let context = TraceContextPropagator::new().extract(&carrier);
    context.span().span_context().is_valid().then_some(context)
}

/// The W3C shape, `version-traceid-parentid-flags` in lower-case hex of 2, 32, 16 and 2 digits
/// (the propagator alone accepts a short trace id).
fn well_formed(traceparent: &str) -> bool {
    let parts: Vec<&str> = traceparent.split('-').collect();
    let lower_hex = |part: &str| {
        part.chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
    };
    parts.len() >= 4
        && [2, 32, 16, 2]
            .iter()
            .zip(&parts)
            .all(|(len, part)| part.len() == *len && lower_hex(part))
}

/// The parent context an incoming HTTP request names in its `traceparent` header, if valid.
pub fn context_from_http_headers(headers: &HeaderMap) -> Option<Context> {
    let traceparent = headers.get(TRACEPARENT)?.to_str().ok()?;
    let tracestate = headers.get(TRACESTATE).and_then(|v| v.to_str().ok());
    parse_traceparent(traceparent, tracestate)
}

/// Makes `span` continue the trace of `parent` (when there is one), and records the trace id in
/// the span's `trace_id` field (when the span declares it), so JSON log lines inside the span
/// name the trace. Call it before the span is first entered.
pub fn continue_trace(span: &tracing::Span, parent: Option<Context>) {
    if let Some(parent) = parent {
        // Fails only when no OpenTelemetry layer is installed; then there is no trace to join.
        let _ = span.set_parent(parent);
    }
    if let Some(trace_id) = trace_id_of(span) {
        span.record("trace_id", trace_id.as_str());
    }
}

/// Sets the headers an outgoing request to another Funeral Manager service carries: the
/// `traceparent` of the current span (so the callee's spans join this trace) and, when given,
/// `Correlation-Id` and `Causation-Id`.
///
/// ```
/// # use axum::http::HeaderMap;
/// # use platform::trace::{FlowIds, inject_http_headers};
/// let mut headers = HeaderMap::new();
/// let flow = FlowIds { correlation_id: uuid::Uuid::new_v4(), causation_id: uuid::Uuid::new_v4() };
/// inject_http_headers(&mut headers, Some(flow));
/// assert_eq!(headers["correlation-id"], flow.correlation_id.to_string().as_str());
/// // With reqwest: `client.post(url).headers(headers)`.
/// ```
pub fn inject_http_headers(headers: &mut HeaderMap, flow: Option<FlowIds>) {
    if let Some(value) = current_traceparent().and_then(|tp| HeaderValue::from_str(&tp).ok()) {
        headers.insert(HeaderName::from_static(TRACEPARENT), value);
    }
    if let Some(flow) = flow {
        for (name, id) in [
            (CORRELATION_ID, flow.correlation_id),
            (CAUSATION_ID, flow.causation_id),
        ] {
            if let Ok(value) = HeaderValue::from_str(&id.to_string()) {
                headers.insert(HeaderName::from_static(name), value);
            }
        }
    }
}

/// The two W3C headers, as the propagator reads and writes them.
#[derive(Debug, Default)]
struct Carrier {
    traceparent: Option<String>,
    tracestate: Option<String>,
}

impl Extractor for Carrier {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            TRACEPARENT => self.traceparent.as_deref(),
            TRACESTATE => self.tracestate.as_deref(),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT, TRACESTATE]
    }
}

impl Injector for Carrier {
    fn set(&mut self, key: &str, value: String) {
        match key {
            TRACEPARENT => self.traceparent = Some(value),
            TRACESTATE => self.tracestate = Some(value),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_valid_traceparent_and_refuses_malformed_ones() {
        let valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let context = parse_traceparent(valid, None).expect("a valid traceparent");
        assert_eq!(
            context.span().span_context().trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        for malformed in [
            "",
            "garbage",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(
                parse_traceparent(malformed, None).is_none(),
                "{malformed:?} was accepted"
            );
        }
    }
}
