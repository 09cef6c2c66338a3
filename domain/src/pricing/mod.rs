//! A funeral home's price list and the itemised statement a booking is priced with
//! (docs/pricing.md).
//!
//! The price of a booking is never the family's to state: the server prices the request from the
//! home's current [`PriceList`] and the booking keeps the [`Statement`], line by line, in its
//! `BookingRequested` event. Both are pure values: a list is checked when it is made, and pricing
//! is a function of the list and the request.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{DomainError, ValueError};
use crate::values::{Currency, FacilityKind, ItemDescription, Money, ServiceType, Slot};

#[cfg(test)]
mod tests;

/// The most items one list may have.
pub const MAX_ITEMS: usize = 200;
/// The most add-ons one booking may ask for.
pub const MAX_ADD_ONS: usize = 10;
/// The most adjustments one booking may carry.
pub const MAX_ADJUSTMENTS: usize = 5;
/// The largest amount, in minor units, of an item or an adjustment (£100 million): far above any
/// funeral's price, far below where sums of a list's items could overflow.
pub const MAX_AMOUNT_MINOR: i64 = 10_000_000_000;
/// The most characters an adjustment's reason may have (the API's limit for reasons).
pub const REASON_MAX_CHARS: usize = 500;

/// An item's code: what a booking names an add-on by, and what a statement's line keeps.
///
/// Rules: 1 to 64 characters of `a-z`, `0-9`, `_`, `.`, `-`, starting with a letter or digit.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ItemCode(String);

impl ItemCode {
    /// Parses a code.
    pub fn parse(input: &str) -> Result<Self, ValueError> {
        let well_formed = (1..=64).contains(&input.len())
            && input
                .bytes()
                .next()
                .is_some_and(|first| first.is_ascii_lowercase() || first.is_ascii_digit())
            && input.bytes().all(|byte| {
                byte.is_ascii_lowercase() || byte.is_ascii_digit() || b"_.-".contains(&byte)
            });
        if well_formed {
            Ok(Self(input.to_owned()))
        } else {
            Err(ValueError::new(
                "item_code.format",
                format!(
                    "{input:?} is not an item code: 1 to 64 of a-z, 0-9, '_', '.', '-', starting \
                     with a letter or digit"
                ),
            ))
        }
    }

    /// The code.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ItemCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for ItemCode {
    type Error = ValueError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<ItemCode> for String {
    fn from(value: ItemCode) -> Self {
        value.0
    }
}

/// One item of a price list, by the basis it is charged on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum PriceItem {
    /// Charged once for every booking of this service type.
    Service {
        code: ItemCode,
        description: ItemDescription,
        service_type: ServiceType,
        amount_minor: i64,
    },
    /// Charged per hour of the booked slot at a facility of this kind, pro rata to the minute.
    FacilityHour {
        code: ItemCode,
        description: ItemDescription,
        facility_kind: FacilityKind,
        amount_minor: i64,
    },
    /// Charged once for a booking that asks for it by its code.
    AddOn {
        code: ItemCode,
        description: ItemDescription,
        amount_minor: i64,
    },
}

impl PriceItem {
    /// The item's code.
    pub fn code(&self) -> &ItemCode {
        match self {
            Self::Service { code, .. }
            | Self::FacilityHour { code, .. }
            | Self::AddOn { code, .. } => code,
        }
    }

    /// The item's description.
    pub fn description(&self) -> &ItemDescription {
        match self {
            Self::Service { description, .. }
            | Self::FacilityHour { description, .. }
            | Self::AddOn { description, .. } => description,
        }
    }

    /// The item's amount in minor units (per hour for [`PriceItem::FacilityHour`]).
    pub fn amount_minor(&self) -> i64 {
        match self {
            Self::Service { amount_minor, .. }
            | Self::FacilityHour { amount_minor, .. }
            | Self::AddOn { amount_minor, .. } => *amount_minor,
        }
    }
}

