//! The chaos soak (`compose/soak`): load while processes crash, then an independent check.
//!
//! - [`journal`]: what the load generator was told, one JSON line per fact (every 2xx write with
//!   its version and consistency token, every final refusal, every poison record it injected).
//! - [`history`]: the log read independently: records parsed from raw JSON, the admission rule
//!   of `docs/consistency.md` re-implemented, each aggregate folded with the checker's own model.
//! - [`check`]: the invariants as pure functions of what was gathered, and the summary.
//! - [`gather`]: reading the log (raw Kafka consumer), the read models (SQL), the gateway
//!   simulator's ledger (HTTP) and the SMTP sink's Maildir into [`check::Inputs`].
//! - [`load`]: the load generator: concurrent clients, a mix of outcomes, retries with
//!   `Idempotency-Key`, bad requests, cancellations, poison records.
//!
//! The checker (`history`, `check`, `gather`) uses none of the system's crates: a bug shared by
//! the system and its checker would hide itself. Only the load generator uses `platform` and
//! `schemas`, to mint bearer tokens.

pub mod check;
pub mod gather;
pub mod history;
pub mod journal;
pub mod load;

/// Parses `90s`, `3m`, `1h`, `500ms` or a number of seconds.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (90s, 3m, 1h, 500ms)"))?;
    let seconds = match unit {
        "" | "s" => number,
        "m" => number * 60,
        "h" => number * 3600,
        "ms" => return Ok(std::time::Duration::from_millis(number)),
        _ => return Err(format!("{text:?}: unknown unit {unit:?} (ms, s, m, h)")),
    };
    Ok(std::time::Duration::from_secs(seconds))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn durations_read_with_their_units() {
        assert_eq!(super::parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(super::parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(super::parse_duration("30m"), Ok(Duration::from_mins(30)));
        assert_eq!(super::parse_duration("1h"), Ok(Duration::from_hours(1)));
        assert_eq!(
            super::parse_duration("250ms"),
            Ok(Duration::from_millis(250))
        );
        assert!(super::parse_duration("3 days").is_err());
        assert!(super::parse_duration("m").is_err());
    }
}
