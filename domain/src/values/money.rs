//! Money: integer minor units in an ISO 4217 currency. No floats anywhere.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ValueError;

/// An active ISO 4217 currency, with the number of digits of its minor unit.
///
/// Only codes from ISO 4217 list one (as published on 2026-01-01) that have a minor unit are
/// accepted. The handful of list-one codes whose minor unit is "N.A." (precious metals, bond
/// market units, XDR, XSU, XUA, XTS, XXX) are left out on purpose: a price cannot be stated in
/// minor units of something that has none.
///
/// Serialises as its code, e.g. `"GBP"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Currency {
    code: &'static str,
    minor_units: u8,
}

const CURRENCY_RULE: &str = "currency.iso4217";

/// `(code, minor-unit digits)`, sorted by code so that lookups can binary-search.
#[rustfmt::skip]
const ISO_4217: &[(&str, u8)] = &[
    ("AED", 2), ("AFN", 2), ("ALL", 2), ("AMD", 2), ("AOA", 2), ("ARS", 2), ("AUD", 2), ("AWG", 2),
    ("AZN", 2), ("BAM", 2), ("BBD", 2), ("BDT", 2), ("BHD", 3), ("BIF", 0), ("BMD", 2), ("BND", 2),
    ("BOB", 2), ("BOV", 2), ("BRL", 2), ("BSD", 2), ("BTN", 2), ("BWP", 2), ("BYN", 2), ("BZD", 2),
    ("CAD", 2), ("CDF", 2), ("CHE", 2), ("CHF", 2), ("CHW", 2), ("CLF", 4), ("CLP", 0), ("CNY", 2),
    ("COP", 2), ("COU", 2), ("CRC", 2), ("CUP", 2), ("CVE", 2), ("CZK", 2), ("DJF", 0), ("DKK", 2),
    ("DOP", 2), ("DZD", 2), ("EGP", 2), ("ERN", 2), ("ETB", 2), ("EUR", 2), ("FJD", 2), ("FKP", 2),
    ("GBP", 2), ("GEL", 2), ("GHS", 2), ("GIP", 2), ("GMD", 2), ("GNF", 0), ("GTQ", 2), ("GYD", 2),
    ("HKD", 2), ("HNL", 2), ("HTG", 2), ("HUF", 2), ("IDR", 2), ("ILS", 2), ("INR", 2), ("IQD", 3),
    ("IRR", 2), ("ISK", 0), ("JMD", 2), ("JOD", 3), ("JPY", 0), ("KES", 2), ("KGS", 2), ("KHR", 2),
    ("KMF", 0), ("KPW", 2), ("KRW", 0), ("KWD", 3), ("KYD", 2), ("KZT", 2), ("LAK", 2), ("LBP", 2),
    ("LKR", 2), ("LRD", 2), ("LSL", 2), ("LYD", 3), ("MAD", 2), ("MDL", 2), ("MGA", 2), ("MKD", 2),
    ("MMK", 2), ("MNT", 2), ("MOP", 2), ("MRU", 2), ("MUR", 2), ("MVR", 2), ("MWK", 2), ("MXN", 2),
    ("MXV", 2), ("MYR", 2), ("MZN", 2), ("NAD", 2), ("NGN", 2), ("NIO", 2), ("NOK", 2), ("NPR", 2),
    ("NZD", 2), ("OMR", 3), ("PAB", 2), ("PEN", 2), ("PGK", 2), ("PHP", 2), ("PKR", 2), ("PLN", 2),
    ("PYG", 0), ("QAR", 2), ("RON", 2), ("RSD", 2), ("RUB", 2), ("RWF", 0), ("SAR", 2), ("SBD", 2),
    ("SCR", 2), ("SDG", 2), ("SEK", 2), ("SGD", 2), ("SHP", 2), ("SLE", 2), ("SOS", 2), ("SRD", 2),
    ("SSP", 2), ("STN", 2), ("SVC", 2), ("SYP", 2), ("SZL", 2), ("THB", 2), ("TJS", 2), ("TMT", 2),
    ("TND", 3), ("TOP", 2), ("TRY", 2), ("TTD", 2), ("TWD", 2), ("TZS", 2), ("UAH", 2), ("UGX", 0),
    ("USD", 2), ("USN", 2), ("UYI", 0), ("UYU", 2), ("UYW", 4), ("UZS", 2), ("VED", 2), ("VES", 2),
    ("VND", 0), ("VUV", 0), ("WST", 2), ("XAD", 2), ("XAF", 0), ("XCD", 2), ("XCG", 2), ("XOF", 0),
    ("XPF", 0), ("YER", 2), ("ZAR", 2), ("ZMW", 2), ("ZWG", 2),
];

