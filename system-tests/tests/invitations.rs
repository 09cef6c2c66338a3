//! Families by invitation end to end (docs/identity.md): a director (a real Keycloak token)
//! invites a booking's contacts, the letters go through a real SMTP server (the sink) to those
//! contacts only, a family exchanges its code for a session, and that session opens exactly its
//! booking at the query-api and cancels it at the command-service, and nothing else; used,
//! expired and revoked codes fail alike; a forged session is 401; revocation stops a session's
//! writes and refreshes at once.

#![allow(clippy::unwrap_used)] // A test fails loudly on any unexpected error; that is the point.

use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use ring::{
    rand::SystemRandom,
    signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair},
};
use schemas::Role;
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use system_tests::{
    TestStack, bodies,
    smtp_sink::{ReceivedMail, SmtpSink},
};

const CONTACT_A0: &str = "ada.first@invite.example";
const CONTACT_A1: &str = "byron.second@invite.example";
const CONTACT_B0: &str = "charles.third@invite.example";

async fn send(
    request: reqwest::RequestBuilder,
    token: Option<&str>,
    body: Option<&Value>,
) -> (StatusCode, Value) {
    let request = match token {
        Some(token) => request.bearer_auth(token),
        None => request,
    };
    let request = match body {
        Some(body) => request.json(body),
        None => request,
    };
    let response = request.send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn post(url: String, token: Option<&str>, body: Option<&Value>) -> (StatusCode, Value) {
    send(reqwest::Client::new().post(url), token, body).await
}

async fn get(url: String, token: &str) -> (StatusCode, Value) {
    send(reqwest::Client::new().get(url), Some(token), None).await
}

/// A booking with `contacts` (addresses), 14 days ahead.
fn booking(facility_id: &str, contacts: &[&str], days_ahead: i64) -> Value {
    let mut body = bodies::booking(facility_id, days_ahead);
    body["family_contacts"] = Value::Array(
        contacts
            .iter()
            .enumerate()
            .map(|(index, email)| {
                json!({"name": format!("Contact {index}"), "relationship": "child", "email": email})
            })
            .collect(),
    );
    body
}

/// The code in an invitation letter's body.
fn code_in(body: &str) -> String {
    body.split("enter this code: ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .to_owned()
}

/// A session token signed by a key that is not the command-service's.
fn forged_session(kid: &str, booking_id: &str) -> String {
    let pkcs8 =
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
            .unwrap();
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(kid.to_owned());
    let now = chrono::Utc::now().timestamp();
    let claims = json!({
        "iss": "funeral-manager/family-sessions", "aud": "funeral-manager-family",
        "sub": uuid::Uuid::new_v4().to_string(), "bookings": [booking_id],
        "iat": now, "nbf": now, "exp": now + 600,
    });
    jsonwebtoken::encode(&header, &claims, &EncodingKey::from_ec_der(pkcs8.as_ref())).unwrap()
}

/// A stack whose command-service mails through a sink, a director's token, a facility and two
/// bookings: A with two contacts, B with one.
struct Fixture {
    sink: SmtpSink,
    stack: TestStack,
    director: String,
    facility_id: String,
    a: String,
    b: String,
}

impl Fixture {
    async fn start() -> Self {
        let sink = SmtpSink::start().await.unwrap();
        let smtp = sink.settings();
        let kafka = system_tests::fresh_kafka().await.unwrap();
        let stack = TestStack::spawn_configured(kafka, |settings| {
            settings.smtp = smtp;
            // The per-address limit has its own test; here one address exchanges many codes.
            // The per-code limit stays at its default of 5.
            settings.invitations.exchanges_per_address_per_minute = 0;
        })
        .await
        .unwrap();
        let director = test_support::person_token("director-a").await.unwrap();
        let (status, facility) = post(
            format!("{}/facilities", stack.command_url),
            Some(&director),
            Some(&bodies::facility()),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{facility}");
        let facility_id = facility["facility_id"].as_str().unwrap().to_owned();
        let mut bookings = Vec::new();
        for (contacts, days) in [(&[CONTACT_A0, CONTACT_A1][..], 14), (&[CONTACT_B0][..], 15)] {
            let (status, written) = post(
                format!("{}/bookings", stack.command_url),
                Some(&director),
                Some(&booking(&facility_id, contacts, days)),
            )
            .await;
            assert_eq!(status, StatusCode::ACCEPTED, "{written}");
            bookings.push(written["booking_id"].as_str().unwrap().to_owned());
        }
        Self {
            sink,
            stack,
            director,
            facility_id,
            a: bookings[0].clone(),
            b: bookings[1].clone(),
        }
    }

    fn command(&self, path: &str) -> String {
        format!("{}{path}", self.stack.command_url)
    }

    fn query(&self, path: &str) -> String {
        format!("{}{path}", self.stack.query_url)
    }

    /// Invites `body`'s contacts of `booking`; each invitation's id and the letter it sent.
    async fn invite(&self, booking: &str, body: Option<&Value>) -> Vec<(String, ReceivedMail)> {
        let (status, made) = post(
            self.command(&format!("/bookings/{booking}/invitations")),
            Some(&self.director),
            body,
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{made}");
        assert!(
            !made.to_string().contains("code"),
            "no code in the answer: {made}"
        );
        let mut invited = Vec::new();
        for invitation in made["invitations"].as_array().unwrap() {
            assert_eq!(invitation["sent"], true, "{made}");
            let id = invitation["invitation_id"].as_str().unwrap().to_owned();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
            let letter = loop {
                let found = self
                    .sink
                    .messages()
                    .into_iter()
                    .find(|m| m.message_id.contains(&id));
                if let Some(letter) = found {
                    break letter;
                }
                assert!(tokio::time::Instant::now() < deadline, "no letter for {id}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            invited.push((id, letter));
        }
        invited
    }

    /// Exchanges `code`: the status and the answer.
    async fn exchange(&self, code: &str) -> (StatusCode, Value) {
        post(
            self.command("/family-sessions"),
            None,
            Some(&json!({"code": code})),
        )
        .await
    }

    /// A session for a fresh invitation of `booking`'s first contact.
    async fn session(&self, booking: &str) -> (String, String) {
        let invited = self.invite(booking, Some(&json!({"contacts": [0]}))).await;
        let (id, letter) = &invited[0];
        let (status, session) = self.exchange(&code_in(&letter.body)).await;
        assert_eq!(status, StatusCode::CREATED, "{session}");
        assert_eq!(session["booking_id"], booking);
        (
            id.clone(),
            session["session_token"].as_str().unwrap().to_owned(),
        )
    }
}

#[tokio::test]
async fn a_director_invites_the_bookings_contacts_and_no_one_else() {
    let fx = Fixture::start().await;
    // A position the booking does not have is refused.
    let (status, refused) = post(
        fx.command(&format!("/bookings/{}/invitations", fx.a)),
        Some(&fx.director),
        Some(&json!({"contacts": [2]})),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    // Only the chosen contact.
    let chosen = fx.invite(&fx.a, Some(&json!({"contacts": [1]}))).await;
    assert_eq!(chosen.len(), 1);
    assert_eq!(chosen[0].1.envelope_to, [CONTACT_A1]);
    let code = code_in(&chosen[0].1.body);
    assert!(code.len() >= 43, "256 bits in base64url: {code}");
    // Every contact of A: both, never B's.
    let all = fx.invite(&fx.a, None).await;
    let mut recipients: Vec<String> = all
        .iter()
        .flat_map(|(_, letter)| letter.envelope_to.clone())
        .collect();
    recipients.sort();
    assert_eq!(recipients, [CONTACT_A0, CONTACT_A1]);
    for (_, letter) in &all {
        assert_eq!(letter.to, letter.envelope_to, "one recipient per letter");
    }
    // A family's account token may not invite.
    let family = fx.stack.token(Role::Family, "family-demo").await;
    let (status, _) = post(
        fx.command(&format!("/bookings/{}/invitations", fx.a)),
        Some(&family),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // Nothing went to anyone but A's contacts.
    let sent: Vec<String> = fx
        .sink
        .messages()
        .into_iter()
        .flat_map(|m| m.envelope_to)
        .collect();
    assert_eq!(sent.len(), 3);
    assert!(
        sent.iter()
            .all(|to| [CONTACT_A0, CONTACT_A1].contains(&to.as_str())),
        "{sent:?}"
    );
}

#[tokio::test]
async fn a_family_session_opens_and_cancels_exactly_its_booking_and_nothing_else() {
    let fx = Fixture::start().await;
    let (a, b) = (fx.a.clone(), fx.b.clone());
    let (_, token) = fx.session(&a).await;

    // The session opens its booking (once projected) and no other.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let opened = loop {
        let (status, body) = get(fx.query(&format!("/bookings/{a}")), &token).await;
        if status == StatusCode::OK || tokio::time::Instant::now() > deadline {
            break (status, body);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(opened.0, StatusCode::OK, "{}", opened.1);
    assert_eq!(opened.1["booking_id"], a.as_str());
    let (status, _) = get(fx.query(&format!("/bookings/{b}")), &token).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "another booking is 404");
    let (status, _) = get(fx.query("/bookings"), &token).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "lists are staff's");
    let (status, _) = get(fx.query("/facilities"), &token).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // It cannot book, invite, register a facility, export, or cancel another booking.
    let (status, _) = post(
        fx.command("/bookings"),
        Some(&token),
        Some(&booking(&fx.facility_id, &[CONTACT_A0], 16)),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "a session cannot book");
    let (status, _) = post(
        fx.command(&format!("/bookings/{a}/invitations")),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "a session cannot invite");
    let (status, _) = post(
        fx.command("/facilities"),
        Some(&token),
        Some(&bodies::facility()),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = get(fx.command(&format!("/bookings/{a}/personal-data")), &token).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "the export is staff's");
    let (status, _) = post(
        fx.command(&format!("/bookings/{b}/cancel")),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "another booking's cancel is 404"
    );

    // A refresh gives a new session that works too; a staff token cannot refresh.
    let (status, refreshed) =
        post(fx.command("/family-sessions/refresh"), Some(&token), None).await;
    assert_eq!(status, StatusCode::CREATED, "{refreshed}");
    let renewed = refreshed["session_token"].as_str().unwrap().to_owned();
    let (status, _) = get(fx.query(&format!("/bookings/{a}")), &renewed).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = post(
        fx.command("/family-sessions/refresh"),
        Some(&fx.director),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // The session cancels its booking; the read model says a family did.
    let (status, cancelled) = post(
        fx.command(&format!("/bookings/{a}/cancel")),
        Some(&renewed),
        Some(&json!({"reason": "we chose another day"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{cancelled}");
    let read: Value = reqwest::Client::new()
        .get(fx.query(&format!("/bookings/{a}")))
        .bearer_auth(&fx.director)
        .header(
            "consistency-token",
            cancelled["consistency_token"].as_str().unwrap(),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(read["status"], "cancelled", "{read}");
    assert_eq!(read["status_changed_by"], "family", "{read}");
}

#[tokio::test]
async fn used_expired_revoked_guessed_and_forged_fail() {
    let fx = Fixture::start().await;
    let (a, b) = (fx.a.clone(), fx.b.clone());

    // A guess, then a used code: the same 401.
    let (status, guessed) = fx
        .exchange("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        guessed["type"],
        "urn:funeral-manager:problem:invitation-invalid"
    );
    let invited = fx.invite(&a, Some(&json!({"contacts": [0]}))).await;
    let code = code_in(&invited[0].1.body);
    let (status, _) = fx.exchange(&code).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, used) = fx.exchange(&code).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(used, guessed, "a used code and a guess answer alike");

    // An expired code.
    let invited = fx.invite(&b, None).await;
    let keys = sqlx::PgPool::connect(test_support::key_database().url.expose_secret())
        .await
        .unwrap();
    let id: uuid::Uuid = invited[0].0.parse().unwrap();
    sqlx::query(
        "UPDATE invitations.invitations SET expires_at = now() - interval '1 minute' \
         WHERE invitation_id = $1",
    )
    .bind(id)
    .execute(&keys)
    .await
    .unwrap();
    let (status, expired) = fx.exchange(&code_in(&invited[0].1.body)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(expired, guessed, "an expired code and a guess answer alike");

    // Revocation: the code no longer exchanges; a session of it can no longer cancel or refresh.
    let (exchanged_id, session) = fx.session(&b).await;
    let unexchanged = fx.invite(&b, None).await;
    for id in [&exchanged_id, &unexchanged[0].0] {
        let (status, revoked) = post(
            fx.command(&format!("/bookings/{b}/invitations/{id}/revoke")),
            Some(&fx.director),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{revoked}");
    }
    let (status, other) = post(
        fx.command(&format!("/bookings/{a}/invitations/{exchanged_id}/revoke")),
        Some(&fx.director),
        None,
    )
    .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "not an invitation of A: {other}"
    );
    let (status, revoked) = fx.exchange(&code_in(&unexchanged[0].1.body)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(revoked, guessed, "a revoked code and a guess answer alike");
    let (status, _) = post(
        fx.command(&format!("/bookings/{b}/cancel")),
        Some(&session),
        None,
    )
    .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "a revoked invitation's session cannot cancel"
    );
    let (status, _) = post(fx.command("/family-sessions/refresh"), Some(&session), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "nor refresh");

    // Forged sessions: a key that is not the command-service's, under its kid or another.
    let (_, jwks) = get(fx.command("/family-sessions/jwks.json"), &fx.director).await;
    let kid = jwks["keys"][0]["kid"].as_str().unwrap().to_owned();
    assert!(
        !jwks.to_string().contains("\"d\""),
        "no private part: {jwks}"
    );
    for forged in [
        forged_session(&kid, &a),
        forged_session("family-forged", &a),
    ] {
        let (status, _) = get(fx.query(&format!("/bookings/{a}")), &forged).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let (status, _) = post(
            fx.command(&format!("/bookings/{a}/cancel")),
            Some(&forged),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }

    // Six tries of one code within a minute: the sixth is refused for its rate.
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(fx.exchange("the-same-guess").await.0);
    }
    assert_eq!(statuses[..5], [StatusCode::UNAUTHORIZED; 5]);
    assert_eq!(statuses[5], StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn exchanges_from_one_address_are_limited() {
    let stack =
        TestStack::spawn_configured(system_tests::fresh_kafka().await.unwrap(), |settings| {
            settings.invitations.exchanges_per_address_per_minute = 3;
        })
        .await
        .unwrap();
    let mut statuses = Vec::new();
    for attempt in 0..4 {
        // A different code each time: only the address is the same.
        let (status, _) = post(
            format!("{}/family-sessions", stack.command_url),
            None,
            Some(&json!({"code": format!("guess-{attempt}")})),
        )
        .await;
        statuses.push(status);
    }
    assert_eq!(statuses[..3], [StatusCode::UNAUTHORIZED; 3]);
    assert_eq!(statuses[3], StatusCode::TOO_MANY_REQUESTS);
}
