//! Closed vocabularies: kinds of facility and types of service.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ValueError;

macro_rules! vocabulary {
    (
        $(#[$doc:meta])* $name:ident, $rule:literal {
            $($(#[$vdoc:meta])* $variant:ident => $code:literal,)+
        }
    ) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vdoc])* #[serde(rename = $code)] $variant,)+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [Self] = &[$(Self::$variant,)+];

            /// The wire code, in `snake_case`.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $code,)+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = ValueError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::ALL
                    .iter()
                    .copied()
                    .find(|value| value.as_str() == s)
                    .ok_or_else(|| {
                        let known: Vec<_> = Self::ALL.iter().map(|value| value.as_str()).collect();
                        ValueError::new($rule, format!("{s:?} is not one of {}", known.join(", ")))
                    })
            }
        }
    };
}

vocabulary! {
    /// What a facility is.
    FacilityKind, "facility_kind.unknown" {
        /// A chapel for funeral or memorial services.
        Chapel => "chapel",
        /// A crematorium.
        Crematorium => "crematorium",
        /// A graveside at a cemetery.
        Graveside => "graveside",
        /// A hall for the gathering after the service.
        ReceptionHall => "reception_hall",
    }
}

vocabulary! {
    /// What kind of service a family books.
    ServiceType, "service_type.unknown" {
        /// A burial.
        Burial => "burial",
        /// A cremation.
        Cremation => "cremation",
        /// A memorial service, without the body present.
        Memorial => "memorial",
        /// A viewing of the deceased.
        Viewing => "viewing",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vocabularies_use_snake_case_on_the_wire() {
        assert_eq!(
            serde_json::to_string(&FacilityKind::ReceptionHall).unwrap(),
            "\"reception_hall\""
        );
        assert_eq!(
            "crematorium".parse::<FacilityKind>().unwrap(),
            FacilityKind::Crematorium
        );
        assert_eq!(
            serde_json::from_str::<ServiceType>("\"viewing\"").unwrap(),
            ServiceType::Viewing
        );
        for kind in FacilityKind::ALL {
            assert_eq!(kind.to_string().parse::<FacilityKind>().unwrap(), *kind);
        }
    }

    #[test]
    fn unknown_codes_are_refused() {
        assert_eq!(
            "Chapel".parse::<FacilityKind>().unwrap_err().rule,
            "facility_kind.unknown"
        );
        assert_eq!(
            "wake".parse::<ServiceType>().unwrap_err().rule,
            "service_type.unknown"
        );
        assert!(serde_json::from_str::<ServiceType>("\"Burial\"").is_err());
    }
}
