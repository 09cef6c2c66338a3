//! Funeral homes as tenants (docs/identity.md, "Tenancy"), with real tokens from the test
//! provider: `director-a` (home A), `director-b` (home B), `group-admin` (both homes of the
//! group), `operator` (ops), two families.
//!
//! The walk takes **every route** of the command-service's and the query-api's OpenAPI
//! documents and holds it against [`ROUTES`], which says what each route reaches (a facility, a
//! booking, a list, nothing of a home) — a route added to a service without a line here fails
//! the test, so no route ships without its tenancy decided. Then each route is called: another
//! home's director gets 404 on every route that names a facility or booking, the home's director
//! and the group administrator get what the route does; routes no director may use answer 403
//! whatever the id; lists and calendars never carry another home's ids.

#![allow(clippy::unwrap_used)] // A test fails loudly on any unexpected error; that is the point.
#![allow(clippy::too_many_lines)] // The walk is one story.

mod read_side_support;

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{Duration as Days, Utc};
use domain::{facility::FacilityEvent, values::FacilityId};
use event_log::EventProducer;
use platform::settings::TenancySettings;
use reqwest::{Method, StatusCode};
use schemas::{AggregateType, Role};
use serde_json::{Value, json};
use system_tests::{TestStack, bodies};
use uuid::Uuid;

/// Which service answers a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Service {
    Command,
    Query,
}

/// What a route reaches, and so what tenancy means for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reach {
    /// `{id}` is a facility: another home's director gets 404.
    Facility,
    /// `{id}` is a booking: another home's director gets 404.
    Booking,
    /// A body names the facility (`POST /bookings`): another home's facility is 404.
    BookingRequest,
    /// `POST /facilities`: the new facility goes to a home the caller works for.
    Register,
    /// A list: never another home's ids.
    List,
    /// No director may use it (the saga's internal commands, the operators' decisions): 403 for
    /// every director, whatever the id, so it tells nothing about another home.
    NotForDirectors,
    /// `{id}` is a booking and the route mails its family or ends their sessions: another home's
    /// director gets 404 (that the booking's own home may is `invitations.rs`'s to show: it has
    /// the SMTP sink the letters need).
    Invitations,
    /// A family-session route (exchange, refresh, the session keys): no home's facility or
    /// booking in its path, and a director's token opens nothing there.
    FamilySessions,
    /// `{home_id}` is a home (its price list): another home's director gets 404; the home's
    /// director and the group administrator are let in.
    Home,
}

