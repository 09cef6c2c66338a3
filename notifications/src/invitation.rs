//! [`Invitation`]: the letter that carries a family's invitation code (docs/identity.md,
//! "Families by invitation"). The command-service sends it once, at the moment it makes the
//! code; the code exists nowhere else in the clear.

use std::fmt;

use chrono::{DateTime, Utc};
use domain::values::{BookingId, EmailAddress};
use uuid::Uuid;

use crate::letter::Letter;

/// One invitation letter, to one family contact.
///
/// `Debug` leaves out the address and the code, so a stray `?invitation` in a log line leaks
/// neither.
#[derive(Clone, PartialEq, Eq)]
pub struct Invitation {
    pub invitation_id: Uuid,
    pub booking_id: BookingId,
    /// The one contact it goes to: an address of the booking's own contacts.
    pub recipient: EmailAddress,
    /// The contact's name, for the greeting.
    pub contact_name: String,
    /// The deceased's name, as the family gave it.
    pub deceased_name: String,
    /// The single-use code.
    pub code: String,
    /// The front end's page; the code is appended as the fragment (`#code=…`), which browsers
    /// never send to a server.
    pub link_base: String,
    pub expires_at: DateTime<Utc>,
}

impl fmt::Debug for Invitation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Invitation")
            .field("invitation_id", &self.invitation_id)
            .field("booking_id", &self.booking_id)
            .field("recipient", &format_args!("[redacted]"))
            .field("code", &format_args!("[redacted]"))
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl Invitation {
    /// The letter's `Message-ID`: one per invitation.
    pub fn message_id(&self) -> String {
        format!("<invitation.{}@funeral-manager>", self.invitation_id)
    }

    /// The link with the code in its fragment.
    pub fn link(&self) -> String {
        format!("{}#code={}", self.link_base, self.code)
    }

    /// Subject and plain-text body.
    pub fn letter(&self) -> Letter {
        Letter {
            subject: format!("Your access to the arrangements for {}", self.deceased_name),
            text: format!(
                "Dear {name},\n\n\
                 The funeral director has invited you to follow the arrangements for {deceased}.\n\n\
                 Open this link:\n{link}\n\n\
                 or enter this code: {code}\n\n\
                 The code works once, until {expires} (UTC). If you did not expect this letter, \
                 you can ignore it.\n",
                name = self.contact_name,
                deceased = self.deceased_name,
                link = self.link(),
                code = self.code,
                expires = self.expires_at.format("%Y-%m-%d %H:%M"),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_letter_carries_the_code_and_the_link_and_debug_carries_neither() {
        let invitation = Invitation {
            invitation_id: Uuid::from_u128(7),
            booking_id: BookingId::new(),
            recipient: EmailAddress::parse("byron@example.org").expect("valid"),
            contact_name: "Byron King".to_owned(),
            deceased_name: "Ada Lovelace".to_owned(),
            code: "c0de".to_owned(),
            link_base: "https://family.example/open".to_owned(),
            expires_at: Utc::now(),
        };
        let letter = invitation.letter();
        assert!(
            letter
                .text
                .contains("https://family.example/open#code=c0de")
        );
        assert!(letter.text.contains("enter this code: c0de"));
        assert!(letter.subject.contains("Ada Lovelace"));
        let debug = format!("{invitation:?}");
        assert!(!debug.contains("c0de") && !debug.contains("byron@"));
    }
}
