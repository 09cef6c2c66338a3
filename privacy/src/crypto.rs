//! The cryptography, all of it: XChaCha20-Poly1305 (a random 192-bit nonce per encryption needs
//! no counter) for sealing a booking's personal data under its data key, and for wrapping a data
//! key under a master key. Associated data binds each ciphertext to where it belongs: a sealed
//! box to its booking and event type, a wrapped key to its key id and booking, so neither can be
//! moved elsewhere and still open.

use std::fmt;

use base64::{Engine as _, engine::general_purpose::STANDARD};
use chacha20poly1305::{
    KeyInit, XChaCha20Poly1305, XNonce,
    aead::{Aead, AeadCore, OsRng, Payload},
};
use domain::booking::{EncryptedPersonal, PersonalData};
use thiserror::Error;
use uuid::Uuid;

/// The event type a sealed box belongs to (part of its associated data).
const SEALED_IN: &[u8] = b"BookingRequested";
/// What a wrapped data key's associated data starts with.
const WRAPPED: &[u8] = b"fm-data-key";
const NONCE_LEN: usize = 24;

/// Why a box or a key does not open, or a master key does not parse. None of the texts quote a
/// key or a plaintext.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CryptoError {
    /// The ciphertext is not base64, is too short, or its tag does not verify: another key,
    /// another booking, or damaged bytes.
    #[error("it fails authentication (tampered, another booking's, or under another key)")]
    Undecryptable,
    /// It decrypted but is not personal data.
    #[error("decrypted but is not personal data: {0}")]
    NotPersonalData(String),
    /// `FM_PRIVACY__MASTER_KEYS` is malformed.
    #[error("invalid master keys: {0}")]
    MasterKeys(String),
}

/// A booking's 256-bit data key, in the clear: only ever in memory, briefly.
#[derive(Clone, PartialEq, Eq)]
pub struct DataKey([u8; 32]);

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey(..)")
    }
}

impl DataKey {
    /// A new random key from the operating system's generator.
    pub fn generate() -> Self {
        Self(XChaCha20Poly1305::generate_key(&mut OsRng).into())
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(&self.0.into())
    }
}

/// One master key and its id.
#[derive(Clone)]
pub struct MasterKey {
    id: String,
    key: DataKey,
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MasterKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl MasterKey {
    /// Its id, as stored beside every key it wraps.
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// The master keys of the settings, the first of which wraps new data keys.
#[derive(Debug, Clone)]
pub struct MasterKeys(Vec<MasterKey>);

impl MasterKeys {
    /// Parses `id:base64key[,id:base64key…]`; ids are letters, digits, `-` and `_`, each key 32
    /// bytes.
    pub fn parse(text: &str) -> Result<Self, CryptoError> {
        let mut keys: Vec<MasterKey> = Vec::new();
        for (index, item) in text
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .enumerate()
        {
            let malformed = |why: &str| CryptoError::MasterKeys(format!("entry {index}: {why}"));
            let (id, key) = item
                .split_once(':')
                .ok_or_else(|| malformed("not id:base64key"))?;
            if id.is_empty()
                || !id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(malformed("the id must be letters, digits, - or _"));
            }
            let bytes = STANDARD
                .decode(key.trim())
                .map_err(|_| malformed("the key is not base64"))?;
            let key: [u8; 32] = bytes
                .try_into()
                .map_err(|_| malformed("the key is not 32 bytes"))?;
            if keys.iter().any(|known| known.id == id) {
                return Err(malformed("the id is used twice"));
            }
            keys.push(MasterKey {
                id: id.to_owned(),
                key: DataKey(key),
            });
        }
        if keys.is_empty() {
            return Err(CryptoError::MasterKeys("no master key".to_owned()));
        }
        Ok(Self(keys))
    }

    /// A new random master key written as settings expect it (`id:base64key`).
    pub fn generate(id: &str) -> String {
        format!("{id}:{}", STANDARD.encode(DataKey::generate().0))
    }

    /// The key that wraps new data keys.
    pub fn current(&self) -> &MasterKey {
        &self.0[0]
    }

    /// The key with this id, if the settings have it.
    pub fn get(&self, id: &str) -> Option<&MasterKey> {
        self.0.iter().find(|key| key.id == id)
    }

    /// Every id, the current one first.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|key| key.id.as_str())
    }
}

fn wrap_aad(key_id: Uuid, booking_id: Uuid) -> Vec<u8> {
    [WRAPPED, key_id.as_bytes(), booking_id.as_bytes()].concat()
}

