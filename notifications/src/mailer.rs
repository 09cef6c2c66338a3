//! [`Mailer`]: one notification, one SMTP attempt, and a verdict the saga can act on.

use std::time::Duration;

use domain::booking::MAX_FAMILY_CONTACTS;
use lettre::{
    Address, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor,
    address::Envelope,
    message::{
        Mailbox,
        header::{ContentType, HeaderName, HeaderValue},
    },
    transport::smtp::{
        self,
        authentication::Credentials,
        client::{Tls, TlsParameters},
    },
};
use secrecy::ExposeSecret;
use thiserror::Error;

use crate::{
    invitation::Invitation,
    notification::{Notification, message_id},
    settings::{SmtpSettings, SmtpTls},
};

/// Why a letter was not handed over. The texts are safe to store and show: addresses in them
/// are redacted.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NotifyError {
    /// Another attempt later may succeed: the server could not be reached, did not answer in
    /// time, or answered 4xx ("try again later").
    #[error("transient: {0}")]
    Transient(String),
    /// Sending the same letter again will fail again: the server refused it with 5xx, an
    /// address or the settings are unusable, or there is nobody to write to.
    #[error("permanent: {0}")]
    Permanent(String),
}

impl NotifyError {
    /// Whether a later attempt can succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Transient(_))
    }
}

/// What the SMTP server accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentMail {
    /// The letter's `Message-ID`, as [`message_id`] gives it.
    pub message_id: String,
    /// Recipients the server refused for good while it took the letter for the others: one
    /// line each, "recipient 2 of 3: ..." with the server's answer (addresses redacted).
    /// Empty when every recipient has the letter.
    pub refused: Vec<String>,
}

/// Sends notifications through one SMTP server. Cheap to clone; each [`send`](Self::send)
/// opens its own connection (no pool: a pooled connection the server dropped would turn into a
/// spurious failure, and letters are few).
#[derive(Debug, Clone)]
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    timeout: Duration,
}

impl Mailer {
    /// Checks the settings and prepares the transport. Connects to nothing: an unreachable
    /// server shows at the first `send`, as a transient error.
    pub fn new(settings: &SmtpSettings) -> Result<Self, NotifyError> {
        let from: Mailbox = settings.from.parse().map_err(|error| {
            NotifyError::Permanent(format!("the sender (smtp.from) is not a mailbox: {error}"))
        })?;
        let tls = |host: &str| {
            TlsParameters::new(host.to_owned()).map_err(|error| {
                NotifyError::Permanent(format!("TLS cannot be set up: {}", redact(&error)))
            })
        };
        let mut builder =
            AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(settings.host.as_str())
                .port(settings.port)
                .timeout(Some(settings.timeout));
        builder = match settings.tls {
            SmtpTls::None => builder.tls(Tls::None),
            SmtpTls::StartTls => builder.tls(Tls::Required(tls(&settings.host)?)),
            SmtpTls::Tls => builder.tls(Tls::Wrapper(tls(&settings.host)?)),
        };
        if let (Some(username), Some(password)) = (&settings.username, &settings.password) {
            builder = builder.credentials(Credentials::new(
                username.expose_secret().to_owned(),
                password.expose_secret().to_owned(),
            ));
        }
        Ok(Self {
            transport: builder.build(),
            from,
            timeout: settings.timeout,
        })
    }

