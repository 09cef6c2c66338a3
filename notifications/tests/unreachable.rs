//! A server that is not there, or that never answers, is a transient failure: the saga tries
//! again later. (Sending to the real SMTP sink is tested in `system-tests`, beside its harness.)

#![allow(clippy::unwrap_used)] // A test fails loudly on any unexpected error; that is the point.

use std::time::{Duration, Instant};

use domain::values::{BookingId, EmailAddress, Slot};
use notifications::{Mailer, Notification, NotificationKind, NotifyError, SmtpSettings};
use tokio::net::TcpListener;

fn notification() -> Notification {
    Notification {
        kind: NotificationKind::Confirmation,
        booking_id: BookingId::new(),
        recipients: vec![EmailAddress::parse("byron@example.org").unwrap()],
        deceased_name: "Ada Lovelace".to_owned(),
        facility_name: None,
        slot: Slot::parse("2027-03-02T10:00:00+00:00", "2027-03-02T11:00:00+00:00").unwrap(),
        reason: None,
        statement: None,
    }
}

#[tokio::test]
async fn a_closed_port_is_transient() {
    // A port that was just free: bound by us, then released.
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap().port()
    };
    let mailer = Mailer::new(&SmtpSettings::local(port)).unwrap();
    let error = mailer.send(&notification()).await.unwrap_err();
    assert!(error.is_transient(), "{error}");
    assert!(
        matches!(&error, NotifyError::Transient(text) if text.contains("could not be reached")),
        "{error}"
    );
}

#[tokio::test]
async fn a_server_that_never_greets_is_transient_after_the_timeout() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    // Accepts connections and holds them open without a word.
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let (socket, _) = listener.accept().await.unwrap();
            held.push(socket);
        }
    });
    let settings = SmtpSettings {
        timeout: Duration::from_millis(300),
        ..SmtpSettings::local(port)
    };
    let mailer = Mailer::new(&settings).unwrap();
    let started = Instant::now();
    let error = mailer.send(&notification()).await.unwrap_err();
    let took = started.elapsed();
    silent.abort();
    assert!(error.is_transient(), "{error}");
    assert!(
        took >= Duration::from_millis(300),
        "gave up early: {took:?}"
    );
    assert!(
        took < Duration::from_secs(5),
        "one attempt is bounded: {took:?}"
    );
}
