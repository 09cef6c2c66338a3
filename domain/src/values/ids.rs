//! Aggregate identifiers: UUIDs that cannot be mixed up with one another.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::ValueError;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            /// A fresh random (version 4) id.
            #[allow(clippy::new_without_default, reason = "a random id is not a default value")]
            pub fn new() -> Self {
                Self(Uuid::new_v4())
            }

            /// Wraps an existing UUID, e.g. one read from a URL path or a database row.
            pub const fn from_uuid(uuid: Uuid) -> Self {
                Self(uuid)
            }

            /// The UUID inside.
            pub const fn as_uuid(&self) -> &Uuid {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0.hyphenated(), f)
            }
        }

        impl FromStr for $name {
            type Err = ValueError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s)
                    .map(Self)
                    .map_err(|_| ValueError::new("id.uuid", format!("{s:?} is not a UUID")))
            }
        }

        impl From<Uuid> for $name {
            fn from(uuid: Uuid) -> Self {
                Self(uuid)
            }
        }

        impl From<$name> for Uuid {
            fn from(id: $name) -> Self {
                id.0
            }
        }
    };
}

uuid_id! {
    /// Identifies a facility, and the facility's event stream.
    FacilityId
}

uuid_id! {
    /// Identifies a funeral home: the business a facility belongs to (issue 16). Not an aggregate
    /// of its own yet; facilities registered before `FacilityRegistered` v2 have none.
    FuneralHomeId
}

uuid_id! {
    /// Identifies a booking, and the booking's event stream.
    BookingId
}

uuid_id! {
    /// Identifies a payment, and the payment's event stream. There is one payment per booking:
    /// its id is derived from the booking id with [`PaymentId::for_booking`].
    PaymentId
}

uuid_id! {
    /// Identifies the stream of operators' (and the saga runner's own) decisions about one
    /// booking's saga: parked, retried, a step skipped, resolved by hand. There is one per
    /// booking: its id is derived from the booking id with [`SagaId::for_booking`].
    SagaId
}

/// The UUID v5 namespace of payment ids. Changing it would orphan every recorded payment.
pub const PAYMENT_ID_NAMESPACE: Uuid = Uuid::from_u128(0x1fe7_8e3f_0a75_480c_a77f_1501_6d97_a08c);

impl PaymentId {
    /// The payment id of `booking`: a UUID v5 of the booking id, so that every component that
    /// knows the booking (the saga, a retried capture, an operator) names the same payment
    /// without a lookup, and a booking can never have two payments.
    pub fn for_booking(booking: BookingId) -> Self {
        Self(Uuid::new_v5(
            &PAYMENT_ID_NAMESPACE,
            booking.as_uuid().as_bytes(),
        ))
    }
}

/// The UUID v5 namespace of saga ids. Changing it would orphan every recorded decision.
pub const SAGA_ID_NAMESPACE: Uuid = Uuid::from_u128(0x7d3c_2b8e_51a4_4c0f_9e62_0b7d_4a1f_8c35);

impl SagaId {
    /// The saga stream of `booking`: a UUID v5 of the booking id (never the booking id itself,
    /// so that no table keyed by aggregate id mixes the two streams).
    pub fn for_booking(booking: BookingId) -> Self {
        Self(Uuid::new_v5(
            &SAGA_ID_NAMESPACE,
            booking.as_uuid().as_bytes(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payment_id_is_derived_from_its_booking_id() {
        let booking = BookingId::from_uuid(Uuid::from_u128(42));
        assert_eq!(
            PaymentId::for_booking(booking),
            PaymentId::for_booking(booking)
        );
        assert_ne!(
            PaymentId::for_booking(booking),
            PaymentId::for_booking(BookingId::from_uuid(Uuid::from_u128(43)))
        );
        assert_eq!(
            PaymentId::for_booking(booking).as_uuid().get_version_num(),
            5
        );
    }

    #[test]
    fn the_payment_id_derivation_never_changes() {
        let booking: BookingId = "6a1f7a52-34b4-4e6b-9d0e-0c1f3a9b2c11".parse().unwrap();
        assert_eq!(
            PaymentId::for_booking(booking).to_string(),
            Uuid::new_v5(&PAYMENT_ID_NAMESPACE, booking.as_uuid().as_bytes()).to_string()
        );
        assert_eq!(
            PAYMENT_ID_NAMESPACE.to_string(),
            "1fe78e3f-0a75-480c-a77f-15016d97a08c"
        );
    }

    #[test]
    fn a_saga_id_is_derived_from_its_booking_id_and_differs_from_its_payment_id() {
        let booking: BookingId = "6a1f7a52-34b4-4e6b-9d0e-0c1f3a9b2c11".parse().unwrap();
        let saga = SagaId::for_booking(booking);
        assert_eq!(saga, SagaId::for_booking(booking));
        assert_ne!(saga.as_uuid(), booking.as_uuid());
        assert_ne!(saga.as_uuid(), PaymentId::for_booking(booking).as_uuid());
        assert_eq!(
            SAGA_ID_NAMESPACE.to_string(),
            "7d3c2b8e-51a4-4c0f-9e62-0b7d4a1f8c35"
        );
    }

    #[test]
    fn ids_display_and_parse_as_hyphenated_uuids() {
        let id = FacilityId::new();
        assert_eq!(id.to_string().parse::<FacilityId>().unwrap(), id);
        assert_eq!(
            "not-a-uuid".parse::<BookingId>().unwrap_err().rule,
            "id.uuid"
        );
    }
}