/// A rule a list broke, with the path of the field in the list (`items[3].code`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListViolation {
    /// The field, relative to the list: `items`, `items[3].code`, ...
    pub field: String,
    /// What is wrong.
    pub error: ValueError,
}

/// A home's price list: one currency, at most [`MAX_ITEMS`] items with unique codes, at most one
/// item per service type and per facility kind, every amount from 0 to [`MAX_AMOUNT_MINOR`].
/// Only [`PriceList::new`] makes one (deserialising checks the same rules).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "PriceListRepr", into = "PriceListRepr")]
pub struct PriceList {
    currency: Currency,
    items: Vec<PriceItem>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PriceListRepr {
    currency: Currency,
    items: Vec<PriceItem>,
}

impl PriceList {
    /// Checks `items` against every rule of a list; all broken rules are reported, each with its
    /// field.
    pub fn new(currency: Currency, items: Vec<PriceItem>) -> Result<Self, Vec<ListViolation>> {
        let mut violations = Vec::new();
        let mut violation = |field: String, rule: &'static str, message: String| {
            violations.push(ListViolation {
                field,
                error: ValueError::new(rule, message),
            });
        };
        if items.is_empty() {
            violation(
                "items".to_owned(),
                "price_list.empty",
                "a price list has at least one item".to_owned(),
            );
        }
        if items.len() > MAX_ITEMS {
            violation(
                "items".to_owned(),
                "price_list.max_items",
                format!("a price list has at most {MAX_ITEMS} items"),
            );
        }
        let mut codes = BTreeSet::new();
        let mut services = BTreeSet::new();
        let mut kinds = BTreeSet::new();
        for (index, item) in items.iter().enumerate() {
            if !codes.insert(item.code()) {
                violation(
                    format!("items[{index}].code"),
                    "price_list.duplicate_code",
                    format!(
                        "the code {:?} is used by an earlier item",
                        item.code().as_str()
                    ),
                );
            }
            if !(0..=MAX_AMOUNT_MINOR).contains(&item.amount_minor()) {
                violation(
                    format!("items[{index}].amount_minor"),
                    "price_list.amount_range",
                    format!("an amount is from 0 to {MAX_AMOUNT_MINOR} minor units"),
                );
            }
            match item {
                PriceItem::Service { service_type, .. } if !services.insert(*service_type) => {
                    violation(
                        format!("items[{index}].service_type"),
                        "price_list.duplicate_service",
                        format!("{service_type} is priced by an earlier item"),
                    );
                }
                PriceItem::FacilityHour { facility_kind, .. } if !kinds.insert(*facility_kind) => {
                    violation(
                        format!("items[{index}].facility_kind"),
                        "price_list.duplicate_facility_kind",
                        format!("{facility_kind} is priced by an earlier item"),
                    );
                }
                _ => {}
            }
        }
        if violations.is_empty() {
            Ok(Self { currency, items })
        } else {
            Err(violations)
        }
    }

    /// The list's currency: every item and every statement priced from it is in it.
    pub fn currency(&self) -> Currency {
        self.currency
    }

    /// The items, in the order the home listed them.
    pub fn items(&self) -> &[PriceItem] {
        &self.items
    }

