//! Crypto-shredding of personal data (docs/privacy.md): a booking's personal data is sealed
//! under a data key of its own before it reaches the log, data keys live in PostgreSQL wrapped
//! by a master key from the settings, and destroying a booking's key erases its personal data
//! from every copy of the log at once.
//!
//! Used by every service that writes or reads personal data: the command-service seals (and
//! erases, and exports), the projector and the saga runner open, `fmctl` opens for the ops role
//! and rotates master keys.
//!
//! - [`crypto`] — XChaCha20-Poly1305: sealing and opening a box, wrapping and unwrapping a key,
//!   parsing the master keys. Pure; the only place that touches key material.
//! - [`store`] — [`KeyStore`]: the `privacy.data_keys` table, a short cache of unwrapped keys
//!   (a minute at most), erasure, re-wrapping under a new master key, and its status.
//! - [`settings`] — [`PrivacySettings`] (`FM_PRIVACY__*`).

pub mod crypto;
pub mod settings;
pub mod store;

pub use crypto::{CryptoError, DataKey, MasterKeys};
pub use settings::PrivacySettings;
pub use store::{KeyStatus, KeyStore, Opened, PrivacyError};
