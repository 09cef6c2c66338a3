//! The write path: decide against the folded stream, append, read the record back, answer.

use std::{sync::Arc, time::Duration};

use chrono::Utc;
use domain::error::DomainError;
use event_log::{EventProducer, LogError, LogPosition};
use schemas::{EventEnvelope, EventMetadata};
use thiserror::Error;
use uuid::Uuid;

use crate::store::{AggregateStore, Outcome, Stored};

/// Why a command did not produce an admitted event. "The domain said no" is kept apart from "the
/// log broke", and losing a race is its own variant.
#[derive(Debug, Error)]
pub(crate) enum CommandError {
    /// The aggregate's rules refused the command.
    #[error(transparent)]
    Rejected(#[from] DomainError),
    /// Another writer appended to this aggregate first; the client may re-read and retry.
    #[error("aggregate {aggregate_id} was changed concurrently (sequence {sequence} was taken)")]
    Conflict { aggregate_id: Uuid, sequence: u64 },
    /// The client's `If-Match` version is not the aggregate's version.
    #[error("aggregate {aggregate_id} is at version {actual}, not {expected}")]
    VersionMismatch {
        aggregate_id: Uuid,
        expected: u64,
        actual: u64,
    },
    /// The service has not finished reading the log since it started.
    #[error("the service is still reading the log")]
    NotReady,
    /// The event was appended but could not be read back in time; it may yet be admitted.
    #[error("the outcome of the append is unknown")]
    OutcomeUnknown,
    /// The broker failed.
    #[error(transparent)]
    Log(#[from] LogError),
}

/// What a successful command returns: the aggregate's new version and where its last event is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Appended {
    pub(crate) aggregate_id: Uuid,
    pub(crate) version: u64,
    /// `None` only for a command that changed nothing on a stream that has no events.
    pub(crate) position: Option<LogPosition>,
}

/// Runs commands against the aggregates in the store.
#[derive(Debug, Clone)]
pub(crate) struct CommandHandler {
    store: Arc<AggregateStore>,
    producer: EventProducer,
    outcome_timeout: Duration,
}

impl CommandHandler {
    pub(crate) fn new(
        store: Arc<AggregateStore>,
        producer: EventProducer,
        outcome_timeout: Duration,
    ) -> Self {
        Self {
            store,
            producer,
            outcome_timeout,
        }
    }

    pub(crate) fn store(&self) -> &AggregateStore {
        &self.store
    }

    /// Decides `command` against aggregate `aggregate_id` and appends what it decided.
    ///
    /// `expected_version` is the client's `If-Match`. Each event is appended with the next
    /// sequence and read back before the next one is appended, so a command's events are
    /// admitted in order or the command reports a conflict at the first refused one.
    #[tracing::instrument(skip_all, fields(aggregate = A::AGGREGATE_TYPE, aggregate_id = %aggregate_id))]
    pub(crate) async fn execute<A: Stored>(
        &self,
        aggregate_id: Uuid,
        expected_version: Option<u64>,
        command: A::Command,
        metadata: &EventMetadata,
    ) -> Result<Appended, CommandError> {
        if !self.store.is_caught_up() {
            return Err(CommandError::NotReady);
        }
        let stream = self.store.read::<A>(aggregate_id);
        if let Some(expected) = expected_version.filter(|expected| *expected != stream.version) {
            return Err(CommandError::VersionMismatch {
                aggregate_id,
                expected,
                actual: stream.version,
            });
        }
        let events = A::decide(&stream.state, command)?;
        let mut appended = Appended {
            aggregate_id,
            version: stream.version,
            position: stream.last_position,
        };
        for event in &events {
            let sequence = appended.version + 1;
            let envelope = EventEnvelope::wrap(A::KIND, aggregate_id, sequence, event, metadata)
                .map_err(LogError::from)?;
            let position = self.append_and_confirm(&envelope).await?;
            appended = Appended {
                aggregate_id,
                version: sequence,
                position: Some(position),
            };
        }
        metrics::counter!("commands_total", "aggregate" => A::AGGREGATE_TYPE, "outcome" => "appended")
            .increment(1);
        Ok(appended)
    }

    async fn append_and_confirm(
        &self,
        envelope: &EventEnvelope,
    ) -> Result<LogPosition, CommandError> {
        let outcome = self.store.await_outcome(envelope.event_id);
        let started = std::time::Instant::now();
        let position = match self.producer.append(envelope).await {
            Ok(position) => position,
            Err(error) => {
                self.store.forget(envelope.event_id);
                return Err(error.into());
            }
        };
        let result = tokio::time::timeout(self.outcome_timeout, outcome).await;
        metrics::histogram!("command_append_seconds").record(started.elapsed().as_secs_f64());
        match result {
            Ok(Ok(Outcome::Admitted)) => Ok(position),
            Ok(Ok(Outcome::Refused)) => {
                metrics::counter!("commands_total", "aggregate" => envelope.aggregate_type.as_str(), "outcome" => "conflict")
                    .increment(1);
                Err(CommandError::Conflict {
                    aggregate_id: envelope.aggregate_id,
                    sequence: envelope.sequence,
                })
            }
            Ok(Err(_)) | Err(_) => {
                self.store.forget(envelope.event_id);
                tracing::error!(event_id = %envelope.event_id, offset = position.offset, "appended event was not read back in time");
                Err(CommandError::OutcomeUnknown)
            }
        }
    }
}

/// The metadata of a command that starts a new flow: its own correlation, caused by the request.
pub(crate) fn metadata_for_request(actor: schemas::Actor, request_id: Uuid) -> EventMetadata {
    EventMetadata {
        correlation_id: request_id,
        causation_id: request_id,
        actor,
        occurred_at: Utc::now(),
    }
}
