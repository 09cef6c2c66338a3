//! What the booking saga tells a family, and how it reaches them: one letter per outcome
//! (confirmation, rejection, failure, cancellation) sent over SMTP to every family contact at
//! once, with a deterministic `Message-ID` so that a resend after a crash is recognisable.
//!
//! The crate makes **one attempt per call**: the saga owns retries, backoff and deadlines, and
//! uses [`NotifyError::is_transient`] to decide whether another attempt can help.
//!
//! - [`notification`]: [`Notification`], [`NotificationKind`], [`message_id`].
//! - [`letter`]: the subject and plain-text body of each kind, pure and testable without I/O.
//! - [`settings`]: [`SmtpSettings`] (`FM_SMTP__*`), [`SmtpTls`].
//! - [`invitation`]: [`Invitation`], the letter that carries a family's invitation code (sent
//!   by the command-service, not the saga; docs/identity.md).
//! - [`mailer`]: [`Mailer`], [`SentMail`], [`NotifyError`] and how SMTP failures are classified.
//!
//! Privacy: names and addresses are in the letters, never in logs or errors. Logs carry the
//! booking id, the kind and the Message-ID; error texts have anything that looks like an
//! address redacted, since the saga stores and shows them.

pub mod invitation;
pub mod letter;
pub mod mailer;
pub mod notification;
pub mod settings;

pub use invitation::Invitation;
pub use letter::Letter;
pub use mailer::{Mailer, NotifyError, SentMail};
pub use notification::{Notification, NotificationKind, message_id};
pub use settings::{SmtpSettings, SmtpTls};