/// Every route of the two documents and what it reaches. A route missing here fails the walk.
const ROUTES: &[(Service, &str, &str, Reach)] = &[
    (Service::Command, "post", "/facilities", Reach::Register),
    (
        Service::Command,
        "put",
        "/facilities/{id}/opening-hours",
        Reach::Facility,
    ),
    (
        Service::Command,
        "post",
        "/facilities/{id}/reservations",
        Reach::NotForDirectors,
    ),
    (
        Service::Command,
        "post",
        "/facilities/{id}/reservations/{booking_id}/release",
        Reach::NotForDirectors,
    ),
    (Service::Command, "post", "/bookings", Reach::BookingRequest),
    (
        Service::Command,
        "post",
        "/bookings/{id}/cancel",
        Reach::Booking,
    ),
    (
        Service::Command,
        "post",
        "/bookings/{id}/slot-held",
        Reach::NotForDirectors,
    ),
    (
        Service::Command,
        "post",
        "/bookings/{id}/confirm",
        Reach::NotForDirectors,
    ),
    (
        Service::Command,
        "post",
        "/bookings/{id}/reject",
        Reach::NotForDirectors,
    ),
    (
        Service::Command,
        "post",
        "/bookings/{id}/fail",
        Reach::NotForDirectors,
    ),
    (
        Service::Command,
        "post",
        "/bookings/{id}/erase",
        Reach::Booking,
    ),
    (
        Service::Command,
        "get",
        "/bookings/{id}/personal-data",
        Reach::Booking,
    ),
    (
        Service::Command,
        "post",
        "/bookings/{id}/payment/captured",
        Reach::NotForDirectors,
    ),
    (
        Service::Command,
        "post",
        "/bookings/{id}/payment/declined",
        Reach::NotForDirectors,
    ),
    (
        Service::Command,
        "post",
        "/bookings/{id}/payment/refunded",
        Reach::NotForDirectors,
    ),
    (
        Service::Command,
        "post",
        "/sagas/{id}/park",
        Reach::NotForDirectors,
    ),
    (
        Service::Command,
        "post",
        "/sagas/{id}/retry",
        Reach::NotForDirectors,
    ),
    (
        Service::Command,
        "post",
        "/sagas/{id}/skip",
        Reach::NotForDirectors,
    ),
    (
        Service::Command,
        "post",
        "/sagas/{id}/resolve",
        Reach::NotForDirectors,
    ),
    (
        Service::Command,
        "put",
        "/homes/{home_id}/price-list",
        Reach::Home,
    ),
    (
        Service::Command,
        "get",
        "/homes/{home_id}/price-list",
        Reach::Home,
    ),
    (Service::Query, "get", "/bookings", Reach::List),
    (Service::Query, "get", "/bookings/{id}", Reach::Booking),
    (Service::Query, "get", "/facilities", Reach::List),
    (Service::Query, "get", "/facilities/{id}", Reach::Facility),
    (
        Service::Query,
        "get",
        "/facilities/{id}/calendar",
        Reach::Facility,
    ),
    (
        Service::Command,
        "post",
        "/bookings/{id}/invitations",
        Reach::Invitations,
    ),
    (
        Service::Command,
        "post",
        "/bookings/{id}/invitations/{invitation_id}/revoke",
        Reach::Invitations,
    ),
    (
        Service::Command,
        "post",
        "/family-sessions",
        Reach::FamilySessions,
    ),
    (
        Service::Command,
        "post",
        "/family-sessions/refresh",
        Reach::FamilySessions,
    ),
    (
        Service::Command,
        "get",
        "/family-sessions/jwks.json",
        Reach::FamilySessions,
    ),
];

/// Every (method, path) of an OpenAPI document.
fn operations(document: &Value) -> BTreeSet<(String, String)> {
    let mut found = BTreeSet::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if ["get", "put", "post", "delete", "patch"].contains(&method.as_str()) {
                found.insert((method.clone(), path.clone()));
            }
        }
    }
    found
}

struct Caller {
    name: &'static str,
    token: String,
}

