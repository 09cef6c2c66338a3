//! A booking's personal data, and the sealed form in which it travels on the log.
//!
//! The people a booking names (the deceased's name; each contact's name, relationship, e-mail
//! and phone) are personal data that must be erasable while the log is kept for ever
//! (docs/privacy.md). So the log never holds them in the clear: `BookingRequested` carries them
//! as [`SealedPersonal`], encrypted under a data key of the booking's own that lives outside the
//! log, and destroying that key erases them from every copy at once. The domain only carries the
//! sealed box; sealing and opening are I/O (a key store), done by the `privacy` crate.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::FamilyContact;
use crate::values::PersonName;

/// What a booking's sealed box holds, in the clear.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PersonalData {
    /// The deceased's full name.
    pub deceased_full_name: PersonName,
    /// Whom to tell; never empty.
    pub family_contacts: Vec<FamilyContact>,
}

/// Personal data encrypted under a booking's data key (XChaCha20-Poly1305, the booking id and
/// the event type as associated data). Nonce and ciphertext are base64 (standard alphabet).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptedPersonal {
    /// The data key's id (`privacy.data_keys.key_id`).
    pub key_id: Uuid,
    /// The 24-byte nonce, base64.
    pub nonce: String,
    /// The ciphertext with its tag, base64.
    pub ciphertext: String,
}

/// The personal part of a `BookingRequested`, as the log holds it.
///
/// Writers only ever write [`SealedPersonal::Encrypted`]. [`SealedPersonal::Legacy`] exists
/// because `BookingRequested` v1 (the first release) held the data in the clear and an upcaster
/// is a pure function of its record: it cannot encrypt, so a v1 record reads as v2 with its
/// plaintext inside (docs/privacy.md, "Logs written before this change").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SealedPersonal {
    /// Encrypted: what every writer of v2 writes.
    Encrypted(EncryptedPersonal),
    /// The plaintext of a v1 record, upcast.
    Legacy {
        /// The data as v1 held it.
        plaintext: PersonalData,
    },
}

impl SealedPersonal {
    /// The data key's id, if the data is encrypted.
    pub fn key_id(&self) -> Option<Uuid> {
        match self {
            Self::Encrypted(encrypted) => Some(encrypted.key_id),
            Self::Legacy { .. } => None,
        }
    }
}