impl Currency {
    /// Pound sterling.
    pub const GBP: Self = Self {
        code: "GBP",
        minor_units: 2,
    };
    /// Euro.
    pub const EUR: Self = Self {
        code: "EUR",
        minor_units: 2,
    };
    /// US dollar.
    pub const USD: Self = Self {
        code: "USD",
        minor_units: 2,
    };

    /// Parses an upper-case three-letter ISO 4217 code such as `"GBP"`.
    pub fn parse(code: &str) -> Result<Self, ValueError> {
        if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(ValueError::new(
                CURRENCY_RULE,
                format!("{code:?} is not a currency code: three upper-case letters expected"),
            ));
        }
        ISO_4217
            .binary_search_by(|(known, _)| (*known).cmp(code))
            .map(|index| Self::from_entry(ISO_4217[index]))
            .map_err(|_| {
                ValueError::new(
                    CURRENCY_RULE,
                    format!("{code:?} is not an active ISO 4217 currency code"),
                )
            })
    }

    /// Every accepted currency, in code order (for JSON Schema enums and property tests).
    pub fn all() -> impl ExactSizeIterator<Item = Self> {
        ISO_4217.iter().copied().map(Self::from_entry)
    }

    /// The three-letter code, e.g. `"GBP"`.
    pub const fn code(self) -> &'static str {
        self.code
    }

    /// How many decimal digits the minor unit has: 2 for GBP (pence), 0 for JPY, 3 for KWD.
    pub const fn minor_units(self) -> u8 {
        self.minor_units
    }

    fn from_entry((code, minor_units): (&'static str, u8)) -> Self {
        Self { code, minor_units }
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code)
    }
}

impl FromStr for Currency {
    type Err = ValueError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for Currency {
    type Error = ValueError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<Currency> for String {
    fn from(value: Currency) -> Self {
        value.code.to_owned()
    }
}

// Written by hand: derived impls would treat the `&'static str` field as borrowed from the input.
impl Serialize for Currency {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.code)
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let code = String::deserialize(deserializer)?;
        Self::parse(&code).map_err(serde::de::Error::custom)
    }
}

/// A non-negative amount of money, in integer minor units of its currency.
///
/// Serialises as `{"amount_minor": 125000, "currency": "GBP"}` (£1,250.00).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "MoneyRepr", into = "MoneyRepr")]
pub struct Money {
    amount_minor: i64,
    currency: Currency,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct MoneyRepr {
    amount_minor: i64,
    currency: Currency,
}

impl Money {
    /// An amount of `amount_minor` minor units (pence, cents) of `currency`; negative amounts
    /// are refused, since prices, captures and refunds are all stated as positive sums.
    pub fn new(amount_minor: i64, currency: Currency) -> Result<Self, ValueError> {
        if amount_minor < 0 {
            return Err(ValueError::new(
                "money.non_negative",
                "an amount of money cannot be negative",
            ));
        }
        Ok(Self {
            amount_minor,
            currency,
        })
    }

    /// `amount_minor` of `currency`, or zero of it when `amount_minor` is negative.
    pub const fn saturating(amount_minor: i64, currency: Currency) -> Self {
        Self {
            amount_minor: if amount_minor < 0 { 0 } else { amount_minor },
            currency,
        }
    }

    /// The amount in minor units.
    pub const fn amount_minor(self) -> i64 {
        self.amount_minor
    }

