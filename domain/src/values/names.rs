//! Short human-written texts: names of facilities and people, family relationships.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ValueError;

/// The most characters (Unicode scalar values) a name-like text may have.
const MAX_CHARS: usize = 200;

macro_rules! short_text {
    ($(#[$doc:meta])* $name:ident, $rule_prefix:literal, $what:literal) => {
        $(#[$doc])*
        ///
        /// Rules: surrounding whitespace is trimmed; not empty; at most 200 characters; no
        /// control characters (so no line breaks or tabs inside).
        #[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// The most characters accepted.
            pub const MAX_CHARS: usize = MAX_CHARS;

            #[doc = concat!("Parses a ", $what, ".")]
            pub fn parse(input: &str) -> Result<Self, ValueError> {
                let text = input.trim();
                if text.is_empty() {
                    return Err(ValueError::new(
                        concat!($rule_prefix, ".empty"),
                        concat!("a ", $what, " cannot be empty"),
                    ));
                }
                if text.chars().count() > MAX_CHARS {
                    return Err(ValueError::new(
                        concat!($rule_prefix, ".too_long"),
                        format!(concat!("a ", $what, " has at most {} characters"), MAX_CHARS),
                    ));
                }
                if text.chars().any(char::is_control) {
                    return Err(ValueError::new(
                        concat!($rule_prefix, ".control_characters"),
                        concat!("a ", $what, " cannot contain control characters"),
                    ));
                }
                Ok(Self(text.to_owned()))
            }

            /// The text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = ValueError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = ValueError;

            fn try_from(value: String) -> Result<Self, Self::Error> {
                Self::parse(&value)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> Self {
                value.0
            }
        }
    };
}

short_text! {
    /// The display name of a facility, e.g. "St Mary's Chapel".
    FacilityName, "facility_name", "facility name"
}

short_text! {
    /// A person's full name as they write it; no assumption about given or family names.
    PersonName, "person_name", "person's name"
}

short_text! {
    /// What a price-list item is, as the family's statement prints it ("Celebrant").
    ItemDescription, "description", "description"
}

short_text! {
    /// How a family contact is related to the deceased, in their own words ("son", "friend").
    Relationship, "relationship", "relationship"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_trims_names() {
        for (input, expected) in [
            ("Ada Lovelace", "Ada Lovelace"),
            ("  St Mary's Chapel ", "St Mary's Chapel"),
            ("Zoë Ní Bhriain-O'Neill", "Zoë Ní Bhriain-O'Neill"),
            ("李小龍", "李小龍"),
        ] {
            assert_eq!(PersonName::parse(input).unwrap().as_str(), expected);
        }
        assert!(FacilityName::parse(&"é".repeat(200)).is_ok());
    }

    #[test]
    fn rejects_empty_long_or_control_text() {
        for (input, rule) in [
            (String::new(), "person_name.empty"),
            (" \t ".to_owned(), "person_name.empty"),
            ("a".repeat(201), "person_name.too_long"),
            ("Ada\nLovelace".to_owned(), "person_name.control_characters"),
            ("Ada\u{0}".to_owned(), "person_name.control_characters"),
        ] {
            assert_eq!(
                PersonName::parse(&input).unwrap_err().rule,
                rule,
                "{input:?}"
            );
        }
        assert_eq!(
            FacilityName::parse("").unwrap_err().rule,
            "facility_name.empty"
        );
        assert_eq!(
            Relationship::parse("").unwrap_err().rule,
            "relationship.empty"
        );
    }

    #[test]
    fn invalid_names_do_not_deserialise() {
        assert!(serde_json::from_str::<PersonName>("\"  \"").is_err());
        assert!(serde_json::from_str::<Relationship>("\"son\\u0007\"").is_err());
        assert_eq!(
            serde_json::from_str::<Relationship>("\" son \"")
                .unwrap()
                .as_str(),
            "son"
        );
    }
}
