//! The words: a subject and a plain-text body for each kind of notification. Pure, so every
//! letter can be read in a unit test.
//!
//! The readers have just lost someone. The letters say plainly what happened, what it means for
//! them (is the service on, was money taken, is it coming back), and who to turn to; they never
//! blame the family, and they carry the booking reference for whoever helps them.
//!
//! The family's own words (the deceased's name, a cancellation's reason) and the facility's name
//! are quoted only through [`quoted`]: one line, no control characters, at most as long as the
//! API lets them be. The API refuses such text already; the letter does not rely on it, because
//! the log also holds what older releases accepted.

use std::fmt::Write as _;

use chrono::{DateTime, FixedOffset};
use domain::pricing::Statement;
use domain::values::{Currency, Money, Slot};

use crate::notification::{Notification, NotificationKind};

/// A rendered letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Letter {
    pub subject: String,
    /// Plain text, `\n` line ends (the mailer sends it as UTF-8 `text/plain`).
    pub text: String,
}

impl Notification {
    /// The letter for this notification.
    pub fn letter(&self) -> Letter {
        let name = quoted(&self.deceased_name, NAME_MAX_CHARS);
        let reason = self
            .reason
            .as_deref()
            .map(|reason| quoted(reason, REASON_MAX_CHARS))
            .filter(|reason| !reason.is_empty());
        let (subject, opening, closing) = match self.kind {
            NotificationKind::Confirmation => (
                format!("Confirmed: the service for {name}"),
                format!(
                    "We are sorry for your loss. The service for {name} is confirmed, and \
                     the time below is reserved for you."
                ),
                "Your payment has been received. There is nothing more you need to do now. If \
                 you have any questions, or if anything needs to change, please contact the \
                 funeral home; we are here to help."
                    .to_owned(),
            ),
            NotificationKind::Rejection => (
                format!("We could not book the service for {name}"),
                format!(
                    "We are very sorry: we could not book the service for {name} at the time \
                     you asked for."
                ),
                "No payment has been taken. Please contact the funeral home and we will gladly \
                 help you find another time."
                    .to_owned(),
            ),
            NotificationKind::Failure => (
                format!("We could not complete the booking for {name}"),
                format!(
                    "We are very sorry: we could not complete the booking of the service for \
                     {name}, because the payment did not go through."
                ),
                "The time that was held for you has been released, and no money has been \
                 taken. Please contact the funeral home and we will help you complete the \
                 booking."
                    .to_owned(),
            ),
            NotificationKind::Cancellation => (
                format!("Cancelled: the service for {name}"),
                format!("The service for {name} has been cancelled."),
                "If you made a payment for this service, it will be refunded in full. If this \
                 cancellation is a mistake, or if you would like to arrange another time, please \
                 contact the funeral home."
                    .to_owned(),
            ),
        };

        let mut text = String::from("Dear family,\n\n");
        text.push_str(&opening);
        text.push_str("\n\n");
        if let Some(facility) = self
            .facility_name
            .as_deref()
            .map(|facility| quoted(facility, NAME_MAX_CHARS))
        {
            let _ = writeln!(text, "  Where: {facility}");
        }
        let _ = writeln!(text, "  When:  {}", when(&self.slot));
        text.push('\n');
        if let (NotificationKind::Confirmation, Some(statement)) = (self.kind, &self.statement) {
            write_statement(&mut text, statement);
        }
        if let Some(reason) = reason {
            let _ = writeln!(text, "Reason: {reason}\n");
        }
        text.push_str(&closing);
        text.push_str("\n\n");
        text.push_str(match self.kind {
            NotificationKind::Confirmation => "With our sincere condolences,\n",
            _ => "With our sympathy,\n",
        });
        text.push_str("The bookings team\n\n");
        let _ = writeln!(text, "Booking reference: {}", self.booking_id);
        Letter { subject, text }
    }
}