    /// One attempt to hand the letter to the SMTP server, bounded by the settings' timeout per
    /// SMTP transaction. `Ok` means the server accepted it for every recipient but those in
    /// [`SentMail::refused`].
    ///
    /// The letter goes to all recipients in one transaction. If the server refuses it for good
    /// and there are several recipients, one stale address may be the cause (SMTP refuses the
    /// whole transaction then): the letter is sent again to each recipient on their own, so
    /// the others still get it. Only if every recipient is refused is the error permanent. A
    /// transient answer for any one recipient makes the whole attempt transient; the next
    /// attempt reaches again those who had it, with the same `Message-ID` (the at-least-once
    /// of docs/saga.md). Errors never name an address (redacted), only the SMTP answer.
    #[tracing::instrument(
        name = "notification.send",
        skip_all,
        fields(booking_id = %notification.booking_id, kind = notification.kind.as_str())
    )]
    pub async fn send(&self, notification: &Notification) -> Result<SentMail, NotifyError> {
        let message_id = message_id(notification.kind, notification.booking_id);
        let (message, recipients) = compose(notification, &self.from)?;
        let bytes = message.formatted();
        let result = match self.transaction(message.envelope(), &bytes).await {
            Ok(()) => Ok(Vec::new()),
            Err(NotifyError::Permanent(_)) if recipients.len() > 1 => {
                self.one_by_one(&bytes, &recipients).await
            }
            Err(error) => Err(error),
        };
        match result {
            Ok(refused) => {
                if refused.is_empty() {
                    tracing::info!(%message_id, "notification accepted by the SMTP server");
                } else {
                    tracing::warn!(
                        %message_id,
                        refused = ?refused,
                        "notification accepted for some recipients only"
                    );
                }
                Ok(SentMail {
                    message_id,
                    refused,
                })
            }
            Err(error) => {
                tracing::warn!(%message_id, %error, "notification not sent");
                Err(error)
            }
        }
    }

    /// One attempt to hand an invitation letter to the SMTP server: one recipient, the
    /// booking's contact. Logs name the invitation and the booking, never the address or code.
    #[tracing::instrument(
        name = "invitation.send",
        skip_all,
        fields(booking_id = %invitation.booking_id, invitation_id = %invitation.invitation_id)
    )]
    pub async fn send_invitation(&self, invitation: &Invitation) -> Result<SentMail, NotifyError> {
        let message_id = invitation.message_id();
        let address: Address = invitation.recipient.as_str().parse().map_err(|_| {
            NotifyError::Permanent("the recipient is not an address SMTP can deliver to".to_owned())
        })?;
        let letter = invitation.letter();
        let message = Message::builder()
            .from(self.from.clone())
            .to(Mailbox::new(None, address))
            .subject(letter.subject)
            .message_id(Some(message_id.clone()))
            .raw_header(HeaderValue::new(
                HeaderName::new_from_ascii_str("Auto-Submitted"),
                "auto-generated".to_owned(),
            ))
            .header(ContentType::TEXT_PLAIN)
            .body(letter.text)
            .map_err(|error| {
                NotifyError::Permanent(format!("the letter cannot be built: {error}"))
            })?;
        let bytes = message.formatted();
        match self.transaction(message.envelope(), &bytes).await {
            Ok(()) => {
                tracing::info!(%message_id, "invitation accepted by the SMTP server");
                Ok(SentMail {
                    message_id,
                    refused: Vec::new(),
                })
            }
            Err(error) => {
                tracing::warn!(%message_id, %error, "invitation not sent");
                Err(error)
            }
        }
    }

    /// One envelope per recipient; answers the permanent refusals, or the error if no one got
    /// the letter for good reasons or anyone's answer was transient.
    async fn one_by_one(
        &self,
        bytes: &[u8],
        recipients: &[Address],
    ) -> Result<Vec<String>, NotifyError> {
        let mut refused = Vec::new();
        let mut transient = None;
        for (index, recipient) in recipients.iter().enumerate() {
            let envelope = Envelope::new(Some(self.from.email.clone()), vec![recipient.clone()])
                .map_err(|error| {
                    NotifyError::Permanent(format!("the envelope cannot be built: {error}"))
                })?;
            match self.transaction(&envelope, bytes).await {
                Ok(()) => {}
                Err(NotifyError::Permanent(reason)) => refused.push(format!(
                    "recipient {} of {}: {reason}",
                    index + 1,
                    recipients.len()
                )),
                Err(error) => {
                    transient.get_or_insert(error);
                }
            }
        }
        if let Some(error) = transient {
            Err(error)
        } else if refused.len() == recipients.len() {
            Err(NotifyError::Permanent(refused.join("; ")))
        } else {
            Ok(refused)
        }
    }

    /// One SMTP transaction, bounded by the timeout.
    async fn transaction(&self, envelope: &Envelope, bytes: &[u8]) -> Result<(), NotifyError> {
        match tokio::time::timeout(self.timeout, self.transport.send_raw(envelope, bytes)).await {
            Ok(Ok(_response)) => Ok(()),
            Ok(Err(error)) => Err(classify(&error)),
            Err(_elapsed) => Err(NotifyError::Transient(format!(
                "the SMTP server did not finish within {} ms",
                self.timeout.as_millis()
            ))),
        }
    }
}

