//! Query-string parameters: parsed by hand so that every refusal is a 422 problem naming the
//! parameter and the rule (axum's `Query` answers a plain-text 400 naming neither), and the
//! opaque pagination cursor.

use std::collections::HashMap;

use axum::extract::{Query, rejection::QueryRejection};
use chrono::{DateTime, Utc};
use platform::problem::FieldError;
use uuid::Uuid;

use crate::error::ApiError;

/// The parameters of one request, each taken at most once; unknown ones are refused.
#[derive(Debug)]
pub(crate) struct Params {
    values: HashMap<String, String>,
    errors: Vec<FieldError>,
}

impl Params {
    /// Takes the query string, refusing parameters not in `known`.
    pub(crate) fn new(
        query: Result<Query<HashMap<String, String>>, QueryRejection>,
        known: &[&str],
    ) -> Result<Self, ApiError> {
        let Query(values) = query.map_err(|rejection| {
            ApiError::Invalid(vec![FieldError::new(
                "query",
                "query.format",
                format!("the query string does not parse: {rejection}"),
            )])
        })?;
        let mut errors: Vec<FieldError> = values
            .keys()
            .filter(|name| !known.contains(&name.as_str()))
            .map(|name| {
                FieldError::new(
                    name.clone(),
                    "query.unknown_parameter",
                    format!("unknown parameter; known ones are {}", known.join(", ")),
                )
            })
            .collect();
        errors.sort_by(|a, b| a.field.cmp(&b.field));
        Ok(Self { values, errors })
    }

    fn raw(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    fn refuse(&mut self, name: &str, rule: &str, message: impl Into<String>) {
        self.errors.push(FieldError::new(name, rule, message));
    }

    /// An RFC 3339 instant with an offset.
    pub(crate) fn instant(&mut self, name: &str) -> Option<DateTime<Utc>> {
        let raw = self.raw(name)?.to_owned();
        if let Ok(instant) = DateTime::parse_from_rfc3339(&raw) {
            Some(instant.with_timezone(&Utc))
        } else {
            self.refuse(
                name,
                "rfc3339",
                format!(
                    "{raw:?} is not an RFC 3339 timestamp with an offset, e.g. 2027-03-02T00:00:00Z"
                ),
            );
            None
        }
    }

    /// A required RFC 3339 instant.
    pub(crate) fn required_instant(&mut self, name: &str) -> Option<DateTime<Utc>> {
        if self.raw(name).is_none() {
            self.refuse(name, "required", "this parameter is required");
            return None;
        }
        self.instant(name)
    }

    /// A UUID.
    pub(crate) fn uuid(&mut self, name: &str) -> Option<Uuid> {
        let raw = self.raw(name)?.to_owned();
        if let Ok(id) = Uuid::parse_str(&raw) {
            Some(id)
        } else {
            self.refuse(name, "uuid", format!("{raw:?} is not a UUID"));
            None
        }
    }

    /// One of `allowed`.
    pub(crate) fn one_of(&mut self, name: &str, allowed: &[&str]) -> Option<String> {
        let raw = self.raw(name)?.to_owned();
        if allowed.contains(&raw.as_str()) {
            Some(raw)
        } else {
            self.refuse(
                name,
                "one_of",
                format!("{raw:?} is not one of {}", allowed.join(", ")),
            );
            None
        }
    }

    /// A page size in `1..=max`, `default` when absent.
    pub(crate) fn limit(&mut self, default: i64, max: i64) -> i64 {
        let Some(raw) = self.raw("limit").map(str::to_owned) else {
            return default;
        };
        match raw.parse::<i64>() {
            Ok(limit) if (1..=max).contains(&limit) => limit,
            _ => {
                self.refuse(
                    "limit",
                    "limit.range",
                    format!("{raw:?} is not a whole number from 1 to {max}"),
                );
                default
            }
        }
    }

    /// The position after which the page starts, from a cursor this API handed out.
    pub(crate) fn cursor(&mut self) -> Option<Cursor> {
        let raw = self.raw("cursor")?.to_owned();
        let cursor = Cursor::decode(&raw);
        if cursor.is_none() {
            self.refuse(
                "cursor",
                "cursor.format",
                "send back the next_cursor of a previous page, unchanged",
            );
        }
        cursor
    }

    /// Records a rule that spans parameters.
    pub(crate) fn refuse_if(&mut self, broken: bool, name: &str, rule: &str, message: &str) {
        if broken {
            self.refuse(name, rule, message);
        }
    }

    /// Every violation found, or nothing.
    pub(crate) fn finish(self) -> Result<(), ApiError> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(ApiError::Invalid(self.errors))
        }
    }
}

/// A keyset position: the sort key and id of the last item of a page. Opaque to clients (hex of
/// `micros:uuid`), so its form may change without breaking them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cursor {
    pub(crate) at: DateTime<Utc>,
    pub(crate) id: Uuid,
}

impl Cursor {
    pub(crate) fn encode(&self) -> String {
        use std::fmt::Write as _;
        format!("{}:{}", self.at.timestamp_micros(), self.id.simple())
            .bytes()
            .fold(String::new(), |mut hex, byte| {
                let _ = write!(hex, "{byte:02x}");
                hex
            })
    }

    fn decode(text: &str) -> Option<Self> {
        if !text.len().is_multiple_of(2) || text.len() > 256 {
            return None;
        }
        let bytes: Option<Vec<u8>> = (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
            .collect();
        let plain = String::from_utf8(bytes?).ok()?;
        let (micros, id) = plain.split_once(':')?;
        Some(Self {
            at: DateTime::from_timestamp_micros(micros.parse().ok()?)?,
            id: Uuid::parse_str(id).ok()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_reads_back_what_it_wrote() {
        let cursor = Cursor {
            at: DateTime::from_timestamp_micros(1_800_000_000_123_456).unwrap_or_default(),
            id: Uuid::new_v4(),
        };
        assert_eq!(Cursor::decode(&cursor.encode()), Some(cursor));
    }

    #[test]
    fn a_tampered_cursor_is_refused() {
        for bad in ["", "zz", "abc", "3a", "31323a6e6f74", "é"] {
            assert_eq!(Cursor::decode(bad), None, "{bad:?}");
        }
    }
}
