//! The query-api's read endpoints on the real broker and PostgreSQL: the facility calendar with
//! free windows, booking lists with filters, cursor pages and family isolation, payments and the
//! saga history on a booking, and 422 problems naming the parameter.

#![allow(clippy::unwrap_used)] // A test fails loudly on any unexpected error; that is the point.
#![allow(clippy::too_many_lines)] // Each test tells one story end to end.

mod read_side_support;

use chrono::{Duration, NaiveTime, TimeZone, Utc};
use domain::{
    facility::FacilityEvent,
    payment::PaymentEvent,
    values::{BookingId, Currency, Money, PaymentId, Slot},
};
use event_log::EventProducer;
use read_side_support::append;
use reqwest::StatusCode;
use schemas::{AggregateType, Role};
use serde_json::Value;
use system_tests::{TestStack, bodies};
use uuid::Uuid;

async fn get(
    stack: &TestStack,
    token: &str,
    path: &str,
    consistency: Option<&str>,
) -> (StatusCode, Value) {
    let mut request = stack
        .http
        .get(format!("{}{path}", stack.query_url))
        .bearer_auth(token);
    if let Some(consistency) = consistency {
        request = request.header("consistency-token", consistency);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn register_facility(stack: &TestStack, director: &str) -> (String, String) {
    let created: Value = stack
        .http
        .post(format!("{}/facilities", stack.command_url))
        .bearer_auth(director)
        .json(&bodies::facility())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    (
        created["facility_id"].as_str().unwrap().to_owned(),
        created["consistency_token"].as_str().unwrap().to_owned(),
    )
}

async fn request_booking(
    stack: &TestStack,
    token: &str,
    facility_id: &str,
    days: i64,
) -> (String, String) {
    let response = stack
        .http
        .post(format!("{}/bookings", stack.command_url))
        .bearer_auth(token)
        .json(&bodies::booking(facility_id, days))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let accepted: Value = response.json().await.unwrap();
    (
        accepted["booking_id"].as_str().unwrap().to_owned(),
        accepted["consistency_token"].as_str().unwrap().to_owned(),
    )
}

fn fields(problem: &Value) -> Vec<(String, String)> {
    problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["field"].as_str().unwrap().to_owned(),
                e["rule"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn the_calendar_shows_held_slots_and_the_free_windows_around_them() {
    let stack = TestStack::spawn().await.expect("stack starts");
    let director = stack.token(Role::Director, "director-1").await;
    let family = stack.token(Role::Family, "family-1").await;
    let producer = EventProducer::new(&stack.kafka).unwrap();
    let (facility_id, _) = register_facility(&stack, &director).await;
    let facility_uuid: Uuid = facility_id.parse().unwrap();

    // A day three weeks ahead, 10:00-11:00 London time; the chapel opens 08:00-20:00 with a
    // 30-minute turnaround.
    let london = chrono_tz::Europe::London;
    let day = (Utc::now() + Duration::days(21)).date_naive();
    let local = |h: u32, m: u32| {
        london
            .from_local_datetime(&day.and_time(NaiveTime::from_hms_opt(h, m, 0).unwrap()))
            .single()
            .unwrap()
            .with_timezone(&Utc)
    };
    let booking = BookingId::new();
    let slot = Slot::parse(&local(10, 0).to_rfc3339(), &local(11, 0).to_rfc3339()).unwrap();
    let token = append(
        &producer,
        AggregateType::Facility,
        facility_uuid,
        2,
        &FacilityEvent::SlotReserved {
            booking_id: booking,
            slot,
        },
    )
    .await;
    let from = local(0, 0).to_rfc3339();
    let to = (local(0, 0) + Duration::days(1)).to_rfc3339();
    let path = format!(
        "/facilities/{facility_id}/calendar?from={}&to={}",
        urlencode(&from),
        urlencode(&to)
    );
    let (status, calendar) = get(&stack, &family, &path, Some(&token)).await;
    assert_eq!(status, StatusCode::OK, "{calendar}");
    assert_eq!(calendar["version"], 2);
    let etag = {
        let response = stack
            .http
            .get(format!("{}{path}", stack.query_url))
            .bearer_auth(&family)
            .send()
            .await
            .unwrap();
        response.headers()["etag"].to_str().unwrap().to_owned()
    };
    let unchanged = stack
        .http
        .get(format!("{}{path}", stack.query_url))
        .bearer_auth(&family)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(unchanged.status(), StatusCode::NOT_MODIFIED);
    let reservations = calendar["reservations"].as_array().unwrap();
    assert_eq!(reservations.len(), 1);
    // A family sees a busy window, never whose it is; the home's director sees the booking.
    assert_eq!(reservations[0].get("booking_id"), None, "{calendar}");
    let (_, staff_view) = get(&stack, &director, &path, None).await;
    assert_eq!(
        staff_view["reservations"][0]["booking_id"],
        booking.to_string(),
        "{staff_view}"
    );
    let windows: Vec<(String, String)> = calendar["free_windows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            (
                w["start"].as_str().unwrap().to_owned(),
                w["end"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let utc = |t: chrono::DateTime<Utc>| {
        serde_json::to_value(t)
            .unwrap()
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(
        windows,
        [
            (utc(local(8, 0)), utc(local(9, 30))),
            (utc(local(11, 30)), utc(local(20, 0))),
        ]
    );

    // Releasing the slot frees the day again.
    let token = append(
        &producer,
        AggregateType::Facility,
        facility_uuid,
        3,
        &FacilityEvent::SlotReleased {
            booking_id: booking,
        },
    )
    .await;
    let response = stack
        .http
        .get(format!("{}{path}", stack.query_url))
        .bearer_auth(&family)
        .header("if-none-match", &etag)
        .header("consistency-token", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "the release changed the calendar's ETag"
    );
    let calendar: Value = response.json().await.unwrap();
    assert_eq!(calendar["reservations"].as_array().unwrap().len(), 0);
    assert_eq!(calendar["free_windows"].as_array().unwrap().len(), 1);

    // Bad ranges are refused, naming the parameter and the rule.
    let base = format!("/facilities/{facility_id}/calendar");
    for (query, expected) in [
        (
            String::new(),
            vec![("from", "required"), ("to", "required")],
        ),
        (
            format!("?from={}&to=tomorrow", urlencode(&from)),
            vec![("to", "rfc3339")],
        ),
        (
            format!("?from={}&to={}", urlencode(&to), urlencode(&from)),
            vec![("to", "range.to_after_from")],
        ),
        (
            format!(
                "?from={}&to={}",
                urlencode(&from),
                urlencode(&(local(0, 0) + Duration::days(32)).to_rfc3339())
            ),
            vec![("to", "calendar.range_max")],
        ),
        (
            format!(
                "?from={}&to={}&colour=red",
                urlencode(&from),
                urlencode(&to)
            ),
            vec![("colour", "query.unknown_parameter")],
        ),
    ] {
        let (status, problem) = get(&stack, &director, &format!("{base}{query}"), None).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{query}: {problem}"
        );
        let expected: Vec<(String, String)> = expected
            .into_iter()
            .map(|(f, r)| (f.to_owned(), r.to_owned()))
            .collect();
        assert_eq!(fields(&problem), expected, "{query}");
    }
    let (status, _) = get(
        &stack,
        &director,
        &format!(
            "/facilities/{}/calendar?from={}&to={}",
            Uuid::new_v4(),
            urlencode(&from),
            urlencode(&to)
        ),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

fn urlencode(text: &str) -> String {
    text.replace('+', "%2B").replace(':', "%3A")
}

#[tokio::test]
async fn bookings_are_listed_by_filter_and_page_and_a_family_sees_only_its_own() {
    let stack = TestStack::spawn().await.expect("stack starts");
    let director = stack.token(Role::Director, "director-1").await;
    let family_one = stack.token(Role::Family, "family-1").await;
    let family_two = stack.token(Role::Family, "family-2").await;
    let (facility_id, _) = register_facility(&stack, &director).await;
    let (other_facility, _) = register_facility(&stack, &director).await;

    let mut own = Vec::new();
    for days in [10, 11, 12] {
        own.push(request_booking(&stack, &family_one, &facility_id, days).await);
    }
    let (theirs, _) = request_booking(&stack, &family_two, &facility_id, 13).await;
    let (elsewhere, _) = request_booking(&stack, &director, &other_facility, 14).await;
    // Every write visible: wait on each token.
    for (id, token) in &own {
        let (status, _) = get(&stack, &director, &format!("/bookings/{id}"), Some(token)).await;
        assert_eq!(status, StatusCode::OK);
    }
    let ids = |page: &Value| -> Vec<String> {
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["booking_id"].as_str().unwrap().to_owned())
            .collect()
    };
    let wait_all = |expected: usize| {
        let stack = &stack;
        let director = &director;
        let facility_id = &facility_id;
        async move {
            read_side_support::eventually(
                std::time::Duration::from_secs(10),
                "all bookings projected",
                || async {
                    let (_, page) = get(
                        stack,
                        director,
                        &format!("/bookings?facility_id={facility_id}&limit=200"),
                        None,
                    )
                    .await;
                    page["items"]
                        .as_array()
                        .is_some_and(|items| items.len() == expected)
                },
            )
            .await;
        }
    };
    wait_all(4).await;

    // Pages of two, by service start, the cursor carrying on where the page ended.
    let (status, first) = get(
        &stack,
        &director,
        &format!("/bookings?facility_id={facility_id}&limit=2"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ids(&first), [own[0].0.clone(), own[1].0.clone()]);
    let cursor = first["next_cursor"].as_str().unwrap();
    let (_, second) = get(
        &stack,
        &director,
        &format!("/bookings?facility_id={facility_id}&limit=2&cursor={cursor}"),
        None,
    )
    .await;
    assert_eq!(ids(&second), [own[2].0.clone(), theirs.clone()]);
    assert!(second["next_cursor"].is_null());

    // The director sees every facility's bookings; a family only its own, with its contacts.
    let (_, all) = get(&stack, &director, "/bookings", None).await;
    assert!(ids(&all).contains(&elsewhere));
    let (_, mine) = get(&stack, &family_one, "/bookings", None).await;
    assert_eq!(
        ids(&mine),
        own.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>()
    );
    let (_, other) = get(&stack, &family_two, "/bookings", None).await;
    assert_eq!(ids(&other), [theirs.as_str()]);

    // Date range and status filters: the two hours around the second booking's start.
    let (_, second_booking) =
        get(&stack, &director, &format!("/bookings/{}", own[1].0), None).await;
    let start =
        chrono::DateTime::parse_from_rfc3339(second_booking["slot"]["start"].as_str().unwrap())
            .unwrap()
            .with_timezone(&Utc);
    let from = urlencode(&(start - Duration::hours(1)).to_rfc3339());
    let to = urlencode(&(start + Duration::hours(1)).to_rfc3339());
    let (_, one_day) = get(
        &stack,
        &director,
        &format!("/bookings?from={from}&to={to}"),
        None,
    )
    .await;
    assert_eq!(ids(&one_day), [own[1].0.clone()]);
    let (_, requested) = get(
        &stack,
        &director,
        &format!("/bookings?facility_id={facility_id}&status=requested"),
        None,
    )
    .await;
    assert_eq!(ids(&requested).len(), 4);
    let (_, confirmed) = get(&stack, &director, "/bookings?status=confirmed", None).await;
    assert_eq!(ids(&confirmed).len(), 0);

    // Bad filters: 422 naming each parameter and rule.
    let (status, problem) = get(
        &stack,
        &director,
        "/bookings?status=lost&limit=0&facility_id=nope&cursor=zz&from=yesterday",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let mut found = fields(&problem);
    found.sort();
    assert_eq!(
        found,
        [
            ("cursor".to_owned(), "cursor.format".to_owned()),
            ("facility_id".to_owned(), "uuid".to_owned()),
            ("from".to_owned(), "rfc3339".to_owned()),
            ("limit".to_owned(), "limit.range".to_owned()),
            ("status".to_owned(), "one_of".to_owned()),
        ]
    );
}

#[tokio::test]
async fn a_booking_shows_its_payment_and_lifecycle_history_and_facilities_are_listed() {
    let stack = TestStack::spawn().await.expect("stack starts");
    let director = stack.token(Role::Director, "director-1").await;
    let family = stack.token(Role::Family, "family-1").await;
    let producer = EventProducer::new(&stack.kafka).unwrap();
    let (facility_id, _) = register_facility(&stack, &director).await;
    let (booking_id, token) = request_booking(&stack, &family, &facility_id, 20).await;
    let path = format!("/bookings/{booking_id}");
    let (status, booking) = get(&stack, &family, &path, Some(&token)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(booking["payment"].is_null());
    assert_eq!(booking["saga"]["history"][0]["status"], "requested");

    let booking_uuid: Uuid = booking_id.parse().unwrap();
    let booking = BookingId::from(booking_uuid);
    let payment = PaymentId::for_booking(booking);
    let token = append(
        &producer,
        AggregateType::Payment,
        *payment.as_uuid(),
        1,
        &PaymentEvent::PaymentCaptured {
            payment_id: payment,
            booking_id: booking,
            amount: Money::new(125_000, Currency::parse("GBP").unwrap()).unwrap(),
            gateway_reference: "cap-1".to_owned(),
        },
    )
    .await;
    let (status, view) = get(&stack, &family, &path, Some(&token)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(view["payment"]["status"], "captured");
    assert_eq!(view["payment"]["amount"]["amount_minor"], 125_000);
    assert_eq!(view["payment"]["capture_reference"], "cap-1");

    let response = stack
        .http
        .post(format!(
            "{}/bookings/{booking_id}/cancel",
            stack.command_url
        ))
        .bearer_auth(&family)
        .json(&serde_json::json!({"reason": "family changed plans"}))
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "{}",
        response.text().await.unwrap()
    );
    let token = response.headers()["consistency-token"]
        .to_str()
        .unwrap()
        .to_owned();
    let (_, view) = get(&stack, &family, &path, Some(&token)).await;
    assert_eq!(view["status"], "cancelled");
    let history: Vec<&str> = view["saga"]["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|step| step["status"].as_str().unwrap())
        .collect();
    assert_eq!(history, ["requested", "cancelled"]);

    let (status, facilities) = get(&stack, &family, "/facilities?limit=1", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(facilities["items"][0]["facility_id"], facility_id.as_str());
    assert!(facilities["next_cursor"].is_null());

    let openapi: Value = stack
        .http
        .get(format!("{}/openapi.json", stack.query_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for path in [
        "/bookings",
        "/bookings/{id}",
        "/facilities",
        "/facilities/{id}",
        "/facilities/{id}/calendar",
    ] {
        assert!(
            openapi["paths"][path]["get"].is_object(),
            "{path} documented"
        );
    }
}

#[tokio::test]
async fn a_booking_shows_its_sagas_progress_once_a_saga_runner_writes_to_the_database() {
    let stack = TestStack::spawn().await.expect("stack starts");
    let director = stack.token(Role::Director, "director-1").await;
    let family = stack.token(Role::Family, "family-1").await;
    let (facility_id, _) = register_facility(&stack, &director).await;
    let (booking_id, token) = request_booking(&stack, &family, &facility_id, 21).await;
    let path = format!("/bookings/{booking_id}");
    // No saga runner here: the booking is read without its saga's progress.
    let (status, booking) = get(&stack, &family, &path, Some(&token)).await;
    assert_eq!(status, StatusCode::OK, "{booking}");
    assert!(booking.get("saga_progress").is_none(), "{booking}");

    // A saga runner's view (the columns saga-runner/migrations gives it) appears, with this
    // booking's saga in it.
    let pool = sqlx::PgPool::connect(&stack.database_url).await.unwrap();
    for statement in [
        "CREATE SCHEMA saga",
        "CREATE TABLE saga.sagas (booking_id UUID PRIMARY KEY, stage TEXT NOT NULL, \
         step TEXT NOT NULL, done BOOLEAN NOT NULL, attempts INTEGER NOT NULL, \
         next_attempt_at TIMESTAMPTZ, deadline TIMESTAMPTZ, last_error TEXT, \
         compensated BOOLEAN NOT NULL, history JSONB NOT NULL, updated_at TIMESTAMPTZ NOT NULL)",
        "CREATE VIEW saga.progress AS SELECT booking_id, stage, step, done, attempts, \
         next_attempt_at, deadline, last_error, compensated, history, updated_at FROM saga.sagas",
    ] {
        sqlx::query(statement).execute(&pool).await.unwrap();
    }
    sqlx::query(
        "INSERT INTO saga.sagas VALUES ($1, 'paying', 'capture', false, 2, NULL, NULL, \
         'gateway timed out', false, '[{\"step\": \"reserve_slot\"}]', now())",
    )
    .bind(booking_id.parse::<Uuid>().unwrap())
    .execute(&pool)
    .await
    .unwrap();

    // The query-api looks for the view again within a second of finding it missing.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let progress = loop {
        let (status, booking) = get(&stack, &family, &path, None).await;
        assert_eq!(status, StatusCode::OK, "{booking}");
        if let Some(progress) = booking.get("saga_progress") {
            break progress.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no saga_progress 10 s after the view appeared: {booking}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(progress["stage"], "paying", "{progress}");
    assert_eq!(progress["attempts"], 2, "{progress}");
    // A family sees where its booking stands, not the saga's errors or history; staff do.
    assert!(progress.get("last_error").is_none(), "{progress}");
    assert!(progress.get("history").is_none(), "{progress}");
    let (_, booking) = get(&stack, &director, &path, None).await;
    assert_eq!(
        booking["saga_progress"]["last_error"], "gateway timed out",
        "{booking}"
    );
    assert_eq!(
        booking["saga_progress"]["history"][0]["step"], "reserve_slot",
        "{booking}"
    );
}

#[tokio::test]
async fn list_pages_carry_an_etag_that_moves_when_their_content_does() {
    let stack = TestStack::spawn().await.expect("stack starts");
    let director = stack.token(Role::Director, "director-1").await;
    let (facility_id, _) = register_facility(&stack, &director).await;
    let (_, token) = request_booking(&stack, &director, &facility_id, 10).await;
    let url = format!("{}/bookings?facility_id={facility_id}", stack.query_url);
    let first = stack
        .http
        .get(&url)
        .bearer_auth(&director)
        .header("consistency-token", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    let etag = first.headers()["etag"].to_str().unwrap().to_owned();

    let unchanged = stack
        .http
        .get(&url)
        .bearer_auth(&director)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(unchanged.status(), StatusCode::NOT_MODIFIED);

    let (_, token) = request_booking(&stack, &director, &facility_id, 11).await;
    let changed = stack
        .http
        .get(&url)
        .bearer_auth(&director)
        .header("if-none-match", &etag)
        .header("consistency-token", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        changed.status(),
        StatusCode::OK,
        "a new booking changes the page"
    );
    assert_ne!(changed.headers()["etag"].to_str().unwrap(), etag);

    let facilities = format!("{}/facilities", stack.query_url);
    let page = stack
        .http
        .get(&facilities)
        .bearer_auth(&director)
        .send()
        .await
        .unwrap();
    let etag = page.headers()["etag"].to_str().unwrap().to_owned();
    let again = stack
        .http
        .get(&facilities)
        .bearer_auth(&director)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
}
