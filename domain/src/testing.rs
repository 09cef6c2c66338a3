//! A given/when/then harness for aggregate tests (enabled by the `testing` feature).
//!
//! ```ignore
//! given::<Facility>([registered()])
//!     .when(FacilityCommand::ReleaseSlot { booking_id })
//!     .then([]);
//! ```
//!
//! `given` folds the history with `evolve`, `when` runs `decide`, and `then` / `then_err`
//! assert on the outcome. Failures point at the test's line.

use std::fmt;

use crate::{Aggregate, DomainError};

/// Starts a scenario from a history of events.
pub fn given<A: Aggregate>(history: impl IntoIterator<Item = A::Event>) -> Given<A> {
    let history: Vec<A::Event> = history.into_iter().collect();
    Given {
        state: A::replay(&history),
    }
}

/// A state rebuilt from a history, waiting for a command.
#[must_use = "a scenario does nothing until `when` and `then`"]
pub struct Given<A: Aggregate> {
    state: A::State,
}

impl<A: Aggregate> Given<A> {
    /// Decides `command` against the state.
    pub fn when(self, command: A::Command) -> Then<A> {
        let result = A::decide(&self.state, command);
        Then {
            state: self.state,
            result,
        }
    }

    /// The state the history folds into.
    pub fn state(&self) -> &A::State {
        &self.state
    }
}

impl<A: Aggregate> fmt::Debug for Given<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Given").field("state", &self.state).finish()
    }
}

/// The outcome of a decision, waiting for assertions.
#[must_use = "a scenario asserts nothing until `then` or `then_err`"]
pub struct Then<A: Aggregate> {
    state: A::State,
    result: Result<Vec<A::Event>, DomainError>,
}

impl<A: Aggregate> Then<A> {
    /// Asserts that the command produced exactly `expected`, and returns the state after them.
    #[track_caller]
    pub fn then(self, expected: impl IntoIterator<Item = A::Event>) -> A::State {
        let expected: Vec<A::Event> = expected.into_iter().collect();
        match self.result {
            Ok(events) => {
                assert_eq!(
                    events, expected,
                    "the command produced other events than expected"
                );
                events.iter().fold(self.state, A::evolve)
            }
            Err(error) => panic!(
                "expected events {expected:?}, but the command was refused: {error:?} ({error})"
            ),
        }
    }

    /// Asserts that the command was accepted, whatever it produced, and returns the state
    /// after its events.
    #[track_caller]
    pub fn then_ok(self) -> A::State {
        match self.result {
            Ok(events) => events.iter().fold(self.state, A::evolve),
            Err(error) => {
                panic!("expected acceptance, but the command was refused: {error:?} ({error})")
            }
        }
    }

    /// Asserts that the command was refused with an error matching `predicate`.
    #[track_caller]
    pub fn then_err(self, predicate: impl FnOnce(&DomainError) -> bool) {
        match self.result {
            Ok(events) => panic!("expected a refusal, but the command produced {events:?}"),
            Err(error) => assert!(predicate(&error), "unexpected refusal: {error:?} ({error})"),
        }
    }

    /// The raw outcome, for assertions the two above cannot express.
    pub fn result(&self) -> &Result<Vec<A::Event>, DomainError> {
        &self.result
    }
}

impl<A: Aggregate> fmt::Debug for Then<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Then")
            .field("state", &self.state)
            .field("result", &self.result)
            .finish()
    }
}
