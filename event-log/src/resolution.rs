//! The admission rule that resolves racing writers.
//!
//! Kafka cannot append conditionally, so two writers may both append "sequence 5" for the same
//! aggregate. Both records land in the aggregate's one partition (key = aggregate id), so every
//! reader sees them in the same order, and every reader applies the same rule: an event is
//! admitted only if its sequence is exactly one past the last admitted sequence of its
//! aggregate. The first "5" is admitted, the second is refused everywhere, and its writer, which
//! reads its own record back before answering, tells its client "conflict".

/// What a reader does with an event, given the last admitted sequence of its aggregate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// The next event of the stream: apply it.
    Next,
    /// At or below the last admitted sequence: a redelivery or the loser of a race. Ignore it.
    Stale,
    /// Beyond the next sequence: an event is missing. Never apply; report it.
    Gap { expected: u64 },
}

/// Decides whether an event with `sequence` follows `last_admitted` (0 for a new stream).
pub fn admit(last_admitted: u64, sequence: u64) -> Admission {
    let expected = last_admitted + 1;
    match sequence {
        s if s == expected => Admission::Next,
        s if s < expected => Admission::Stale,
        _ => Admission::Gap { expected },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_event_of_a_new_stream_is_sequence_one() {
        assert_eq!(admit(0, 1), Admission::Next);
        assert_eq!(admit(0, 2), Admission::Gap { expected: 1 });
    }

    #[test]
    fn a_second_event_with_a_taken_sequence_is_stale() {
        assert_eq!(admit(5, 5), Admission::Stale);
        assert_eq!(admit(5, 1), Admission::Stale);
        assert_eq!(admit(5, 6), Admission::Next);
        assert_eq!(admit(5, 8), Admission::Gap { expected: 6 });
    }
}