    /// The currency.
    pub const fn currency(self) -> Currency {
        self.currency
    }
}

impl fmt::Display for Money {
    /// Formats as the major amount with the currency's decimals, then the code: `1250.00 GBP`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let digits = usize::from(self.currency.minor_units);
        if digits == 0 {
            return write!(f, "{} {}", self.amount_minor, self.currency);
        }
        let scale = 10_i64.pow(u32::from(self.currency.minor_units));
        write!(
            f,
            "{}.{:0digits$} {}",
            self.amount_minor / scale,
            self.amount_minor % scale,
            self.currency
        )
    }
}

impl TryFrom<MoneyRepr> for Money {
    type Error = ValueError;

    fn try_from(value: MoneyRepr) -> Result<Self, Self::Error> {
        Self::new(value.amount_minor, value.currency)
    }
}

impl From<Money> for MoneyRepr {
    fn from(value: Money) -> Self {
        Self {
            amount_minor: value.amount_minor,
            currency: value.currency,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_currency_table_is_sorted_and_well_formed() {
        assert!(ISO_4217.windows(2).all(|pair| pair[0].0 < pair[1].0));
        for (code, minor_units) in ISO_4217 {
            assert_eq!(code.len(), 3);
            assert!(code.bytes().all(|b| b.is_ascii_uppercase()));
            assert!(*minor_units <= 4, "{code}");
        }
        assert_eq!(Currency::all().len(), ISO_4217.len());
    }

    #[test]
    fn the_named_currencies_match_the_table() {
        for currency in [Currency::GBP, Currency::EUR, Currency::USD] {
            assert_eq!(Currency::parse(currency.code()).unwrap(), currency);
        }
    }

    #[test]
    fn parses_active_codes_with_their_minor_units() {
        for (code, minor_units) in [
            ("GBP", 2),
            ("EUR", 2),
            ("JPY", 0),
            ("KWD", 3),
            ("CLF", 4),
            ("XOF", 0),
            ("ZWG", 2),
        ] {
            assert_eq!(Currency::parse(code).unwrap().minor_units(), minor_units);
        }
    }

    #[test]
    fn rejects_unknown_lowercase_or_retired_codes() {
        for code in [
            "", "gbp", "Gbp", "GB", "GBPX", "ABC", "DEM", "HRK", "XAU", "XXX", " GBP",
        ] {
            assert_eq!(
                Currency::parse(code).unwrap_err().rule,
                CURRENCY_RULE,
                "{code:?}"
            );
        }
    }

    #[test]
    fn money_cannot_be_negative() {
        assert_eq!(
            Money::new(-1, Currency::GBP).unwrap_err().rule,
            "money.non_negative"
        );
        assert_eq!(Money::new(0, Currency::GBP).unwrap().amount_minor(), 0);
    }

    #[test]
    fn money_serialises_as_minor_units_and_a_code() {
        let price = Money::new(125_000, Currency::GBP).unwrap();
        assert_eq!(
            serde_json::to_value(price).unwrap(),
            serde_json::json!({"amount_minor": 125_000, "currency": "GBP"})
        );
    }

    #[test]
    fn invalid_money_does_not_deserialise() {
        for json in [
            serde_json::json!({"amount_minor": -5, "currency": "GBP"}),
            serde_json::json!({"amount_minor": 5, "currency": "gbp"}),
            serde_json::json!({"amount_minor": 5, "currency": "ZZZ"}),
            serde_json::json!({"amount_minor": 12.5, "currency": "GBP"}),
            serde_json::json!({"amount_minor": 5}),
            serde_json::json!({"amount_minor": 5, "currency": "GBP", "extra": true}),
        ] {
            assert!(
                serde_json::from_value::<Money>(json.clone()).is_err(),
                "{json}"
            );
        }
    }

    #[test]
    fn money_displays_in_major_units() {
        let show = |amount, code| {
            Money::new(amount, Currency::parse(code).unwrap())
                .unwrap()
                .to_string()
        };
        assert_eq!(show(125_000, "GBP"), "1250.00 GBP");
        assert_eq!(show(5, "EUR"), "0.05 EUR");
        assert_eq!(show(1500, "JPY"), "1500 JPY");
        assert_eq!(show(1_234, "KWD"), "1.234 KWD");
    }
}
