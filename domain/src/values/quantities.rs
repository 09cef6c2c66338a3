//! Bounded numbers describing a facility.

use std::fmt;

use chrono::TimeDelta;
use serde::{Deserialize, Serialize};

use crate::ValueError;

/// How many people a facility seats: 1 to 10,000. Serialises as a JSON integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct Capacity(u32);

impl Capacity {
    /// The smallest capacity accepted.
    pub const MIN: u32 = 1;
    /// The largest capacity accepted.
    pub const MAX: u32 = 10_000;

    /// A capacity of `people`.
    pub fn new(people: u32) -> Result<Self, ValueError> {
        if (Self::MIN..=Self::MAX).contains(&people) {
            Ok(Self(people))
        } else {
            Err(ValueError::new(
                "capacity.range",
                format!("a capacity is from {} to {} people", Self::MIN, Self::MAX),
            ))
        }
    }

    /// The number of people.
    pub const fn get(self) -> u32 {
        self.0
    }
}

impl fmt::Display for Capacity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl TryFrom<u32> for Capacity {
    type Error = ValueError;

    fn try_from(value: u32) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<Capacity> for u32 {
    fn from(value: Capacity) -> Self {
        value.0
    }
}

/// The time a facility needs between two services (cleaning, reset, the next family arriving):
/// 0 to 480 minutes. Serialises as a JSON integer of minutes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct TurnaroundBuffer(u32);

impl TurnaroundBuffer {
    /// The longest turnaround accepted, in minutes (8 hours, as long as the longest slot).
    pub const MAX_MINUTES: u32 = 480;

    /// A turnaround of `minutes`.
    pub fn from_minutes(minutes: u32) -> Result<Self, ValueError> {
        if minutes <= Self::MAX_MINUTES {
            Ok(Self(minutes))
        } else {
            Err(ValueError::new(
                "turnaround.range",
                format!("a turnaround is from 0 to {} minutes", Self::MAX_MINUTES),
            ))
        }
    }

    /// The turnaround in minutes.
    pub const fn minutes(self) -> u32 {
        self.0
    }

    /// The turnaround as a duration, for slot arithmetic.
    pub fn as_duration(self) -> TimeDelta {
        TimeDelta::minutes(i64::from(self.0))
    }
}

impl fmt::Display for TurnaroundBuffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} min", self.0)
    }
}

impl TryFrom<u32> for TurnaroundBuffer {
    type Error = ValueError;

    fn try_from(value: u32) -> Result<Self, Self::Error> {
        Self::from_minutes(value)
    }
}

impl From<TurnaroundBuffer> for u32 {
    fn from(value: TurnaroundBuffer) -> Self {
        value.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_is_1_to_10_000() {
        for people in [1, 120, 10_000] {
            assert_eq!(Capacity::new(people).unwrap().get(), people);
        }
        for people in [0, 10_001, u32::MAX] {
            assert_eq!(Capacity::new(people).unwrap_err().rule, "capacity.range");
        }
        assert!(serde_json::from_str::<Capacity>("0").is_err());
        assert!(serde_json::from_str::<Capacity>("-3").is_err());
        assert!(serde_json::from_str::<Capacity>("12.5").is_err());
    }

    #[test]
    fn turnaround_is_0_to_480_minutes() {
        for minutes in [0, 30, 480] {
            let buffer = TurnaroundBuffer::from_minutes(minutes).unwrap();
            assert_eq!(buffer.as_duration(), TimeDelta::minutes(i64::from(minutes)));
        }
        assert_eq!(
            TurnaroundBuffer::from_minutes(481).unwrap_err().rule,
            "turnaround.range"
        );
        assert!(serde_json::from_str::<TurnaroundBuffer>("481").is_err());
    }
}