    /// Prices a booking: the service's line, the facility's hours, each add-on, then the
    /// adjustments; refused when the list does not offer what is asked for or the total is not
    /// more than zero.
    pub fn price(
        &self,
        reference: PriceListRef,
        request: PricingRequest<'_>,
    ) -> Result<Statement, DomainError> {
        let mut lines = Vec::with_capacity(2 + request.add_ons.len());
        let service = self
            .items
            .iter()
            .find(|item| matches!(item, PriceItem::Service { service_type, .. } if *service_type == request.service_type))
            .ok_or(DomainError::ServiceNotOffered {
                service_type: request.service_type,
            })?;
        lines.push(StatementLine::once(service));
        let hourly = self
            .items
            .iter()
            .find(|item| matches!(item, PriceItem::FacilityHour { facility_kind, .. } if *facility_kind == request.facility_kind))
            .ok_or(DomainError::FacilityKindNotOffered {
                facility_kind: request.facility_kind,
            })?;
        lines.push(StatementLine::hours(hourly, request.slot));
        if request.add_ons.len() > MAX_ADD_ONS {
            return Err(DomainError::TooManyAddOns { max: MAX_ADD_ONS });
        }
        for (index, code) in request.add_ons.iter().enumerate() {
            if request.add_ons[..index].contains(code) {
                return Err(DomainError::AddOnRepeated { index });
            }
            let item = self
                .items
                .iter()
                .find(|item| matches!(item, PriceItem::AddOn { .. }) && item.code() == code)
                .ok_or(DomainError::UnknownAddOn { index })?;
            lines.push(StatementLine::once(item));
        }
        if request.adjustments.len() > MAX_ADJUSTMENTS {
            return Err(DomainError::TooManyAdjustments {
                max: MAX_ADJUSTMENTS,
            });
        }
        let total_minor = lines.iter().map(|line| line.amount_minor).sum::<i64>()
            + request
                .adjustments
                .iter()
                .map(|adjustment| adjustment.amount_minor)
                .sum::<i64>();
        if total_minor <= 0 {
            return Err(DomainError::ZeroPrice);
        }
        Ok(Statement {
            price_list: Some(reference),
            currency: self.currency,
            lines,
            adjustments: request.adjustments,
            total_minor,
        })
    }
}

impl TryFrom<PriceListRepr> for PriceList {
    type Error = String;

    fn try_from(repr: PriceListRepr) -> Result<Self, Self::Error> {
        Self::new(repr.currency, repr.items).map_err(|violations| {
            violations
                .iter()
                .map(|violation| format!("{}: {}", violation.field, violation.error))
                .collect::<Vec<_>>()
                .join("; ")
        })
    }
}

impl From<PriceList> for PriceListRepr {
    fn from(list: PriceList) -> Self {
        Self {
            currency: list.currency,
            items: list.items,
        }
    }
}

/// What a booking asks to be priced for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PricingRequest<'a> {
    /// The service.
    pub service_type: ServiceType,
    /// The kind of the facility booked.
    pub facility_kind: FacilityKind,
    /// The slot: its length is what the facility's hourly item is charged for.
    pub slot: &'a Slot,
    /// The add-ons asked for, by code.
    pub add_ons: &'a [ItemCode],
    /// The director's adjustments (none from a family).
    pub adjustments: Vec<Adjustment>,
}

/// Which list, and which version of it, priced a statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceListRef {
    /// The funeral home whose list it is.
    pub home_id: Uuid,
    /// Its version (1, 2, ...).
    pub version: u32,
}

/// One line of a statement: an item as it was in the list when the booking was priced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatementLine {
    /// The item's code.
    pub code: String,
    /// The item's description.
    pub description: String,
    /// The item's amount: per hour for a facility's hours, else once.
    pub unit_amount_minor: i64,
    /// For a facility's hours: how many minutes were charged; else absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minutes: Option<u32>,
    /// What the line charges.
    pub amount_minor: i64,
}

impl StatementLine {
    fn once(item: &PriceItem) -> Self {
        Self {
            code: item.code().as_str().to_owned(),
            description: item.description().as_str().to_owned(),
            unit_amount_minor: item.amount_minor(),
            minutes: None,
            amount_minor: item.amount_minor(),
        }
    }