/// The letter as a MIME message: `From`, every recipient on one `To`, the subject, the
/// deterministic `Message-ID`, `Auto-Submitted` (so out-of-office replies stay away) and a
/// UTF-8 plain-text body; and the distinct recipients' addresses.
///
/// The recipients are the booking's contacts, so a letter never goes to more than
/// [`MAX_FAMILY_CONTACTS`] distinct addresses; a notification that names more (a booking logged
/// before that limit) is refused for good rather than sent from the home's address to a list.
fn compose(
    notification: &Notification,
    from: &Mailbox,
) -> Result<(Message, Vec<Address>), NotifyError> {
    if notification.recipients.is_empty() {
        return Err(NotifyError::Permanent(
            "the notification has no recipients".to_owned(),
        ));
    }
    let letter = notification.letter();
    let mut builder = Message::builder()
        .from(from.clone())
        .subject(letter.subject)
        .message_id(Some(message_id(notification.kind, notification.booking_id)))
        .raw_header(HeaderValue::new(
            HeaderName::new_from_ascii_str("Auto-Submitted"),
            "auto-generated".to_owned(),
        ))
        .header(ContentType::TEXT_PLAIN);
    let mut addresses: Vec<Address> = Vec::with_capacity(notification.recipients.len());
    for (index, recipient) in notification.recipients.iter().enumerate() {
        let address: Address = recipient.as_str().parse().map_err(|_| {
            NotifyError::Permanent(format!(
                "recipient {} of {} is not an address SMTP can deliver to",
                index + 1,
                notification.recipients.len()
            ))
        })?;
        // Two contacts may share an address; one copy each is enough.
        if !addresses.contains(&address) {
            if addresses.len() == MAX_FAMILY_CONTACTS {
                return Err(NotifyError::Permanent(format!(
                    "the notification names more than {MAX_FAMILY_CONTACTS} distinct recipients"
                )));
            }
            builder = builder.to(Mailbox::new(None, address.clone()));
            addresses.push(address);
        }
    }
    let message = builder
        .body(letter.text)
        .map_err(|error| NotifyError::Permanent(format!("the letter cannot be built: {error}")))?;
    Ok((message, addresses))
}

/// 5xx answers and problems of our own making are permanent; 4xx answers, network trouble,
/// timeouts and TLS handshakes are worth another attempt (a TLS problem that is really a
/// misconfiguration then ends at the saga's deadline, with the reason in the error).
fn classify(error: &smtp::Error) -> NotifyError {
    let text = redact(error);
    if error.is_permanent() || error.is_client() {
        NotifyError::Permanent(format!("the SMTP server refused the letter: {text}"))
    } else if error.is_transient() {
        NotifyError::Transient(format!("the SMTP server deferred the letter: {text}"))
    } else {
        NotifyError::Transient(format!("the SMTP server could not be reached: {text}"))
    }
}