fn seal_aad(booking_id: Uuid) -> Vec<u8> {
    [booking_id.as_bytes().as_slice(), SEALED_IN].concat()
}

fn encrypt(key: &DataKey, plaintext: &[u8], aad: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
    let ciphertext = key
        .cipher()
        .encrypt(
            &nonce,
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .expect("XChaCha20-Poly1305 encrypts any message shorter than 256 GiB");
    (nonce.to_vec(), ciphertext)
}

fn decrypt(
    key: &DataKey,
    nonce: &[u8],
    ciphertext: &[u8],
    aad: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    if nonce.len() != NONCE_LEN {
        return Err(CryptoError::Undecryptable);
    }
    key.cipher()
        .decrypt(
            XNonce::from_slice(nonce),
            Payload {
                msg: ciphertext,
                aad,
            },
        )
        .map_err(|_| CryptoError::Undecryptable)
}

/// `key` wrapped under `master` for the row (`key_id`, `booking_id`): nonce then ciphertext.
pub fn wrap(master: &MasterKey, key_id: Uuid, booking_id: Uuid, key: &DataKey) -> Vec<u8> {
    let (mut nonce, ciphertext) = encrypt(&master.key, &key.0, &wrap_aad(key_id, booking_id));
    nonce.extend(ciphertext);
    nonce
}

/// The data key [`wrap`] wrapped.
pub fn unwrap(
    master: &MasterKey,
    key_id: Uuid,
    booking_id: Uuid,
    wrapped: &[u8],
) -> Result<DataKey, CryptoError> {
    if wrapped.len() < NONCE_LEN {
        return Err(CryptoError::Undecryptable);
    }
    let (nonce, ciphertext) = wrapped.split_at(NONCE_LEN);
    let bytes = decrypt(
        &master.key,
        nonce,
        ciphertext,
        &wrap_aad(key_id, booking_id),
    )?;
    let key: [u8; 32] = bytes.try_into().map_err(|_| CryptoError::Undecryptable)?;
    Ok(DataKey(key))
}

/// What a sealed service secret's associated data starts with (then its label).
const SERVICE_SECRET: &[u8] = b"fm-service-secret";

/// A service's own secret (the command-service's family-session signing key,
/// docs/identity.md) sealed under `master` for the place `label` names: nonce then ciphertext.
/// The label is the associated data, so a sealed secret cannot be moved to another row.
pub fn seal_secret(master: &MasterKey, label: &str, secret: &[u8]) -> Vec<u8> {
    let aad = [SERVICE_SECRET, label.as_bytes()].concat();
    let (mut nonce, ciphertext) = encrypt(&master.key, secret, &aad);
    nonce.extend(ciphertext);
    nonce
}

/// The secret [`seal_secret`] sealed for `label`.
pub fn open_secret(master: &MasterKey, label: &str, sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
    if sealed.len() < NONCE_LEN {
        return Err(CryptoError::Undecryptable);
    }
    let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
    let aad = [SERVICE_SECRET, label.as_bytes()].concat();
    decrypt(&master.key, nonce, ciphertext, &aad)
}

/// `personal` sealed under the booking's data key.
pub fn seal(
    key: &DataKey,
    key_id: Uuid,
    booking_id: Uuid,
    personal: &PersonalData,
) -> EncryptedPersonal {
    let plaintext = serde_json::to_vec(personal).expect("personal data serialises");
    let (nonce, ciphertext) = encrypt(key, &plaintext, &seal_aad(booking_id));
    EncryptedPersonal {
        key_id,
        nonce: STANDARD.encode(nonce),
        ciphertext: STANDARD.encode(ciphertext),
    }
}

/// The personal data [`seal`] sealed for `booking_id`.
pub fn open(
    key: &DataKey,
    booking_id: Uuid,
    sealed: &EncryptedPersonal,
) -> Result<PersonalData, CryptoError> {
    let nonce = STANDARD
        .decode(&sealed.nonce)
        .map_err(|_| CryptoError::Undecryptable)?;
    let ciphertext = STANDARD
        .decode(&sealed.ciphertext)
        .map_err(|_| CryptoError::Undecryptable)?;
    let plaintext = decrypt(key, &nonce, &ciphertext, &seal_aad(booking_id))?;
    // The error's text names the place, never the value (serde_json quotes no input here).
    serde_json::from_slice(&plaintext).map_err(|error| {
        CryptoError::NotPersonalData(format!("line {} column {}", error.line(), error.column()))
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // A test fails loudly on any unexpected error; that is the point.
mod tests {
    use domain::fixtures::personal_data;

    use super::*;

    fn booking() -> Uuid {
        Uuid::from_u128(7)
    }

    #[test]
    fn sealed_personal_data_opens_with_its_key_and_booking_and_holds_no_plaintext() {
        let key = DataKey::generate();
        let sealed = seal(&key, Uuid::from_u128(1), booking(), &personal_data());
        let wire = serde_json::to_string(&sealed).unwrap();
        for plaintext in [
            "Ada",
            "Lovelace",
            "Byron",
            "byron@example.org",
            "+447700900123",
        ] {
            assert!(!wire.contains(plaintext), "{wire}");
        }
        assert_eq!(open(&key, booking(), &sealed).unwrap(), personal_data());
        // A fresh nonce every time: the same data never gives the same box.
        let again = seal(&key, Uuid::from_u128(1), booking(), &personal_data());
        assert_ne!(again.ciphertext, sealed.ciphertext);
    }

    #[test]
    fn a_box_moved_to_another_booking_or_opened_with_another_key_does_not_open() {
        let key = DataKey::generate();
        let sealed = seal(&key, Uuid::from_u128(1), booking(), &personal_data());
        assert_eq!(
            open(&key, Uuid::from_u128(8), &sealed),
            Err(CryptoError::Undecryptable)
        );
        assert_eq!(
            open(&DataKey::generate(), booking(), &sealed),
            Err(CryptoError::Undecryptable)
        );
        let mut damaged = sealed.clone();
        damaged.ciphertext.replace_range(0..4, "AAAA");
        assert_eq!(
            open(&key, booking(), &damaged),
            Err(CryptoError::Undecryptable)
        );
    }

    #[test]
    fn a_wrapped_key_unwraps_only_under_its_master_and_for_its_row() {
        let masters = MasterKeys::parse(&format!(
            "{},{}",
            MasterKeys::generate("m2"),
            MasterKeys::generate("m1")
        ))
        .unwrap();
        assert_eq!(masters.current().id(), "m2");
        assert_eq!(masters.ids().collect::<Vec<_>>(), ["m2", "m1"]);
        let key = DataKey::generate();
        let key_id = Uuid::from_u128(1);
        let wrapped = wrap(masters.current(), key_id, booking(), &key);
        assert_eq!(
            unwrap(masters.current(), key_id, booking(), &wrapped).unwrap(),
            key
        );
        let old = masters.get("m1").unwrap();
        assert!(unwrap(old, key_id, booking(), &wrapped).is_err());
        assert!(unwrap(masters.current(), Uuid::from_u128(2), booking(), &wrapped).is_err());
        assert!(unwrap(masters.current(), key_id, Uuid::from_u128(8), &wrapped).is_err());
    }

    #[test]
    fn a_sealed_secret_opens_only_under_its_master_and_for_its_label() {
        let masters = MasterKeys::parse(&format!(
            "{},{}",
            MasterKeys::generate("m2"),
            MasterKeys::generate("m1")
        ))
        .unwrap();
        let sealed = seal_secret(masters.current(), "family-1", b"signing key");
        assert!(!sealed.windows(11).any(|w| w == b"signing key"));
        assert_eq!(
            open_secret(masters.current(), "family-1", &sealed).unwrap(),
            b"signing key"
        );
        assert!(open_secret(masters.current(), "family-2", &sealed).is_err());
        assert!(open_secret(masters.get("m1").unwrap(), "family-1", &sealed).is_err());
    }

    #[test]
    fn master_keys_refuse_malformed_settings_without_quoting_them() {
        for bad in [
            "",
            "m1",
            "m1:notbase64!",
            "m1:AAAA",
            "bad id:AAAA",
            "m1:x,m1:y",
        ] {
            let error = MasterKeys::parse(bad).unwrap_err().to_string();
            assert!(!error.contains("AAAA"), "{error}");
        }
        let key = MasterKeys::generate("a");
        let duplicate = format!("{key},{key}");
        assert!(MasterKeys::parse(&duplicate).is_err());
        assert!(format!("{:?}", MasterKeys::parse(&key).unwrap()).contains("\"a\""));
        assert!(!format!("{:?}", MasterKeys::parse(&key).unwrap()).contains(&key[2..]));
    }
}
