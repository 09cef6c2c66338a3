//! One record as a consumer sees it: where it sits, its key, its bytes and its headers.
//!
//! A thin view of the client library's message, so that the code that applies records (the
//! projector, the saga) reads them through the log's vocabulary and never names the Kafka
//! client.

use opentelemetry::Context;
use rdkafka::{
    Message,
    message::{BorrowedMessage, Headers},
};

use crate::LogPosition;

/// A record read from the log, borrowed from the consumer that read it.
#[derive(Debug)]
pub struct Record<'a> {
    message: &'a BorrowedMessage<'a>,
    position: LogPosition,
}

impl<'a> Record<'a> {
    /// A view of `message`.
    pub fn new(message: &'a BorrowedMessage<'a>) -> Self {
        Self {
            position: LogPosition {
                topic: message.topic().to_owned(),
                partition: message.partition(),
                offset: message.offset(),
            },
            message,
        }
    }

    /// Where the record sits.
    pub fn position(&self) -> &LogPosition {
        &self.position
    }

    /// The record's key (the aggregate id, for events).
    pub fn key(&self) -> Option<&[u8]> {
        self.message.key()
    }

    /// The record's value; empty when it has none.
    pub fn payload(&self) -> &[u8] {
        self.message.payload().unwrap_or_default()
    }

    /// The value of the first header called `name`, if the record has one with a value.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.message
            .headers()?
            .iter()
            .find(|header| header.key == name)
            .and_then(|header| header.value)
    }

    /// [`Self::header`] as text; `None` when it is not UTF-8.
    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.header(name)
            .and_then(|value| std::str::from_utf8(value).ok())
    }

    /// The trace the record's `traceparent` header names, if valid ([`crate::trace`]).
    pub fn trace_context(&self) -> Option<Context> {
        crate::trace::context_from_headers(self.message.headers())
    }
}
