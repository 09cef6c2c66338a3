//! Why the domain said no.
//!
//! Two kinds of refusal live here, both "the domain said no" and never "infrastructure broke":
//! - [`ValueError`]: a raw value could not become a value object (a malformed email, a negative
//!   amount). It names the rule but not the field, because the same value object sits under many
//!   fields; the HTTP edge knows the JSON path and attaches it.
//! - [`DomainError`]: a well-formed command was refused by an aggregate. It knows which contract
//!   field it concerns ([`DomainError::field`]), its stable rule code ([`DomainError::rule`]) and
//!   what kind of refusal it is ([`DomainError::kind`]), which the edge maps to an HTTP status.

use thiserror::Error;

use crate::booking::BookingStatus;
use crate::saga::SagaStep;
use crate::values::{BookingId, Currency, FacilityKind, Money, ServiceType};

/// A raw value that failed to parse into a value object.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{message}")]
pub struct ValueError {
    /// The stable machine code of the broken rule, e.g. `"email.format"`.
    pub rule: &'static str,
    /// A human-readable explanation, safe to show to the caller.
    pub message: String,
}

impl ValueError {
    /// A parse error for `rule` with a human-readable `message`.
    pub fn new(rule: &'static str, message: impl Into<String>) -> Self {
        Self {
            rule,
            message: message.into(),
        }
    }
}

/// What sort of refusal a [`DomainError`] is; the HTTP edge maps it to a status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectionKind {
    /// The command breaks a rule whatever the state: 422 Unprocessable Content.
    Invalid,
    /// The aggregate the command addresses does not exist: 404 Not Found.
    NotFound,
    /// The command does not fit the aggregate's current lifecycle state: 409 Conflict.
    Conflict,
}

