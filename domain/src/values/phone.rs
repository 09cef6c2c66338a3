//! Phone numbers of family contacts.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ValueError;

/// A phone number in E.164 form: `+`, then 8 to 15 digits, the first of which is not 0.
///
/// Only surrounding whitespace is forgiven; spaces, dashes or brackets inside are refused
/// rather than guessed at, so that the stored number is exactly the one an SMS gateway accepts.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PhoneNumber(String);

const RULE: &str = "phone.e164";

impl PhoneNumber {
    /// The fewest digits accepted after the `+`.
    pub const MIN_DIGITS: usize = 8;
    /// The most digits E.164 allows.
    pub const MAX_DIGITS: usize = 15;

    /// Parses an E.164 phone number such as `+447700900123`.
    pub fn parse(input: &str) -> Result<Self, ValueError> {
        let number = input.trim();
        let digits = number.strip_prefix('+').ok_or_else(|| {
            ValueError::new(RULE, "a phone number starts with '+' and the country code")
        })?;
        if !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ValueError::new(
                RULE,
                "a phone number has only digits after the '+'",
            ));
        }
        if !(Self::MIN_DIGITS..=Self::MAX_DIGITS).contains(&digits.len()) {
            return Err(ValueError::new(
                RULE,
                format!(
                    "a phone number has {} to {} digits",
                    Self::MIN_DIGITS,
                    Self::MAX_DIGITS
                ),
            ));
        }
        if digits.starts_with('0') {
            return Err(ValueError::new(RULE, "a country code cannot start with 0"));
        }
        Ok(Self(number.to_owned()))
    }

    /// The number as text, `+` included.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PhoneNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for PhoneNumber {
    type Err = ValueError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for PhoneNumber {
    type Error = ValueError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<PhoneNumber> for String {
    fn from(value: PhoneNumber) -> Self {
        value.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_e164_numbers() {
        for input in [
            "+447700900123",
            "+12025550123",
            "+49301234",
            " +33123456789 ",
            "+123456789012345",
        ] {
            let phone = PhoneNumber::parse(input).unwrap();
            assert_eq!(phone.as_str(), input.trim());
        }
    }

    #[test]
    fn rejects_anything_else() {
        for input in [
            "",
            "447700900123",
            "+",
            "+1234567",
            "+1234567890123456",
            "+0447700900123",
            "+44 7700 900123",
            "+44-7700-900123",
            "+44(0)7700900123",
            "++447700900123",
            "+４４7700900123",
        ] {
            assert_eq!(
                PhoneNumber::parse(input).unwrap_err().rule,
                RULE,
                "{input:?}"
            );
        }
    }
}