    /// The hourly item for the slot's minutes, rounded up to a whole minor unit: a family is
    /// never charged a fraction, and the home never loses one to rounding.
    fn hours(item: &PriceItem, slot: &Slot) -> Self {
        let minutes = slot.duration().num_minutes().max(0);
        let rate = i128::from(item.amount_minor());
        // Both factors are non-negative, so adding 59 before dividing rounds up.
        let amount = (rate * i128::from(minutes) + 59) / 60;
        Self {
            code: item.code().as_str().to_owned(),
            description: item.description().as_str().to_owned(),
            unit_amount_minor: item.amount_minor(),
            minutes: Some(u32::try_from(minutes).unwrap_or(u32::MAX)),
            // A slot is at most days long and a rate at most MAX_AMOUNT_MINOR: no overflow.
            amount_minor: i64::try_from(amount).unwrap_or(i64::MAX),
        }
    }
}

/// A director's discount (negative) or other adjustment (positive), with why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Adjustment {
    /// Signed minor units in the statement's currency; never zero.
    pub amount_minor: i64,
    /// Why, in the director's words (1 to 500 characters, no control characters).
    pub reason: String,
}

impl Adjustment {
    /// An adjustment: not zero, within ±[`MAX_AMOUNT_MINOR`], with a reason of 1 to 500
    /// characters without control characters. Errors name the field under the adjustment
    /// (`amount_minor` or `reason`).
    pub fn new(amount_minor: i64, reason: &str) -> Result<Self, (&'static str, ValueError)> {
        if amount_minor == 0 || !(-MAX_AMOUNT_MINOR..=MAX_AMOUNT_MINOR).contains(&amount_minor) {
            return Err((
                "amount_minor",
                ValueError::new(
                    "adjustment.amount_range",
                    format!("an adjustment is not zero and within ±{MAX_AMOUNT_MINOR} minor units"),
                ),
            ));
        }
        let reason = reason.trim();
        if reason.is_empty() || reason.chars().count() > REASON_MAX_CHARS {
            return Err((
                "reason",
                ValueError::new("reason.length", "1 to 500 characters"),
            ));
        }
        if reason.chars().any(char::is_control) {
            return Err((
                "reason",
                ValueError::new(
                    "reason.control_characters",
                    "no control characters (line breaks, tabs, escapes)",
                ),
            ));
        }
        Ok(Self {
            amount_minor,
            reason: reason.to_owned(),
        })
    }
}

/// A booking's itemised statement of goods and services: each line, each adjustment and the
/// total, in one currency, and the list that priced it (none for a booking priced before lists
/// existed, upcast from its agreed price).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Statement {
    /// The list and version that priced the booking.
    pub price_list: Option<PriceListRef>,
    /// The currency of every amount in it.
    pub currency: Currency,
    /// The items charged.
    pub lines: Vec<StatementLine>,
    /// The director's adjustments.
    #[serde(default)]
    pub adjustments: Vec<Adjustment>,
    /// The sum of the lines and the adjustments: what the family pays.
    pub total_minor: i64,
}

impl Statement {
    /// The code of the one line of a statement made from a price agreed before price lists.
    pub const AGREED_PRICE: &'static str = "agreed_price";

    /// The statement of a booking priced before price lists: one line for the agreed price.
    pub fn agreed(price: Money) -> Self {
        Self {
            price_list: None,
            currency: price.currency(),
            lines: vec![StatementLine {
                code: Self::AGREED_PRICE.to_owned(),
                description: "Price agreed before price lists".to_owned(),
                unit_amount_minor: price.amount_minor(),
                minutes: None,
                amount_minor: price.amount_minor(),
            }],
            adjustments: Vec::new(),
            total_minor: price.amount_minor(),
        }
    }

    /// The total as money (zero for a malformed statement whose total is negative, which
    /// pricing never makes and [`Statement::adds_up`] refuses).
    pub fn total(&self) -> Money {
        Money::saturating(self.total_minor, self.currency)
    }

    /// Whether the lines and adjustments add up to the total, and the total is not negative.
    pub fn adds_up(&self) -> bool {
        let lines: i64 = self.lines.iter().map(|line| line.amount_minor).sum();
        let adjustments: i64 = self.adjustments.iter().map(|a| a.amount_minor).sum();
        self.total_minor >= 0 && lines + adjustments == self.total_minor
    }
}