/// The error's text with every word that holds an `@` replaced: servers quote addresses back
/// ("550 5.1.1 <someone@example.org>: unknown user"), and these texts end up in stored state.
fn redact(error: &dyn std::fmt::Display) -> String {
    error
        .to_string()
        .split(' ')
        .map(|word| {
            if word.contains('@') {
                "[address]"
            } else {
                word
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use domain::values::{BookingId, EmailAddress, Slot};
    use mail_parser::{MessageParser, MimeHeaders};

    use super::*;
    use crate::notification::NotificationKind;

    fn notification(kind: NotificationKind, recipients: &[&str]) -> Notification {
        Notification {
            kind,
            booking_id: BookingId::new(),
            recipients: recipients
                .iter()
                .map(|address| EmailAddress::parse(address).unwrap())
                .collect(),
            deceased_name: "José Ñúñez".to_owned(),
            facility_name: Some("St Mary's Chapel".to_owned()),
            slot: Slot::parse("2027-03-02T10:00:00+00:00", "2027-03-02T11:00:00+00:00").unwrap(),
            reason: None,
            statement: None,
        }
    }

    fn from() -> Mailbox {
        SmtpSettings::default().from.parse().unwrap()
    }

    /// Builds the message, formats it as it goes on the wire, and parses that back.
    fn wire(notification: &Notification) -> (Vec<u8>, Vec<String>) {
        let (message, recipients) = compose(notification, &from()).unwrap();
        assert_eq!(message.envelope().to(), recipients.as_slice());
        let envelope: Vec<String> = message
            .envelope()
            .to()
            .iter()
            .map(ToString::to_string)
            .collect();
        (message.formatted(), envelope)
    }

    #[test]
    fn one_message_goes_to_every_contact_with_the_deterministic_message_id() {
        let n = notification(
            NotificationKind::Confirmation,
            &[
                "byron@example.org",
                "ada.king@example.net",
                "byron@example.org",
            ],
        );
        let (raw, envelope) = wire(&n);
        let parsed = MessageParser::default().parse(&raw).unwrap();

        let expected_id = message_id(NotificationKind::Confirmation, n.booking_id);
        assert_eq!(
            format!("<{}>", parsed.message_id().unwrap()),
            expected_id,
            "the parser strips the angle brackets"
        );
        let to: Vec<&str> = parsed
            .to()
            .unwrap()
            .iter()
            .map(|addr| addr.address().unwrap())
            .collect();
        assert_eq!(to, ["byron@example.org", "ada.king@example.net"]);
        assert_eq!(envelope, ["byron@example.org", "ada.king@example.net"]);
        let from = parsed.from().unwrap().first().unwrap();
        assert_eq!(from.address(), Some("bookings@funeral-manager.local"));
        assert_eq!(from.name(), Some("Funeral Manager"));
        assert_eq!(
            parsed.header_raw("Auto-Submitted").map(str::trim),
            Some("auto-generated")
        );
        assert!(parsed.date().is_some());
    }

    #[test]
    fn subject_and_body_survive_the_wire_in_utf8() {
        for kind in NotificationKind::ALL {
            let n = notification(kind, &["byron@example.org"]);
            let letter = n.letter();
            let (raw, _) = wire(&n);
            let parsed = MessageParser::default().parse(&raw).unwrap();
            assert_eq!(parsed.subject(), Some(letter.subject.as_str()), "{kind}");
            assert!(letter.subject.contains("José Ñúñez"));
            let body = parsed.body_text(0).unwrap();
            assert_eq!(body.replace("\r\n", "\n"), letter.text, "{kind}");
            assert_eq!(parsed.attachment_count(), 0);
            let content_type = parsed.content_type().unwrap();
            assert_eq!(
                (content_type.ctype(), content_type.subtype()),
                ("text", Some("plain"))
            );
            assert_eq!(content_type.attribute("charset"), Some("utf-8"));
        }
    }

    #[test]
    fn a_letter_goes_to_at_most_as_many_addresses_as_a_booking_has_contacts() {
        let ten: Vec<String> = (0..10)
            .map(|i| format!("contact-{i}@example.org"))
            .collect();
        let mut addresses: Vec<&str> = ten.iter().map(String::as_str).collect();
        addresses.push("contact-0@example.org");
        let (_, envelope) = wire(&notification(NotificationKind::Confirmation, &addresses));
        assert_eq!(envelope, ten, "ten distinct contacts, one repeated");
        addresses.push("an-eleventh@example.org");
        let error = compose(
            &notification(NotificationKind::Confirmation, &addresses),
            &from(),
        )
        .unwrap_err();
        assert!(!error.is_transient());
    }

    #[test]
    fn no_recipients_is_permanent() {
        let n = notification(NotificationKind::Failure, &[]);
        let error = compose(&n, &from()).unwrap_err();
        assert!(!error.is_transient());
        assert_eq!(
            error,
            NotifyError::Permanent("the notification has no recipients".to_owned())
        );
    }

    #[test]
    fn a_sender_that_is_not_a_mailbox_is_refused_up_front() {
        let settings = SmtpSettings {
            from: "not a mailbox".to_owned(),
            ..SmtpSettings::default()
        };
        assert!(matches!(
            Mailer::new(&settings),
            Err(NotifyError::Permanent(_))
        ));
        assert!(Mailer::new(&SmtpSettings::default()).is_ok());
    }

    #[test]
    fn addresses_in_server_answers_are_redacted() {
        assert_eq!(
            redact(&"permanent error (550): 5.1.1 <byron@example.org>: Recipient unknown"),
            "permanent error (550): 5.1.1 [address] Recipient unknown"
        );
    }
}
