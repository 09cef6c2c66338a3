//! Email addresses of family contacts.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ValueError;

/// A plausible email address: the shape is checked, deliverability is not.
///
/// Rules: surrounding whitespace is trimmed; at most 254 bytes; no whitespace or control
/// characters; exactly one `@`; a non-empty local part of at most 64 bytes; a domain of at least
/// two dot-separated labels, each non-empty and made of ASCII letters, digits and hyphens
/// (internationalised domains must arrive in punycode). The local part keeps its case, because
/// it is the receiving server's to interpret; the domain is lowercased, because DNS ignores case.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EmailAddress(String);

const RULE_FORMAT: &str = "email.format";
const RULE_LENGTH: &str = "email.length";

impl EmailAddress {
    /// The longest address accepted, in bytes (RFC 5321's path limit minus the brackets).
    pub const MAX_LEN: usize = 254;
    /// The longest local part accepted, in bytes (RFC 5321).
    pub const MAX_LOCAL_LEN: usize = 64;

    /// Parses an email address.
    pub fn parse(input: &str) -> Result<Self, ValueError> {
        let address = input.trim();
        if address.is_empty() {
            return Err(ValueError::new(
                RULE_FORMAT,
                "an email address cannot be empty",
            ));
        }
        if address.len() > Self::MAX_LEN {
            return Err(ValueError::new(
                RULE_LENGTH,
                format!("an email address has at most {} bytes", Self::MAX_LEN),
            ));
        }
        if address.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(ValueError::new(
                RULE_FORMAT,
                "an email address cannot contain whitespace or control characters",
            ));
        }
        let (local, domain) = match address.split_once('@') {
            Some((local, domain)) if !domain.contains('@') => (local, domain),
            _ => {
                return Err(ValueError::new(
                    RULE_FORMAT,
                    "an email address contains exactly one '@'",
                ));
            }
        };
        if local.is_empty() {
            return Err(ValueError::new(
                RULE_FORMAT,
                "the part before '@' cannot be empty",
            ));
        }
        if local.len() > Self::MAX_LOCAL_LEN {
            return Err(ValueError::new(
                RULE_LENGTH,
                format!(
                    "the part before '@' has at most {} bytes",
                    Self::MAX_LOCAL_LEN
                ),
            ));
        }
        if !domain.contains('.') {
            return Err(ValueError::new(
                RULE_FORMAT,
                "the domain of an email address needs a dot",
            ));
        }
        let labels_ok = domain.split('.').all(|label| {
            !label.is_empty() && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
        if !labels_ok {
            return Err(ValueError::new(
                RULE_FORMAT,
                "the domain of an email address is made of non-empty labels of letters, \
                 digits and hyphens",
            ));
        }
        Ok(Self(format!("{local}@{}", domain.to_ascii_lowercase())))
    }

    /// The address as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The part before the `@`, case preserved.
    pub fn local_part(&self) -> &str {
        self.split().0
    }

    /// The part after the `@`, lowercased.
    pub fn domain(&self) -> &str {
        self.split().1
    }

    fn split(&self) -> (&str, &str) {
        // Parsing guarantees exactly one '@'.
        self.0.split_once('@').unwrap_or((&self.0, ""))
    }
}

impl fmt::Display for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for EmailAddress {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl FromStr for EmailAddress {
    type Err = ValueError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for EmailAddress {
    type Error = ValueError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<EmailAddress> for String {
    fn from(value: EmailAddress) -> Self {
        value.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plausible_addresses() {
        for (input, expected) in [
            ("byron@example.org", "byron@example.org"),
            ("  byron@example.org\t", "byron@example.org"),
            ("Byron.King@Example.ORG", "Byron.King@example.org"),
            ("a+tag@mail.example.co.uk", "a+tag@mail.example.co.uk"),
            ("o'brien@my-domain.ie", "o'brien@my-domain.ie"),
            ("x@a.b", "x@a.b"),
        ] {
            let email = EmailAddress::parse(input).unwrap();
            assert_eq!(email.as_str(), expected, "{input:?}");
        }
    }

    #[test]
    fn preserves_the_case_of_the_local_part_and_lowercases_the_domain() {
        let email = EmailAddress::parse("Ada.Lovelace@Analytical.Engine.ORG").unwrap();
        assert_eq!(email.local_part(), "Ada.Lovelace");
        assert_eq!(email.domain(), "analytical.engine.org");
    }

    #[test]
    fn rejects_malformed_addresses() {
        let long_local = format!("{}@example.org", "a".repeat(65));
        let long_address = format!("a@{}.org", "b".repeat(250));
        for (input, rule) in [
            ("", RULE_FORMAT),
            ("   ", RULE_FORMAT),
            ("byron", RULE_FORMAT),
            ("byron@", RULE_FORMAT),
            ("@example.org", RULE_FORMAT),
            ("by@ron@example.org", RULE_FORMAT),
            ("byron@example", RULE_FORMAT),
            ("byron@example..org", RULE_FORMAT),
            ("byron@.example.org", RULE_FORMAT),
            ("byron@example.org.", RULE_FORMAT),
            ("byron@exa_mple.org", RULE_FORMAT),
            ("by ron@example.org", RULE_FORMAT),
            ("byron@exam ple.org", RULE_FORMAT),
            ("by\u{7}ron@example.org", RULE_FORMAT),
            (long_local.as_str(), RULE_LENGTH),
            (long_address.as_str(), RULE_LENGTH),
        ] {
            let error = EmailAddress::parse(input).unwrap_err();
            assert_eq!(error.rule, rule, "{input:?}");
        }
    }

    #[test]
    fn the_limits_are_inclusive() {
        let local = "a".repeat(64);
        assert!(EmailAddress::parse(&format!("{local}@example.org")).is_ok());
        let domain = format!("{}.org", "b".repeat(254 - 2 - 4));
        assert_eq!(format!("a@{domain}").len(), 254);
        assert!(EmailAddress::parse(&format!("a@{domain}")).is_ok());
    }
}
