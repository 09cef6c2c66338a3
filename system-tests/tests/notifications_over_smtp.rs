//! The notifications mailer against a real SMTP server (the aiosmtpd sink) over real sockets,
//! and the sink harness itself: letters are read back from the sink's Maildir.

#![allow(clippy::unwrap_used)] // A test fails loudly on any unexpected error; that is the point.

use std::{collections::BTreeSet, time::Duration};

use domain::values::{BookingId, EmailAddress, Slot};
use notifications::{Mailer, Notification, NotificationKind, message_id};
use system_tests::smtp_sink::SmtpSink;

const WAIT: Duration = Duration::from_secs(10);

fn notification(kind: NotificationKind, recipients: &[&str]) -> Notification {
    Notification {
        kind,
        booking_id: BookingId::new(),
        recipients: recipients
            .iter()
            .map(|address| EmailAddress::parse(address).unwrap())
            .collect(),
        deceased_name: "Ada Lovelace".to_owned(),
        facility_name: Some("St Mary's Chapel".to_owned()),
        slot: Slot::parse("2027-03-02T10:00:00+00:00", "2027-03-02T11:00:00+00:00").unwrap(),
        reason: None,
        statement: None,
    }
}

#[tokio::test]
async fn one_letter_reaches_every_contact_with_its_message_id_subject_and_body() {
    let sink = SmtpSink::start().await.unwrap();
    let mailer = Mailer::new(&sink.settings()).unwrap();
    let n = notification(
        NotificationKind::Confirmation,
        &["byron@example.org", "ada.king@example.net"],
    );

    let sent = mailer.send(&n).await.unwrap();

    assert_eq!(
        sent.message_id,
        message_id(NotificationKind::Confirmation, n.booking_id)
    );
    let mails = sink.wait_for(1, WAIT).await.unwrap();
    assert_eq!(mails.len(), 1, "one mail for all contacts");
    let mail = &mails[0];
    let letter = n.letter();
    assert_eq!(mail.message_id, sent.message_id);
    assert_eq!(mail.to, ["byron@example.org", "ada.king@example.net"]);
    assert_eq!(
        mail.envelope_to,
        ["byron@example.org", "ada.king@example.net"]
    );
    assert_eq!(mail.from, "bookings@funeral-manager.local");
    assert_eq!(mail.subject, letter.subject);
    // SMTP's DATA framing leaves one more line end after the last line.
    assert_eq!(mail.body.trim_end(), letter.text.trim_end());
}

#[tokio::test]
async fn every_kind_arrives_as_its_own_letter_and_a_resend_keeps_its_message_id() {
    let sink = SmtpSink::start().await.unwrap();
    let mailer = Mailer::new(&sink.settings()).unwrap();
    let booking = BookingId::new();
    let mut sent = Vec::new();
    for kind in NotificationKind::ALL {
        let mut n = notification(kind, &["byron@example.org"]);
        n.booking_id = booking;
        // Names are not ASCII: the subject must survive RFC 2047 and the body its encoding.
        n.deceased_name = "Zoë Ó Súilleabháin".to_owned();
        mailer.send(&n).await.unwrap();
        sent.push(n);
    }
    // The saga crashed after the server took the confirmation, and sends it again.
    assert_eq!(sent[0].kind, NotificationKind::Confirmation);
    mailer.send(&sent[0]).await.unwrap();

    let mails = sink.wait_for(5, WAIT).await.unwrap();
    assert_eq!(mails.len(), 5);
    let ids: BTreeSet<&str> = mails.iter().map(|m| m.message_id.as_str()).collect();
    let expected: BTreeSet<String> = NotificationKind::ALL
        .iter()
        .map(|kind| message_id(*kind, booking))
        .collect();
    assert_eq!(
        ids,
        expected.iter().map(String::as_str).collect(),
        "four distinct letters; the resend is recognisable by its Message-ID"
    );
    for letter in sent.iter().map(Notification::letter) {
        let mail = mails
            .iter()
            .find(|mail| mail.subject == letter.subject)
            .unwrap_or_else(|| panic!("no mail with subject {:?}", letter.subject));
        assert_eq!(mail.body.trim_end(), letter.text.trim_end());
    }
}

