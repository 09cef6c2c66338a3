//! The notification the saga asks for: which kind, about which booking, to whom.

use std::fmt;

use domain::pricing::Statement;
use domain::values::{BookingId, EmailAddress, Slot};
use serde::{Deserialize, Serialize};

/// Which outcome the family is told about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotificationKind {
    /// The slot is held and paid for: the service will take place.
    Confirmation,
    /// The facility could not give the slot; nothing was charged.
    Rejection,
    /// The payment failed (declined or timed out); the slot was released, no money kept.
    Failure,
    /// The booking was cancelled; a payment, if any, is refunded.
    Cancellation,
}

impl NotificationKind {
    /// Every kind, in the order of the booking's life.
    pub const ALL: [Self; 4] = [
        Self::Confirmation,
        Self::Rejection,
        Self::Failure,
        Self::Cancellation,
    ];

    /// The stable name: `confirmation`, `rejection`, `failure` or `cancellation` (also the
    /// serde form and the first part of the Message-ID).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Confirmation => "confirmation",
            Self::Rejection => "rejection",
            Self::Failure => "failure",
            Self::Cancellation => "cancellation",
        }
    }
}

impl fmt::Display for NotificationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One letter to a booking's family. Serialisable, so the saga can keep it in its outbox.
///
/// `Debug` leaves out the names and addresses (it shows how many recipients there are), so a
/// stray `?notification` in a log line leaks nothing personal.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    pub kind: NotificationKind,
    pub booking_id: BookingId,
    /// The family contacts' addresses; all go on one mail's `To:`. Must not be empty.
    pub recipients: Vec<EmailAddress>,
    /// The deceased's full name, as the family gave it ("the service for Ada Lovelace").
    pub deceased_name: String,
    /// The facility's name; when unknown, the letter does not say where.
    pub facility_name: Option<String>,
    /// When the service is (or was to be); shown in the offset the booking was made with.
    pub slot: Slot,
    /// Why it was rejected, failed or cancelled, in plain words for the family.
    pub reason: Option<String>,
    /// The itemised statement the booking was priced with: the confirmation letter lists it
    /// (docs/pricing.md). `None` for a booking whose saga facts predate price lists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statement: Option<Statement>,
}

impl fmt::Debug for Notification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Notification")
            .field("kind", &self.kind)
            .field("booking_id", &self.booking_id)
            .field(
                "recipients",
                &format_args!("[{} redacted]", self.recipients.len()),
            )
            .field("deceased_name", &format_args!("[redacted]"))
            .field("facility_name", &self.facility_name)
            .field("slot", &self.slot)
            .field("reason", &self.reason)
            .field("statement", &self.statement)
            .finish()
    }
}

/// The Message-ID of a booking's letter of `kind`: exactly `<{kind}.{booking_id}@funeral-manager>`.
///
/// Deterministic, so a letter sent again after a crash (the SMTP server took it, the saga died
/// before recording that) carries the same id, and mail clients and tests see one letter.
pub fn message_id(kind: NotificationKind, booking_id: BookingId) -> String {
    format!("<{}.{booking_id}@funeral-manager>", kind.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_have_stable_names_in_serde_and_as_str() {
        for kind in NotificationKind::ALL {
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
            assert_eq!(
                serde_json::from_str::<NotificationKind>(&json).unwrap(),
                kind
            );
        }
        let names: Vec<_> = NotificationKind::ALL.map(NotificationKind::as_str).into();
        assert_eq!(
            names,
            ["confirmation", "rejection", "failure", "cancellation"]
        );
    }

    #[test]
    fn the_message_id_is_the_kind_and_the_booking() {
        let booking: BookingId = "0b7c3f9e-5d7a-4c1e-9a55-2f7f0a3c9d11".parse().unwrap();
        assert_eq!(
            message_id(NotificationKind::Failure, booking),
            "<failure.0b7c3f9e-5d7a-4c1e-9a55-2f7f0a3c9d11@funeral-manager>"
        );
        assert_ne!(
            message_id(NotificationKind::Confirmation, booking),
            message_id(NotificationKind::Cancellation, booking)
        );
    }

    #[test]
    fn debug_shows_no_names_or_addresses() {
        let notification = Notification {
            kind: NotificationKind::Confirmation,
            booking_id: BookingId::new(),
            recipients: vec![EmailAddress::parse("byron@example.org").unwrap()],
            deceased_name: "Ada Lovelace".to_owned(),
            facility_name: Some("St Mary's Chapel".to_owned()),
            slot: Slot::parse("2027-03-02T10:00:00+00:00", "2027-03-02T11:00:00+00:00").unwrap(),
            reason: None,
            statement: None,
        };
        let debug = format!("{notification:?}");
        assert!(!debug.contains("byron"), "{debug}");
        assert!(!debug.contains("Lovelace"), "{debug}");
        assert!(debug.contains("[1 redacted]"), "{debug}");
    }
}