async fn send(
    stack: &TestStack,
    service: Service,
    method: &str,
    path: &str,
    token: &str,
    body: Option<&Value>,
) -> (StatusCode, Value) {
    let base = match service {
        Service::Command => &stack.command_url,
        Service::Query => &stack.query_url,
    };
    let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
    let mut request = stack
        .http
        .request(method, format!("{base}{path}"))
        .bearer_auth(token);
    if let Some(body) = body {
        request = request.json(body);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Polls the query-api as `token` until `path` answers 200 (the projector has caught up).
async fn until_visible(stack: &TestStack, token: &str, path: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = send(stack, Service::Query, "get", path, token, None).await;
        if status == StatusCode::OK {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{path} never became visible: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn id_of(body: &Value, field: &str) -> String {
    body[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} in {body}"))
        .to_owned()
}

/// Every id a list page shows: facilities' and bookings' (and bookings' facilities).
fn ids_in(page: &Value) -> BTreeSet<String> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|item| {
            ["booking_id", "facility_id"]
                .into_iter()
                .filter_map(|field| item[field].as_str().map(str::to_owned))
        })
        .collect()
}

/// `path` with its `{id}` (and `{booking_id}`) filled in, and the query a route needs.
fn concrete(template: &str, id: &str, booking: &str) -> String {
    let path = template
        .replace("{booking_id}", booking)
        .replace("{invitation_id}", &Uuid::new_v4().to_string())
        .replace("{id}", id);
    if template.ends_with("/calendar") {
        let from = Utc::now().date_naive();
        format!(
            "{path}?from={from}T00:00:00Z&to={}T00:00:00Z",
            from + Days::days(30)
        )
    } else {
        path
    }
}

/// A body the route accepts (for the routes a director may use), or an empty object.
fn body_for(template: &str, facility: &str, days_ahead: i64) -> Option<Value> {
    match template {
        "/facilities" => Some(bodies::facility()),
        // Longer hours every day, so that the bookings the walk makes later still fit.
        "/facilities/{id}/opening-hours" => {
            let hours: Vec<Value> = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
                .iter()
                .map(|day| json!({"weekday": day, "opens": "07:00", "closes": "21:00"}))
                .collect();
            Some(json!({ "opening_hours": hours }))
        }
        "/bookings" => Some(bodies::booking(facility, days_ahead)),
        "/bookings/{id}/cancel" => Some(json!({"reason": "the family changed its plans"})),
        "/bookings/{id}/erase" => Some(json!({})),
        _ if template.starts_with("/bookings/{id}/personal-data") => None,
        _ => Some(json!({})),
    }
}

#[tokio::test]
async fn another_homes_director_gets_404_on_every_route_and_lists_never_leak_its_ids() {
    let stack = TestStack::spawn().await.expect("stack starts");
    let director_a = Caller {
        name: "director-a",
        token: stack.token(Role::Director, "director-a").await,
    };
    let director_b = Caller {
        name: "director-b",
        token: stack.token(Role::Director, "director-b").await,
    };
    let admin = Caller {
        name: "group-admin",
        token: test_support::person_token("group-admin").await.unwrap(),
    };
    let family = stack.token(Role::Family, "family-1").await;
    let ops = stack.token(Role::Ops, "ops-1").await;
    let system = stack.token(Role::System, "saga").await;

    // The walk's table is the documents' routes, no more, no fewer.
    let mut documented = BTreeSet::new();
    for (service, base) in [
        (Service::Command, &stack.command_url),
        (Service::Query, &stack.query_url),
    ] {
        let document: Value = stack
            .http
            .get(format!("{base}/openapi.json"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for (method, path) in operations(&document) {
            documented.insert((service, method, path));
        }
    }
    let table: BTreeSet<(Service, String, String)> = ROUTES
        .iter()
        .map(|(service, method, path, _)| (*service, (*method).to_owned(), (*path).to_owned()))
        .collect();
    assert_eq!(
        documented.difference(&table).collect::<Vec<_>>(),
        Vec::<&(Service, String, String)>::new(),
        "routes without a tenancy decision in ROUTES"
    );
    assert_eq!(
        table.difference(&documented).collect::<Vec<_>>(),
        Vec::<&(Service, String, String)>::new(),
        "ROUTES names routes the services do not have"
    );

    // Home A's facility (director-a names no home: their only one), home B's (the group
    // administrator names it), and a booking at each.
    let (status, a) = send(
        &stack,
        Service::Command,
        "post",
        "/facilities",
        &director_a.token,
        Some(&bodies::facility()),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{a}");
    let facility_a = id_of(&a, "facility_id");
    let mut in_b = bodies::facility();
    in_b["home"] = json!(TenancySettings::LOCAL_HOME_B);
    let (status, b) = send(
        &stack,
        Service::Command,
        "post",
        "/facilities",
        &admin.token,
        Some(&in_b),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{b}");
    let facility_b = id_of(&b, "facility_id");
    let (status, booked) = send(
        &stack,
        Service::Command,
        "post",
        "/bookings",
        &family,
        Some(&bodies::booking(&facility_a, 10)),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{booked}");
    let booking_a = id_of(&booked, "booking_id");
    let (status, booked) = send(
        &stack,
        Service::Command,
        "post",
        "/bookings",
        &director_b.token,
        Some(&bodies::booking(&facility_b, 11)),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{booked}");
    let booking_b = id_of(&booked, "booking_id");
    // A slot held at home A's facility, so that its calendar has a reservation to hide.
    let slot = bodies::booking(&facility_a, 10)["slot"].clone();
    let (status, held) = send(
        &stack,
        Service::Command,
        "post",
        &format!("/facilities/{facility_a}/reservations"),
        &system,
        Some(&json!({"booking_id": booking_a, "slot": slot})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{held}");
    assert_eq!(held["outcome"], "reserved", "{held}");
    until_visible(&stack, &director_a.token, &format!("/bookings/{booking_a}")).await;
    until_visible(&stack, &director_b.token, &format!("/bookings/{booking_b}")).await;

    // Registering: a director of one home may leave the home out, a group administrator may
    // not; nobody registers for a home they do not work for.
    let mut elsewhere = bodies::facility();
    elsewhere["home"] = json!(TenancySettings::LOCAL_HOME_B);
    let (status, refused) = send(
        &stack,
        Service::Command,
        "post",
        "/facilities",
        &director_a.token,
        Some(&elsewhere),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    assert_eq!(refused["errors"][0]["rule"], "home.not_yours", "{refused}");
    let (status, refused) = send(
        &stack,
        Service::Command,
        "post",
        "/facilities",
        &admin.token,
        Some(&bodies::facility()),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    assert_eq!(refused["errors"][0]["rule"], "home.required", "{refused}");

    // The walk: for each route, another home's director, then the home's, then the group's.
    let mut days = 12;
    for &(service, method, template, reach) in ROUTES {
        let route = format!("{method} {template}");
        match reach {
            Reach::Facility | Reach::Booking => {
                let id = if reach == Reach::Facility {
                    &facility_a
                } else {
                    &booking_a
                };
                let path = concrete(template, id, &booking_a);
                let body = match service {
                    Service::Command => body_for(template, &facility_a, days),
                    Service::Query => None,
                };
                let (status, answer) = send(
                    &stack,
                    service,
                    method,
                    &path,
                    &director_b.token,
                    body.as_ref(),
                )
                .await;
                assert_eq!(
                    status,
                    StatusCode::NOT_FOUND,
                    "{route} as director-b: {answer}"
                );
                for caller in [&director_a, &admin] {
                    let (status, answer) =
                        send(&stack, service, method, &path, &caller.token, body.as_ref()).await;
                    assert!(
                        status.is_success(),
                        "{route} as {}: {status} {answer}",
                        caller.name
                    );
                }
                // And the other way round: home B's for director-a.
                let id = if reach == Reach::Facility {
                    &facility_b
                } else {
                    &booking_b
                };
                let path = concrete(template, id, &booking_b);
                let (status, answer) = send(
                    &stack,
                    service,
                    method,
                    &path,
                    &director_a.token,
                    body.as_ref(),
                )
                .await;
                assert_eq!(
                    status,
                    StatusCode::NOT_FOUND,
                    "{route} as director-a on home B: {answer}"
                );
            }
            Reach::BookingRequest => {
                let (status, answer) = send(
                    &stack,
                    service,
                    method,
                    template,
                    &director_b.token,
                    body_for(template, &facility_a, days).as_ref(),
                )
                .await;
                assert_eq!(
                    status,
                    StatusCode::NOT_FOUND,
                    "{route} as director-b: {answer}"
                );
                assert_eq!(answer["errors"][0]["field"], "facility_id", "{answer}");
                for caller in [&director_a, &admin] {
                    days += 1;
                    let (status, answer) = send(
                        &stack,
                        service,
                        method,
                        template,
                        &caller.token,
                        body_for(template, &facility_a, days).as_ref(),
                    )
                    .await;
                    assert_eq!(
                        status,
                        StatusCode::ACCEPTED,
                        "{route} as {}: {answer}",
                        caller.name
                    );
                }
            }
            Reach::Register => {
                for caller in [&director_a, &director_b] {
                    let (status, answer) = send(
                        &stack,
                        service,
                        method,
                        template,
                        &caller.token,
                        body_for(template, "", 0).as_ref(),
                    )
                    .await;
                    assert_eq!(
                        status,
                        StatusCode::CREATED,
                        "{route} as {}: {answer}",
                        caller.name
                    );
                }
            }
            Reach::List => {
                let route = &route;
                let stack = &stack;
                let mine = |caller: &Caller| {
                    let caller_name = caller.name;
                    let token = caller.token.clone();
                    async move {
                        let (status, page) = send(
                            stack,
                            service,
                            method,
                            &format!("{template}?limit=200"),
                            &token,
                            None,
                        )
                        .await;
                        assert_eq!(status, StatusCode::OK, "{route} as {caller_name}: {page}");
                        ids_in(&page)
                    }
                };
                let (home_a, home_b) = if template == "/facilities" {
                    (&facility_a, &facility_b)
                } else {
                    (&booking_a, &booking_b)
                };
                let seen_a = mine(&director_a).await;
                assert!(
                    seen_a.contains(home_a) && !seen_a.contains(home_b),
                    "{route} as director-a: {seen_a:?}"
                );
                assert!(
                    !seen_a.contains(&facility_b),
                    "{route} as director-a: {seen_a:?}"
                );
                let seen_b = mine(&director_b).await;
                assert!(
                    seen_b.contains(home_b) && !seen_b.contains(home_a),
                    "{route} as director-b: {seen_b:?}"
                );
                assert!(
                    !seen_b.contains(&facility_a),
                    "{route} as director-b: {seen_b:?}"
                );
                let seen = mine(&admin).await;
                assert!(
                    seen.contains(home_a) && seen.contains(home_b),
                    "{route} as group-admin: {seen:?}"
                );
                // A filter on another home's facility is an empty page, not its bookings.
                if template == "/bookings" {
                    let (status, page) = send(
                        stack,
                        service,
                        method,
                        &format!("/bookings?facility_id={facility_a}"),
                        &director_b.token,
                        None,
                    )
                    .await;
                    assert_eq!(status, StatusCode::OK, "{page}");
                    assert_eq!(page["items"], json!([]), "{page}");
                }
            }
            Reach::Invitations => {
                for (caller, booking) in [(&director_b, &booking_a), (&director_a, &booking_b)] {
                    let path = concrete(template, booking, booking);
                    let (status, answer) = send(
                        &stack,
                        service,
                        method,
                        &path,
                        &caller.token,
                        Some(&json!({})),
                    )
                    .await;
                    assert_eq!(
                        status,
                        StatusCode::NOT_FOUND,
                        "{route} as {} on the other home's booking: {answer}",
                        caller.name
                    );
                }
            }
            Reach::Home => {
                let body = (method == "put").then(bodies::price_list);
                let home = |home: Uuid| template.replace("{home_id}", &home.to_string());
                let (home_a, home_b) = (
                    home(TenancySettings::LOCAL_HOME_A),
                    home(TenancySettings::LOCAL_HOME_B),
                );
                for (caller, path) in [(&director_b, &home_a), (&director_a, &home_b)] {
                    let (status, answer) =
                        send(&stack, service, method, path, &caller.token, body.as_ref()).await;
                    assert_eq!(
                        status,
                        StatusCode::NOT_FOUND,
                        "{route} as {} on the other home: {answer}",
                        caller.name
                    );
                }
                for (caller, path) in [(&director_a, &home_a), (&admin, &home_b)] {
                    let (status, answer) =
                        send(&stack, service, method, path, &caller.token, body.as_ref()).await;
                    assert_eq!(
                        status,
                        StatusCode::OK,
                        "{route} as {}: {answer}",
                        caller.name
                    );
                }
            }
            Reach::FamilySessions => {
                let body = (method == "post").then(|| json!({}));
                let (status, answer) = send(
                    &stack,
                    service,
                    method,
                    template,
                    &director_b.token,
                    body.as_ref(),
                )
                .await;
                if method == "get" {
                    assert_eq!(status, StatusCode::OK, "{route}: {answer}");
                } else {
                    assert!(
                        status.is_client_error(),
                        "{route} as director-b: {status} {answer}"
                    );
                }
                let text = answer.to_string();
                for id in [&facility_a, &facility_b, &booking_a, &booking_b] {
                    assert!(!text.contains(id.as_str()), "{route} named {id}: {text}");
                }
            }
            Reach::NotForDirectors => {
                let path = concrete(template, &booking_a, &booking_a);
                for caller in [&director_a, &director_b, &admin] {
                    let (status, answer) = send(
                        &stack,
                        service,
                        method,
                        &path,
                        &caller.token,
                        Some(&json!({})),
                    )
                    .await;
                    assert_eq!(
                        status,
                        StatusCode::FORBIDDEN,
                        "{route} as {}: {answer}",
                        caller.name
                    );
                }
            }
        }
    }

    // The calendar: home A's director sees which booking holds the slot; a family sees a busy
    // window only, never the booking id.
    let calendar = concrete("/facilities/{id}/calendar", &facility_a, "");
    let (_, staff) = send(
        &stack,
        Service::Query,
        "get",
        &calendar,
        &director_a.token,
        None,
    )
    .await;
    assert_eq!(staff["reservations"][0]["booking_id"], booking_a, "{staff}");
    let (status, busy) = send(&stack, Service::Query, "get", &calendar, &family, None).await;
    assert_eq!(status, StatusCode::OK, "{busy}");
    let reservations = busy["reservations"].as_array().unwrap();
    assert_eq!(reservations.len(), 1, "{busy}");
    assert_eq!(reservations[0].get("booking_id"), None, "{busy}");
    assert!(!busy.to_string().contains(&booking_a), "{busy}");

    // Ops sees every home's bookings, the personal data masked.
    let (status, seen) = send(
        &stack,
        Service::Query,
        "get",
        &format!("/bookings/{booking_b}"),
        &ops,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{seen}");
    assert_eq!(
        (&seen["deceased"], &seen["family_contacts"]),
        (&json!("masked"), &json!("masked")),
        "{seen}"
    );
    let (_, page) = send(
        &stack,
        Service::Query,
        "get",
        "/bookings?limit=200",
        &ops,
        None,
    )
    .await;
    assert!(
        ids_in(&page).contains(&booking_a) && ids_in(&page).contains(&booking_b),
        "{page}"
    );
    assert!(!page.to_string().contains("Ada Lovelace"), "{page}");

    // A facility registered before homes were named (no home on its event) is the default
    // home's: home A's director sees it, home B's does not.
    let producer = EventProducer::new(&stack.kafka).unwrap();
    let legacy = Uuid::new_v4();
    let FacilityEvent::FacilityRegistered {
        name,
        kind,
        capacity,
        time_zone,
        opening_hours,
        turnaround_minutes,
        ..
    } = domain::fixtures::facility_registered()
    else {
        unreachable!()
    };
    read_side_support::append(
        &producer,
        AggregateType::Facility,
        legacy,
        1,
        &FacilityEvent::FacilityRegistered {
            facility_id: FacilityId::from_uuid(legacy),
            name,
            kind,
            capacity,
            time_zone,
            opening_hours,
            turnaround_minutes,
            funeral_home_id: None,
        },
    )
    .await;
    let seen = until_visible(&stack, &director_a.token, &format!("/facilities/{legacy}")).await;
    assert_eq!(seen["home"], json!(TenancySettings::LOCAL_HOME_A), "{seen}");
    let (status, _) = send(
        &stack,
        Service::Query,
        "get",
        &format!("/facilities/{legacy}"),
        &director_b.token,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