#[tokio::test]
async fn a_refused_recipient_does_not_keep_the_letter_from_the_others() {
    let sink = SmtpSink::start().await.unwrap();
    let mailer = Mailer::new(&sink.settings()).unwrap();
    // SMTP refuses the whole transaction for one stale address; the mailer then writes to
    // each contact on their own.
    let n = notification(
        NotificationKind::Confirmation,
        &[
            "byron@example.org",
            "reject-me@example.org",
            "ada.king@example.net",
        ],
    );

    let sent = mailer.send(&n).await.unwrap();

    assert_eq!(sent.refused.len(), 1, "{:?}", sent.refused);
    assert!(
        sent.refused[0].starts_with("recipient 2 of 3: ") && sent.refused[0].contains("550"),
        "{:?}",
        sent.refused
    );
    assert!(
        !sent.refused[0].contains("reject-me@"),
        "addresses are redacted: {:?}",
        sent.refused
    );
    let mails = sink.wait_for(2, WAIT).await.unwrap();
    let mut reached: Vec<&str> = mails
        .iter()
        .flat_map(|mail| mail.envelope_to.iter().map(String::as_str))
        .collect();
    reached.sort_unstable();
    assert_eq!(reached, ["ada.king@example.net", "byron@example.org"]);
    for mail in &mails {
        assert_eq!(
            mail.message_id, sent.message_id,
            "one letter, one Message-ID"
        );
        assert_eq!(
            mail.to,
            [
                "byron@example.org",
                "reject-me@example.org",
                "ada.king@example.net"
            ],
            "each copy shows who the letter was written to"
        );
    }
}

#[tokio::test]
async fn every_recipient_refused_is_permanent_and_a_deferred_one_transient() {
    let sink = SmtpSink::start().await.unwrap();
    let mailer = Mailer::new(&sink.settings()).unwrap();

    for recipients in [
        &["reject-me@example.org"][..],
        &["reject-me@example.org", "reject-you@example.org"][..],
    ] {
        let error = mailer
            .send(&notification(NotificationKind::Failure, recipients))
            .await
            .unwrap_err();
        assert!(!error.is_transient(), "{error}");
        assert!(error.to_string().contains("550"), "{error}");
        assert!(
            !error.to_string().contains("@example.org"),
            "addresses are redacted: {error}"
        );
    }

    // A deferred recipient makes the attempt transient. In the second letter the refusal
    // comes first, so the mailer writes to each contact on their own: byron has the letter,
    // and the next attempt will write to him again, with the same Message-ID.
    for recipients in [
        &["defer-me@example.org"][..],
        &[
            "byron@example.org",
            "reject-me@example.org",
            "defer-me@example.org",
        ][..],
    ] {
        let error = mailer
            .send(&notification(NotificationKind::Failure, recipients))
            .await
            .unwrap_err();
        assert!(error.is_transient(), "{error}");
        assert!(error.to_string().contains("451"), "{error}");
    }

    // Only byron's copy of that letter went out; a good letter after them still does.
    mailer
        .send(&notification(
            NotificationKind::Rejection,
            &["byron@example.org"],
        ))
        .await
        .unwrap();
    let mails = sink.wait_for(2, WAIT).await.unwrap();
    assert_eq!(mails.len(), 2, "{mails:?}");
    assert!(
        mails
            .iter()
            .all(|mail| mail.envelope_to == ["byron@example.org"])
    );
    assert_eq!(
        mails
            .iter()
            .filter(|mail| mail.message_id.starts_with("<rejection."))
            .count(),
        1
    );
    assert_eq!(
        mails
            .iter()
            .filter(|mail| mail.message_id.starts_with("<failure."))
            .count(),
        1
    );
}

#[tokio::test]
async fn sinks_side_by_side_keep_their_letters_apart_and_a_dropped_sink_is_transient() {
    let (one, two) = tokio::try_join!(SmtpSink::start(), SmtpSink::start()).unwrap();
    assert_ne!(one.port(), two.port());
    let to_one = notification(NotificationKind::Confirmation, &["byron@example.org"]);
    let to_two = notification(NotificationKind::Cancellation, &["byron@example.org"]);
    Mailer::new(&one.settings())
        .unwrap()
        .send(&to_one)
        .await
        .unwrap();
    Mailer::new(&two.settings())
        .unwrap()
        .send(&to_two)
        .await
        .unwrap();

    let in_one = one.wait_for(1, WAIT).await.unwrap();
    let in_two = two.wait_for(1, WAIT).await.unwrap();
    assert_eq!(in_one.len(), 1);
    assert_eq!(in_two.len(), 1);
    assert_eq!(
        in_one[0].message_id,
        message_id(to_one.kind, to_one.booking_id)
    );
    assert_eq!(
        in_two[0].message_id,
        message_id(to_two.kind, to_two.booking_id)
    );

    let waited = one.wait_for(2, Duration::from_millis(300)).await;
    let error = waited.unwrap_err().to_string();
    assert!(error.contains("1 of 2 letters"), "{error}");

    let settings = two.settings();
    let maildir = two.maildir().to_owned();
    drop(two);
    assert!(!maildir.exists(), "the Maildir is deleted with the sink");
    // SIGKILL was sent: the sink runs no more code, so nothing can accept the letter.
    let error = Mailer::new(&settings)
        .unwrap()
        .send(&to_two)
        .await
        .unwrap_err();
    assert!(error.is_transient(), "{error}");
}