/// The itemised statement, one line per item and adjustment, then the total paid: what the
/// family was charged and why (docs/pricing.md). Descriptions and reasons are the home's words,
/// quoted like any text the letter did not write.
fn write_statement(text: &mut String, statement: &Statement) {
    let amount = |minor: i64| signed_amount(minor, statement.currency);
    text.push_str("Your statement:\n");
    for line in &statement.lines {
        let description = quoted(&line.description, NAME_MAX_CHARS);
        match line.minutes {
            Some(minutes) => {
                let _ = writeln!(
                    text,
                    "  {description}, {minutes} minutes at {} an hour: {}",
                    amount(line.unit_amount_minor),
                    amount(line.amount_minor)
                );
            }
            None => {
                let _ = writeln!(text, "  {description}: {}", amount(line.amount_minor));
            }
        }
    }
    for adjustment in &statement.adjustments {
        let reason = quoted(&adjustment.reason, REASON_MAX_CHARS);
        let _ = writeln!(text, "  {reason}: {}", amount(adjustment.amount_minor));
    }
    let _ = writeln!(text, "  Total paid: {}\n", amount(statement.total_minor));
}

/// `minor` units of `currency` as the letter shows money: `1250.00 GBP`, `-250.00 GBP`.
fn signed_amount(minor: i64, currency: Currency) -> String {
    let sign = if minor < 0 { "-" } else { "" };
    format!(
        "{sign}{}",
        Money::saturating(minor.saturating_abs(), currency)
    )
}

/// The most characters of a name quoted (the API's limit for names).
const NAME_MAX_CHARS: usize = 200;
/// The most characters of a reason quoted (the API's limit for reasons).
const REASON_MAX_CHARS: usize = 500;

