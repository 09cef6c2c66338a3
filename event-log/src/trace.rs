//! The trace context a record carries: the W3C `traceparent` (and `tracestate`) headers that
//! `EventProducer::append` writes from the span that appended the event. A consumer makes the
//! span that handles the record continue that trace (`platform::trace::continue_trace`), so the
//! projection or saga step of an event shows up in the trace of the request that appended it.

use opentelemetry::Context;
use platform::trace::{TRACEPARENT, TRACESTATE, parse_traceparent};
use rdkafka::message::Headers;

/// The parent context a record names in its `traceparent` header, if valid (a malformed one is
/// ignored and the consumer's span starts a new trace). Pass `message.headers()`; a consumed
/// [`crate::Record`] has [`crate::Record::trace_context`].
pub fn context_from_headers<H: Headers>(headers: Option<&H>) -> Option<Context> {
    let headers = headers?;
    let text = |name: &str| {
        headers
            .iter()
            .find(|header| header.key == name)
            .and_then(|header| header.value)
            .and_then(|value| std::str::from_utf8(value).ok())
    };
    parse_traceparent(text(TRACEPARENT)?, text(TRACESTATE))
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::TraceContextExt;
    use rdkafka::message::{Header, OwnedHeaders};

    use super::*;

    #[test]
    fn reads_the_traceparent_of_kafka_headers() {
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "fm-event-type",
                value: Some("BookingRequested"),
            })
            .insert(Header {
                key: TRACEPARENT,
                value: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            });
        let context = context_from_headers(Some(&headers)).expect("a parent");
        assert_eq!(
            context.span().span_context().span_id().to_string(),
            "00f067aa0ba902b7"
        );
        assert!(context_from_headers(Some(&OwnedHeaders::new())).is_none());
        assert!(context_from_headers::<OwnedHeaders>(None).is_none());
    }
}
