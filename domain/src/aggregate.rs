//! The shape every aggregate shares: a pure `decide` and a pure `evolve`.

use std::fmt::Debug;

use serde::{Serialize, de::DeserializeOwned};

use crate::DomainError;

/// An event-sourced aggregate, written as two pure functions over its own state.
///
/// The state of an aggregate is the left fold of its events with [`Aggregate::evolve`], starting
/// from `State::default()`. [`Aggregate::decide`] never mutates anything: it answers with the
/// events a command produces, and the caller appends them. Decisions that need the clock or data
/// from another aggregate receive it inside the command, which keeps them deterministic and
/// testable without I/O.
pub trait Aggregate {
    /// The stable name of the aggregate's stream type: `"facility"`, `"booking"` or `"payment"`.
    const AGGREGATE_TYPE: &'static str;
    /// What the aggregate remembers of its history, as far as its decisions need it.
    type State: Default + Clone + Debug;
    /// What a caller asks the aggregate to do.
    type Command;
    /// What happened, as recorded in the log.
    type Event: DomainEvent;

    /// Decides which events `command` produces from `state`.
    ///
    /// An empty vector means "nothing to do": the effect already holds, typically because the
    /// command is a redelivery. An error means the domain refuses the command.
    fn decide(state: &Self::State, command: Self::Command)
    -> Result<Vec<Self::Event>, DomainError>;

    /// Applies one event to the state. Events are facts, so this never fails.
    fn evolve(state: Self::State, event: &Self::Event) -> Self::State;

    /// Rebuilds the state from a history of events.
    fn replay<'a, I>(events: I) -> Self::State
    where
        I: IntoIterator<Item = &'a Self::Event>,
        Self::Event: 'a,
    {
        events
            .into_iter()
            .fold(Self::State::default(), |state, event| {
                Self::evolve(state, event)
            })
    }
}

/// An event enum as it travels on the log.
///
/// Events serialise adjacently tagged, `{"event_type": "...", "data": {...}}`, so an envelope
/// that stores the type and the payload separately rebuilds the event with
/// `serde_json::from_value(json!({"event_type": t, "data": payload}))`.
pub trait DomainEvent: Serialize + DeserializeOwned + Clone + PartialEq + Debug {
    /// The stable name of this event, e.g. `"BookingRequested"`; equal to the serde tag.
    fn event_type(&self) -> &'static str;

    /// The schema version of this event's payload: the newest version of its type, the only one
    /// a writer writes. Any change to a payload's shape is a new version, and readers upcast
    /// older records to it (docs/evolution.md).
    fn event_version(&self) -> u16;

    /// Every event type of the enum with its newest version (the one [`Self::event_version`]
    /// writes), for schema coverage tests.
    fn catalogue() -> &'static [(&'static str, u16)];
}