/// A command refused by an aggregate.
///
/// Each variant documents its [`RejectionKind`] and the contract field it concerns, if any.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DomainError {
    /// The facility has not been registered. Not found, field `facility_id`.
    #[error("the facility is not registered")]
    FacilityNotRegistered,

    /// The facility was registered before. Conflict, field `facility_id`.
    #[error("the facility is already registered")]
    FacilityAlreadyRegistered,

    /// The booking already holds a different slot at this facility; it must release it first.
    /// Conflict, field `slot`.
    #[error("booking {booking_id} already holds a different slot at this facility")]
    BookingHoldsAnotherSlot {
        /// The booking that asked for a second slot.
        booking_id: BookingId,
    },

    /// The booking has not been requested. Not found, field `booking_id`.
    #[error("the booking does not exist")]
    BookingNotFound,

    /// A booking with this id was already requested. Conflict, field `booking_id`.
    #[error("a booking with this id was already requested")]
    BookingAlreadyRequested,

    /// The booking names no family contact. Invalid, field `family_contacts`.
    #[error("at least one family contact is required")]
    NoFamilyContacts,

    /// The booking names more family contacts than [`crate::booking::MAX_FAMILY_CONTACTS`]
    /// (each one is mailed from the home's address). Invalid, field `family_contacts`.
    #[error("a booking has at most {max} family contacts")]
    TooManyFamilyContacts {
        /// The most contacts a booking may have.
        max: usize,
    },

    /// The statement's total is not more than zero: a booking is paid for, and a capture of
    /// nothing is not a payment (docs/payments.md, "A zero total"). Invalid, field
    /// `statement.total`.
    #[error("the total must be more than zero")]
    ZeroPrice,

    /// The home's price list has no item for this service type (docs/pricing.md). Invalid,
    /// field `service_type`.
    #[error("the funeral home's price list does not offer a {service_type} service")]
    ServiceNotOffered {
        /// The service asked for.
        service_type: ServiceType,
    },

    /// The home's price list has no hourly item for this kind of facility. Invalid, field
    /// `facility_id`.
    #[error("the funeral home's price list does not price the hours of a {facility_kind}")]
    FacilityKindNotOffered {
        /// The kind of the facility asked for.
        facility_kind: FacilityKind,
    },

    /// An add-on is not an add-on item of the home's price list. Invalid, field `add_ons`.
    #[error("add_ons[{index}] is not an add-on of the funeral home's price list")]
    UnknownAddOn {
        /// Its position in the request.
        index: usize,
    },

    /// An add-on is asked for twice. Invalid, field `add_ons`.
    #[error("add_ons[{index}] repeats an earlier add-on")]
    AddOnRepeated {
        /// Its position in the request.
        index: usize,
    },

    /// More add-ons than [`crate::pricing::MAX_ADD_ONS`]. Invalid, field `add_ons`.
    #[error("a booking has at most {max} add-ons")]
    TooManyAddOns {
        /// The most add-ons a booking may have.
        max: usize,
    },

    /// More adjustments than [`crate::pricing::MAX_ADJUSTMENTS`]. Invalid, field `adjustments`.
    #[error("a booking has at most {max} adjustments")]
    TooManyAdjustments {
        /// The most adjustments a booking may have.
        max: usize,
    },

    /// The statement is not in the currency of its total, or its lines and adjustments do not
    /// add up to it (a caller built it by hand). Invalid, field `statement`.
    #[error("the statement does not add up to its total")]
    StatementDoesNotAddUp,

    /// The family already holds as many open bookings as it may (docs/security.md, API4/API6).
    /// Conflict, no field.
    #[error("this family already holds {limit} open bookings, the most it may hold")]
    OpenBookingLimitReached {
        /// The most open bookings a family may hold.
        limit: usize,
    },

    /// The slot starts now or in the past. Invalid, field `slot.start`.
    #[error("the slot must start in the future")]
    SlotInPast,

    /// The date of death is after today (in the facility's time zone).
    /// Invalid, field `deceased.date_of_death`.
    #[error("the date of death cannot be in the future")]
    DateOfDeathInFuture,

    /// The service would take place, in the facility's time zone, on a date before the date of
    /// death. Invalid, field `slot.start`.
    #[error("the service cannot take place before the date of death")]
    ServiceBeforeDateOfDeath,

    /// The slot does not lie within one opening interval of the facility, in the facility's time
    /// zone. Invalid, field `slot`.
    #[error("the slot is outside the facility's opening hours")]
    SlotOutsideOpeningHours,

    /// The command does not apply to a booking in status `from`. Conflict, no field.
    #[error("cannot {command} a booking that is {from}")]
    InvalidTransition {
        /// The booking's status when the command arrived.
        from: BookingStatus,
        /// The refused command, in `snake_case` (`"confirm"`, `"cancel"`, ...).
        command: &'static str,
    },

    /// The service has started (or is over), so it can no longer be cancelled. Conflict, no field.
    #[error("the service has already started")]
    ServiceAlreadyStarted,

    /// No payment was recorded for this booking. Not found, field `payment_id`.
    #[error("no payment was recorded")]
    PaymentNotFound,

    /// The payment id is not the one derived from the booking id
    /// (see [`crate::values::PaymentId::for_booking`]). Invalid, field `payment_id`.
    #[error("the payment id does not belong to this booking")]
    PaymentIdMismatch,

    /// A gateway reference was empty. Invalid, field `gateway_reference`.
    #[error("the gateway reference cannot be empty")]
    MissingGatewayReference,

    /// The payment was already captured under another gateway reference. Conflict, no field.
    #[error("the payment was already captured")]
    PaymentAlreadyCaptured,

    /// The payment was declined; it cannot be captured afterwards. Conflict, no field.
    #[error("the payment was declined")]
    PaymentAlreadyDeclined,

    /// The payment was already refunded under another gateway reference. Conflict, no field.
    #[error("the payment was already refunded")]
    PaymentAlreadyRefunded,

    /// Only a captured payment can be refunded. Conflict, no field.
    #[error("the payment was not captured")]
    PaymentNotCaptured,

    /// The refund's currency differs from the captured currency. Invalid, field `amount.currency`.
    #[error("refund currency {refund} differs from captured currency {captured}")]
    RefundCurrencyMismatch {
        /// The currency of the refund asked for.
        refund: Currency,
        /// The currency that was captured.
        captured: Currency,
    },

    /// The refund is larger than the captured amount. Invalid, field `amount.amount_minor`.
    #[error("refund of {refund} exceeds the captured {captured}")]
    RefundExceedsCapture {
        /// The refund asked for.
        refund: Money,
        /// The amount captured.
        captured: Money,
    },

    /// The booking's saga was resolved by hand: nothing more is done to it. Conflict, no field.
    #[error("the saga was resolved by hand")]
    SagaResolved,

    /// The step's effect is a fact of the log (a slot, a payment, a status), which skipping it
    /// cannot make true. Invalid, field `step`.
    #[error("step {step} cannot be skipped (only a letter or a capture lookup can)")]
    SagaStepNotSkippable {
        /// The step asked to be skipped.
        step: SagaStep,
    },

    /// The refund is smaller than the captured amount; only full refunds are supported.
    /// Invalid, field `amount.amount_minor`.
    #[error(
        "refund of {refund} is less than the captured {captured}; only full refunds are supported"
    )]
    PartialRefundNotSupported {
        /// The refund asked for.
        refund: Money,
        /// The amount captured.
        captured: Money,
    },
}