/// `text` as a letter may quote it: every run of whitespace and control characters (line
/// breaks, tabs, escapes) becomes one space, so the text cannot start a header or a line of its
/// own; trimmed; cut to `max_chars` characters, with `…` where it was cut.
fn quoted(text: &str, max_chars: usize) -> String {
    let mut line = String::with_capacity(text.len().min(max_chars * 4));
    for word in text
        .split(|c: char| c.is_whitespace() || c.is_control())
        .filter(|word| !word.is_empty())
    {
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if line.chars().count() > max_chars {
        line = line.chars().take(max_chars - 1).collect();
        line.push('…');
    }
    line
}

/// "Tuesday 2 March 2027, from 10:00 to 11:00 (UTC)", in the offset the booking was made with
/// (the family's own, usually); both dates when the slot crosses midnight.
fn when(slot: &Slot) -> String {
    let start = slot.start();
    let end = slot.end().with_timezone(start.offset());
    let zone = zone(&start);
    if start.date_naive() == end.date_naive() {
        format!(
            "{}, from {} to {} ({zone})",
            start.format("%A %-d %B %Y"),
            start.format("%H:%M"),
            end.format("%H:%M"),
        )
    } else {
        format!(
            "from {} to {} ({zone})",
            start.format("%A %-d %B %Y, %H:%M"),
            end.format("%A %-d %B %Y, %H:%M"),
        )
    }
}

/// `UTC` or `UTC+01:00`. Both ends of a slot carry the offset the caller typed; the start's is
/// the one shown, with the end converted to it so the two times read on one clock.
fn zone(start: &DateTime<FixedOffset>) -> String {
    if start.offset().local_minus_utc() == 0 {
        "UTC".to_owned()
    } else {
        format!("UTC{}", start.format("%:z"))
    }
}

#[cfg(test)]
mod tests {
    use domain::values::{BookingId, EmailAddress};

    use super::*;

    fn notification(kind: NotificationKind) -> Notification {
        Notification {
            kind,
            booking_id: "0b7c3f9e-5d7a-4c1e-9a55-2f7f0a3c9d11".parse().unwrap(),
            recipients: vec![EmailAddress::parse("byron@example.org").unwrap()],
            deceased_name: "Ada Lovelace".to_owned(),
            facility_name: Some("St Mary's Chapel".to_owned()),
            slot: Slot::parse("2027-03-02T10:00:00+00:00", "2027-03-02T11:00:00+00:00").unwrap(),
            reason: None,
            statement: None,
        }
    }

    #[test]
    fn a_confirmation_lists_the_statement_and_only_a_confirmation_does() {
        let mut statement =
            domain::pricing::Statement::agreed(Money::new(125_000, Currency::GBP).unwrap());
        statement.lines[0].description = "Burial service".to_owned();
        statement.lines.push(domain::pricing::StatementLine {
            code: "chapel.hour".to_owned(),
            description: "Chapel, per hour".to_owned(),
            unit_amount_minor: 30_000,
            minutes: Some(90),
            amount_minor: 45_000,
        });
        statement.adjustments.push(domain::pricing::Adjustment {
            amount_minor: -20_050,
            // A reason stored by a release that let a line break through is still one line.
            reason: "Hardship\ndiscount".to_owned(),
        });
        statement.total_minor = 149_950;
        let mut confirmation = notification(NotificationKind::Confirmation);
        confirmation.statement = Some(statement.clone());
        let text = confirmation.letter().text;
        assert!(
            text.contains(
                "Your statement:\n  \
                 Burial service: 1250.00 GBP\n  \
                 Chapel, per hour, 90 minutes at 300.00 GBP an hour: 450.00 GBP\n  \
                 Hardship discount: -200.50 GBP\n  \
                 Total paid: 1499.50 GBP\n\n"
            ),
            "{text}"
        );
        let mut cancellation = notification(NotificationKind::Cancellation);
        cancellation.statement = Some(statement);
        assert!(!cancellation.letter().text.contains("statement"));
    }

    #[test]
    fn a_confirmation_says_where_when_and_that_it_is_paid() {
        let letter = notification(NotificationKind::Confirmation).letter();
        assert_eq!(letter.subject, "Confirmed: the service for Ada Lovelace");
        assert_eq!(
            letter.text,
            "Dear family,\n\n\
             We are sorry for your loss. The service for Ada Lovelace is confirmed, and the time \
             below is reserved for you.\n\n  \
             Where: St Mary's Chapel\n  \
             When:  Tuesday 2 March 2027, from 10:00 to 11:00 (UTC)\n\n\
             Your payment has been received. There is nothing more you need to do now. If you \
             have any questions, or if anything needs to change, please contact the funeral \
             home; we are here to help.\n\n\
             With our sincere condolences,\nThe bookings team\n\n\
             Booking reference: 0b7c3f9e-5d7a-4c1e-9a55-2f7f0a3c9d11\n"
        );
    }

    #[test]
    fn a_rejection_says_no_money_was_taken_and_gives_the_reason() {
        let mut rejection = notification(NotificationKind::Rejection);
        rejection.reason = Some("  The chapel is already booked at that time. ".to_owned());
        let letter = rejection.letter();
        assert_eq!(
            letter.subject,
            "We could not book the service for Ada Lovelace"
        );
        assert!(
            letter
                .text
                .contains("\nReason: The chapel is already booked at that time.\n\n"),
            "{}",
            letter.text
        );
        assert!(letter.text.contains("No payment has been taken."));
        assert!(letter.text.contains("another time"));
    }

    #[test]
    fn a_failure_says_the_slot_was_released_and_nothing_kept() {
        let mut failure = notification(NotificationKind::Failure);
        failure.reason = Some("The card was declined.".to_owned());
        let letter = failure.letter();
        assert_eq!(
            letter.subject,
            "We could not complete the booking for Ada Lovelace"
        );
        assert!(letter.text.contains("the payment did not go through"));
        assert!(
            letter
                .text
                .contains("has been released, and no money has been taken")
        );
        assert!(letter.text.contains("Reason: The card was declined.\n"));
    }

    #[test]
    fn a_cancellation_promises_a_refund_of_any_payment() {
        let letter = notification(NotificationKind::Cancellation).letter();
        assert_eq!(letter.subject, "Cancelled: the service for Ada Lovelace");
        assert!(letter.text.contains("has been cancelled."));
        assert!(letter.text.contains("it will be refunded in full"));
    }

    #[test]
    fn every_kind_has_its_own_subject_and_the_booking_reference() {
        let booking = BookingId::new();
        let mut subjects = std::collections::HashSet::new();
        for kind in NotificationKind::ALL {
            let mut n = notification(kind);
            n.booking_id = booking;
            let letter = n.letter();
            assert!(subjects.insert(letter.subject.clone()), "{kind}");
            assert!(letter.subject.contains("Ada Lovelace"));
            assert!(letter.text.starts_with("Dear family,\n\n"));
            assert!(
                letter
                    .text
                    .ends_with(&format!("Booking reference: {booking}\n"))
            );
        }
    }

    #[test]
    fn an_unknown_facility_and_an_empty_reason_are_left_out() {
        let mut n = notification(NotificationKind::Failure);
        n.facility_name = None;
        n.reason = Some("   ".to_owned());
        let letter = n.letter();
        assert!(!letter.text.contains("Where:"), "{}", letter.text);
        assert!(!letter.text.contains("Reason:"), "{}", letter.text);
        assert!(letter.text.contains("  When:  Tuesday 2 March 2027"));
    }

    #[test]
    fn family_text_is_quoted_on_one_line_without_control_characters() {
        let mut n = notification(NotificationKind::Cancellation);
        n.deceased_name = "Ada\r\nBcc: everyone@example.org\u{1b}[2J Lovelace".to_owned();
        n.facility_name = Some("St Mary's\nChapel".to_owned());
        n.reason =
            Some("We are sorry.\n\nDear family, please pay at evil.example\t now".to_owned());
        let letter = n.letter();
        assert_eq!(
            letter.subject,
            "Cancelled: the service for Ada Bcc: everyone@example.org [2J Lovelace"
        );
        assert!(!letter.subject.chars().any(char::is_control));
        assert!(
            letter.text.contains("  Where: St Mary's Chapel\n"),
            "{}",
            letter.text
        );
        assert!(
            letter
                .text
                .contains("\nReason: We are sorry. Dear family, please pay at evil.example now\n"),
            "{}",
            letter.text
        );
        let lines_without_family_text = notification(NotificationKind::Cancellation)
            .letter()
            .text
            .lines()
            .count();
        let mut reasoned = notification(NotificationKind::Cancellation);
        reasoned.reason = Some("one reason".to_owned());
        assert_eq!(
            letter.text.lines().count(),
            reasoned.letter().text.lines().count(),
            "the family's text adds no lines of its own"
        );
        assert!(letter.text.lines().count() > lines_without_family_text);
    }

    #[test]
    fn family_text_is_cut_to_the_api_s_limits() {
        let mut n = notification(NotificationKind::Cancellation);
        n.deceased_name = "A".repeat(5_000);
        n.reason = Some("b".repeat(5_000));
        let letter = n.letter();
        let name = format!("{}…", "A".repeat(199));
        assert_eq!(letter.subject, format!("Cancelled: the service for {name}"));
        assert!(
            letter
                .text
                .contains(&format!("\nReason: {}…\n", "b".repeat(499)))
        );
    }

    #[test]
    fn times_are_shown_in_the_offset_the_booking_was_made_with() {
        let mut n = notification(NotificationKind::Confirmation);
        n.slot = Slot::parse("2027-07-06T14:30:00+01:00", "2027-07-06T16:00:00+01:00").unwrap();
        assert!(
            n.letter()
                .text
                .contains("When:  Tuesday 6 July 2027, from 14:30 to 16:00 (UTC+01:00)\n")
        );
        n.slot = Slot::parse("2027-07-06T22:00:00-05:00", "2027-07-07T01:00:00-05:00").unwrap();
        assert!(n.letter().text.contains(
            "When:  from Tuesday 6 July 2027, 22:00 to Wednesday 7 July 2027, 01:00 (UTC-05:00)\n"
        ));
    }
}
