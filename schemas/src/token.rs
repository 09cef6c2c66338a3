//! The consistency token: a position in the log that a read model can be asked to reach.

use std::{fmt, str::FromStr};

use thiserror::Error;

/// The log position of a command's last event: `topic:partition:offset`.
///
/// A query that presents it waits (bounded) until the read model has applied that offset of
/// that partition, which gives read-your-writes without a shared clock.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ConsistencyToken {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// A string that is not a consistency token.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("a consistency token has the form topic:partition:offset, as returned by a command")]
pub struct MalformedToken;

impl fmt::Display for ConsistencyToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.topic, self.partition, self.offset)
    }
}

impl FromStr for ConsistencyToken {
    type Err = MalformedToken;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.rsplitn(3, ':');
        let offset = parts
            .next()
            .and_then(|p| p.parse::<i64>().ok())
            .ok_or(MalformedToken)?;
        let partition = parts
            .next()
            .and_then(|p| p.parse::<i32>().ok())
            .ok_or(MalformedToken)?;
        let topic = parts
            .next()
            .filter(|t| !t.is_empty())
            .ok_or(MalformedToken)?;
        let valid_topic = topic
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !valid_topic || partition < 0 || offset < 0 {
            return Err(MalformedToken);
        }
        Ok(Self {
            topic: topic.to_owned(),
            partition,
            offset,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_reads_back_what_it_wrote() {
        let token = ConsistencyToken {
            topic: "fm.booking.events".into(),
            partition: 2,
            offset: 41,
        };
        assert_eq!(token.to_string().parse::<ConsistencyToken>(), Ok(token));
    }

    #[test]
    fn malformed_tokens_are_refused() {
        for bad in [
            "", "x", "fm:1", ":1:2", "fm:-1:2", "fm:1:-2", "fm:a:2", "f m:1:2", "fm:1:2x",
        ] {
            assert_eq!(
                bad.parse::<ConsistencyToken>(),
                Err(MalformedToken),
                "{bad:?}"
            );
        }
    }
}