impl DomainError {
    /// The contract field this refusal concerns, as a dotted path (`"slot.start"`), if any.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            Self::FacilityNotRegistered
            | Self::FacilityAlreadyRegistered
            | Self::FacilityKindNotOffered { .. } => Some("facility_id"),
            Self::BookingHoldsAnotherSlot { .. } | Self::SlotOutsideOpeningHours => Some("slot"),
            Self::BookingNotFound | Self::BookingAlreadyRequested => Some("booking_id"),
            Self::NoFamilyContacts | Self::TooManyFamilyContacts { .. } => Some("family_contacts"),
            Self::ZeroPrice => Some("statement.total"),
            Self::ServiceNotOffered { .. } => Some("service_type"),
            Self::UnknownAddOn { .. } | Self::AddOnRepeated { .. } | Self::TooManyAddOns { .. } => {
                Some("add_ons")
            }
            Self::TooManyAdjustments { .. } => Some("adjustments"),
            Self::StatementDoesNotAddUp => Some("statement"),
            Self::SlotInPast | Self::ServiceBeforeDateOfDeath => Some("slot.start"),
            Self::DateOfDeathInFuture => Some("deceased.date_of_death"),
            Self::PaymentNotFound | Self::PaymentIdMismatch => Some("payment_id"),
            Self::MissingGatewayReference => Some("gateway_reference"),
            Self::SagaStepNotSkippable { .. } => Some("step"),
            Self::RefundCurrencyMismatch { .. } => Some("amount.currency"),
            Self::RefundExceedsCapture { .. } | Self::PartialRefundNotSupported { .. } => {
                Some("amount.amount_minor")
            }
            Self::InvalidTransition { .. }
            | Self::OpenBookingLimitReached { .. }
            | Self::ServiceAlreadyStarted
            | Self::PaymentAlreadyCaptured
            | Self::PaymentAlreadyDeclined
            | Self::PaymentAlreadyRefunded
            | Self::PaymentNotCaptured
            | Self::SagaResolved => None,
        }
    }

    /// The stable machine code of the refused rule, e.g. `"slot.in_past"`.
    pub fn rule(&self) -> &'static str {
        match self {
            Self::FacilityNotRegistered => "facility.not_registered",
            Self::FacilityAlreadyRegistered => "facility.already_registered",
            Self::BookingHoldsAnotherSlot { .. } => "facility.booking_holds_another_slot",
            Self::BookingNotFound => "booking.not_found",
            Self::BookingAlreadyRequested => "booking.already_requested",
            Self::NoFamilyContacts => "booking.family_contacts_required",
            Self::TooManyFamilyContacts { .. } => "booking.family_contacts_max",
            Self::ZeroPrice => "booking.price_positive",
            Self::ServiceNotOffered { .. } | Self::FacilityKindNotOffered { .. } => {
                "price_list.not_offered"
            }
            Self::UnknownAddOn { .. } => "price_list.unknown_item",
            Self::AddOnRepeated { .. } => "add_ons.unique",
            Self::TooManyAddOns { .. } => "add_ons.max_items",
            Self::TooManyAdjustments { .. } => "adjustments.max_items",
            Self::StatementDoesNotAddUp => "statement.adds_up",
            Self::OpenBookingLimitReached { .. } => "booking.open_bookings_limit",
            Self::SlotInPast => "slot.in_past",
            Self::DateOfDeathInFuture => "deceased.date_of_death_in_future",
            Self::ServiceBeforeDateOfDeath => "slot.before_date_of_death",
            Self::SlotOutsideOpeningHours => "slot.outside_opening_hours",
            Self::InvalidTransition { .. } => "booking.invalid_transition",
            Self::ServiceAlreadyStarted => "booking.service_already_started",
            Self::PaymentNotFound => "payment.not_found",
            Self::PaymentIdMismatch => "payment.id_mismatch",
            Self::MissingGatewayReference => "payment.gateway_reference_required",
            Self::PaymentAlreadyCaptured => "payment.already_captured",
            Self::PaymentAlreadyDeclined => "payment.already_declined",
            Self::PaymentAlreadyRefunded => "payment.already_refunded",
            Self::PaymentNotCaptured => "payment.not_captured",
            Self::RefundCurrencyMismatch { .. } => "refund.currency_mismatch",
            Self::RefundExceedsCapture { .. } => "refund.exceeds_capture",
            Self::PartialRefundNotSupported { .. } => "refund.full_amount_only",
            Self::SagaResolved => "saga.resolved",
            Self::SagaStepNotSkippable { .. } => "saga.step_not_skippable",
        }
    }

    /// What sort of refusal this is (422, 404 or 409 at the HTTP edge).
    pub fn kind(&self) -> RejectionKind {
        match self {
            Self::FacilityNotRegistered | Self::BookingNotFound | Self::PaymentNotFound => {
                RejectionKind::NotFound
            }
            Self::FacilityAlreadyRegistered
            | Self::BookingHoldsAnotherSlot { .. }
            | Self::BookingAlreadyRequested
            | Self::InvalidTransition { .. }
            | Self::OpenBookingLimitReached { .. }
            | Self::ServiceAlreadyStarted
            | Self::PaymentAlreadyCaptured
            | Self::PaymentAlreadyDeclined
            | Self::PaymentAlreadyRefunded
            | Self::PaymentNotCaptured
            | Self::SagaResolved => RejectionKind::Conflict,
            Self::NoFamilyContacts
            | Self::TooManyFamilyContacts { .. }
            | Self::ZeroPrice
            | Self::ServiceNotOffered { .. }
            | Self::FacilityKindNotOffered { .. }
            | Self::UnknownAddOn { .. }
            | Self::AddOnRepeated { .. }
            | Self::TooManyAddOns { .. }
            | Self::TooManyAdjustments { .. }
            | Self::StatementDoesNotAddUp
            | Self::SlotInPast
            | Self::DateOfDeathInFuture
            | Self::ServiceBeforeDateOfDeath
            | Self::SlotOutsideOpeningHours
            | Self::PaymentIdMismatch
            | Self::MissingGatewayReference
            | Self::RefundCurrencyMismatch { .. }
            | Self::RefundExceedsCapture { .. }
            | Self::PartialRefundNotSupported { .. }
            | Self::SagaStepNotSkippable { .. } => RejectionKind::Invalid,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rule_code_is_namespaced_snake_case() {
        let samples = [
            DomainError::FacilityNotRegistered,
            DomainError::SlotInPast,
            DomainError::InvalidTransition {
                from: BookingStatus::Cancelled,
                command: "confirm",
            },
            DomainError::PaymentNotCaptured,
        ];
        for error in samples {
            let rule = error.rule();
            let (namespace, name) = rule.split_once('.').expect("rule has a namespace");
            for part in [namespace, name] {
                assert!(
                    !part.is_empty() && part.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                    "{rule}"
                );
            }
        }
    }

    #[test]
    fn an_invalid_transition_says_what_was_refused_and_why() {
        let error = DomainError::InvalidTransition {
            from: BookingStatus::Rejected,
            command: "confirm",
        };
        assert_eq!(
            error.to_string(),
            "cannot confirm a booking that is rejected"
        );
        assert_eq!(error.kind(), RejectionKind::Conflict);
        assert_eq!(error.field(), None);
    }

    #[test]
    fn field_errors_name_the_contract_path() {
        assert_eq!(DomainError::SlotInPast.field(), Some("slot.start"));
        assert_eq!(
            DomainError::DateOfDeathInFuture.field(),
            Some("deceased.date_of_death")
        );
        assert_eq!(
            DomainError::NoFamilyContacts.field(),
            Some("family_contacts")
        );
        assert_eq!(
            DomainError::SlotOutsideOpeningHours.kind(),
            RejectionKind::Invalid
        );
        assert_eq!(DomainError::BookingNotFound.kind(), RejectionKind::NotFound);
    }
}
