//! Property: for random valid command sequences, decided by the domain and appended to the real
//! log, the read models the projector builds equal the fold of that log with the domain's own
//! `evolve` (statuses, versions, reservations, payments, opening hours).

#![allow(clippy::unwrap_used)] // A test fails loudly on any unexpected error; that is the point.

mod read_side_support;

use std::{collections::BTreeMap, sync::OnceLock, time::Duration};

use domain::{
    Aggregate, DomainEvent,
    booking::{Booking, BookingCommand, BookingState, FacilitySchedule},
    facility::{Facility, FacilityCommand, FacilityState},
    fixtures,
    payment::{Payment, PaymentCommand, PaymentState},
    values::{BookingId, FacilityId, OpeningHours, OpeningInterval, PaymentId},
};
use event_log::{EventProducer, LogPosition};
use platform::{
    settings::{DatabaseSettings, HttpSettings},
    shutdown::CancellationToken,
};
use proptest::prelude::*;
use read_side_support::envelope;
use schemas::AggregateType;
use secrecy::SecretString;
use sqlx::PgPool;
use uuid::Uuid;

struct Harness {
    runtime: tokio::runtime::Runtime,
    producer: EventProducer,
    pool: PgPool,
    _shutdown: CancellationToken,
}

/// One projection-service for every case (each case uses fresh aggregate ids).
fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let shutdown = CancellationToken::new();
        let (producer, pool) = runtime.block_on(async {
            let kafka = system_tests::fresh_kafka().await.unwrap();
            let database_url = system_tests::fresh_database().await.unwrap();
            let settings = projection_service::Settings {
                http: HttpSettings::on_port(0),
                kafka: kafka.clone(),
                database: DatabaseSettings {
                    url: SecretString::from(database_url.clone()),
                    ..DatabaseSettings::default()
                },
                privacy: Some(test_support::privacy_settings()),
                ..projection_service::Settings::default()
            };
            test_support::spawn_app::<projection_service::Application>(settings, &shutdown)
                .await
                .unwrap();
            let pool = PgPool::connect(&database_url).await.unwrap();
            // The first build of the version switches live at its first check (an empty log);
            // until then `live.*` does not exist.
            let deadline = tokio::time::Instant::now() + Duration::from_mins(1);
            while !sqlx::query_scalar::<_, bool>(
                "SELECT to_regclass('live.projection_offsets') IS NOT NULL",
            )
            .fetch_one(&pool)
            .await
            .unwrap()
            {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the read-model version did not go live within a minute"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (EventProducer::new(&kafka).unwrap(), pool)
        });
        Harness {
            runtime,
            producer,
            pool,
            _shutdown: shutdown,
        }
    })
}

/// The log of one case, folded as the domain folds it.
#[derive(Default)]
struct Fold {
    facility: FacilityState,
    facility_version: u64,
    bookings: BTreeMap<BookingId, (BookingState, u64)>,
    payments: BTreeMap<PaymentId, (PaymentState, u64)>,
    appended: Vec<LogPosition>,
}

fn other_hours() -> OpeningHours {
    OpeningHours::new(
        ["mon", "tue", "wed"]
            .into_iter()
            .map(|day| OpeningInterval::parse(day, "08:00", "18:00").unwrap())
            .collect(),
    )
    .unwrap()
}

fn slot(variant: u8) -> domain::values::Slot {
    let (start, end) = match variant % 4 {
        0 => ("2027-03-02T10:00:00+00:00", "2027-03-02T11:00:00+00:00"),
        1 => ("2027-03-02T10:30:00+00:00", "2027-03-02T11:30:00+00:00"),
        2 => ("2027-03-02T13:00:00+00:00", "2027-03-02T14:00:00+00:00"),
        _ => ("2027-03-02T18:00:00+00:00", "2027-03-02T19:00:00+00:00"),
    };
    fixtures::slot_at(start, end)
}

async fn append_all<E: DomainEvent>(
    fold: &mut Fold,
    kind: AggregateType,
    id: Uuid,
    first_sequence: u64,
    events: &[E],
) {
    let producer = &harness().producer;
    for (i, event) in events.iter().enumerate() {
        let sequence = first_sequence + u64::try_from(i).unwrap();
        let position = producer
            .append(&envelope(kind, id, sequence, event))
            .await
            .unwrap();
        fold.appended.push(position);
    }
}

/// Which booking command to try: mostly the next step of the lifecycle (so that sequences reach
/// `confirmed` and `cancelled`), sometimes any command (which the domain may refuse).
/// 0 request, 1 mark slot held, 2 confirm, 3 reject, 4 fail, 5 cancel.
fn step(state: &BookingState, variant: u8) -> u8 {
    use domain::booking::BookingStatus;
    if variant >= 8 {
        return variant % 6;
    }
    match state.status() {
        None => 0,
        Some(BookingStatus::Requested) => {
            if variant == 7 {
                3
            } else {
                1
            }
        }
        Some(BookingStatus::SlotHeld) => {
            if variant == 7 {
                4
            } else {
                2
            }
        }
        Some(_) => 5,
    }
}

/// Decides each operation against the folded state; what the domain accepts is appended.
#[allow(clippy::too_many_lines)] // One match arm per kind of command.
async fn run(ops: &[(u8, usize, u8)]) -> (FacilityId, Vec<BookingId>, Fold) {
    let facility_id = FacilityId::new();
    let bookings: Vec<BookingId> = (0..3).map(|_| BookingId::new()).collect();
    let mut fold = Fold::default();
    let FacilityCommand::Register {
        name,
        kind,
        capacity,
        time_zone,
        opening_hours,
        turnaround,
        ..
    } = fixtures::register_facility()
    else {
        unreachable!()
    };
    let register = FacilityCommand::Register {
        facility_id,
        name,
        kind,
        capacity,
        time_zone,
        opening_hours,
        turnaround,
        funeral_home_id: None,
    };
    let mut ops_with_register = vec![None];
    ops_with_register.extend(ops.iter().copied().map(Some));
    for op in ops_with_register {
        match op {
            None | Some((0, _, _)) => {
                let command = match op {
                    None => register.clone(),
                    Some((_, target, variant)) => match variant % 3 {
                        0 => FacilityCommand::ReserveSlot {
                            booking_id: bookings[target],
                            slot: slot(variant / 3),
                            now: fixtures::now(),
                        },
                        1 => FacilityCommand::ReleaseSlot {
                            booking_id: bookings[target],
                        },
                        _ => FacilityCommand::ChangeOpeningHours {
                            opening_hours: if variant % 2 == 0 {
                                other_hours()
                            } else {
                                fixtures::opening_hours()
                            },
                        },
                    },
                };
                let Ok(events) = Facility::decide(&fold.facility, command) else {
                    continue;
                };
                let first = fold.facility_version + 1;
                append_all(
                    &mut fold,
                    AggregateType::Facility,
                    *facility_id.as_uuid(),
                    first,
                    &events,
                )
                .await;
                for event in &events {
                    fold.facility = Facility::evolve(std::mem::take(&mut fold.facility), event);
                    fold.facility_version += 1;
                }
            }
            Some((1, target, variant)) => {
                let booking_id = bookings[target];
                let Some(profile) = fold.facility.profile() else {
                    continue;
                };
                let (state, version) = fold.bookings.get(&booking_id).cloned().unwrap_or_default();
                let command = match step(&state, variant) {
                    0 => {
                        let BookingCommand::Request {
                            service_type,
                            deceased,
                            family_contacts,
                            personal,
                            statement,
                            ..
                        } = fixtures::request_booking()
                        else {
                            unreachable!()
                        };
                        BookingCommand::Request {
                            booking_id,
                            facility: FacilitySchedule {
                                facility_id,
                                time_zone: profile.time_zone,
                                opening_hours: profile.opening_hours.clone(),
                            },
                            service_type,
                            slot: slot(0),
                            deceased,
                            family_contacts,
                            personal,
                            statement,
                            now: fixtures::now(),
                        }
                    }
                    1 => BookingCommand::MarkSlotHeld,
                    2 => BookingCommand::Confirm,
                    3 => BookingCommand::Reject {
                        reason: "overlaps_existing".into(),
                    },
                    4 => BookingCommand::Fail {
                        reason: "declined".into(),
                    },
                    _ => BookingCommand::Cancel {
                        reason: None,
                        now: fixtures::now(),
                    },
                };
                let Ok(events) = Booking::decide(&state, command) else {
                    continue;
                };
                append_all(
                    &mut fold,
                    AggregateType::Booking,
                    *booking_id.as_uuid(),
                    version + 1,
                    &events,
                )
                .await;
                let state = events.iter().fold(state, Booking::evolve);
                let version = version + u64::try_from(events.len()).unwrap();
                fold.bookings.insert(booking_id, (state, version));
            }
            Some((_, target, variant)) => {
                let booking_id = bookings[target];
                let payment_id = PaymentId::for_booking(booking_id);
                let price = fixtures::price();
                let (state, version) = fold.payments.get(&payment_id).cloned().unwrap_or_default();
                // Mostly the natural next answer of the gateway; sometimes any.
                let choice = match (variant < 8, state.status()) {
                    (true, None) => usize::from(target == 2),
                    (true, Some(_)) => 2,
                    (false, _) => usize::from(variant % 3),
                };
                let command = match choice {
                    0 => PaymentCommand::RecordCapture {
                        payment_id,
                        booking_id,
                        amount: price,
                        gateway_reference: "cap".into(),
                    },
                    1 => PaymentCommand::RecordDecline {
                        payment_id,
                        booking_id,
                        amount: price,
                        reason: "insufficient funds".into(),
                    },
                    _ => PaymentCommand::RecordRefund {
                        amount: price,
                        gateway_reference: "ref".into(),
                    },
                };
                let Ok(events) = Payment::decide(&state, command) else {
                    continue;
                };
                append_all(
                    &mut fold,
                    AggregateType::Payment,
                    *payment_id.as_uuid(),
                    version + 1,
                    &events,
                )
                .await;
                let state = events.iter().fold(state, Payment::evolve);
                let version = version + u64::try_from(events.len()).unwrap();
                fold.payments.insert(payment_id, (state, version));
            }
        }
    }
    (facility_id, bookings, fold)
}

/// Waits until the live version has applied every appended position.
async fn wait_applied(fold: &Fold) {
    let pool = &harness().pool;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    for position in &fold.appended {
        loop {
            let next: Option<i64> = sqlx::query_scalar(
                "SELECT next_offset FROM live.projection_offsets WHERE topic = $1 AND partition = $2",
            )
            .bind(&position.topic)
            .bind(position.partition)
            .fetch_optional(pool)
            .await
            .unwrap();
            if next.is_some_and(|next| next > position.offset) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "not applied: {position:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn check(facility_id: FacilityId, bookings: &[BookingId], fold: &Fold) {
    let pool = &harness().pool;
    let facility: (i64, serde_json::Value) =
        sqlx::query_as("SELECT version, opening_hours FROM live.facilities WHERE facility_id = $1")
            .bind(facility_id.as_uuid())
            .fetch_one(pool)
            .await
            .unwrap();
    let profile = fold.facility.profile().unwrap();
    assert_eq!(
        facility,
        (
            i64::try_from(fold.facility_version).unwrap(),
            serde_json::to_value(&profile.opening_hours).unwrap()
        )
    );
    let mut held: Vec<(
        Uuid,
        chrono::DateTime<chrono::Utc>,
        chrono::DateTime<chrono::Utc>,
    )> = sqlx::query_as(
        "SELECT booking_id, slot_start, slot_end FROM live.reservations WHERE facility_id = $1",
    )
    .bind(facility_id.as_uuid())
    .fetch_all(pool)
    .await
    .unwrap();
    held.sort();
    let mut expected: Vec<_> = fold
        .facility
        .reservations()
        .iter()
        .map(|(booking, slot)| (*booking.as_uuid(), slot.start_utc(), slot.end_utc()))
        .collect();
    expected.sort();
    assert_eq!(held, expected, "reservations");
    for booking in bookings {
        let row: Option<(String, i64)> =
            sqlx::query_as("SELECT status, version FROM live.bookings WHERE booking_id = $1")
                .bind(booking.as_uuid())
                .fetch_optional(pool)
                .await
                .unwrap();
        let expected = fold.bookings.get(booking).and_then(|(state, version)| {
            Some((
                serde_json::to_value(state.status()?)
                    .ok()?
                    .as_str()?
                    .to_owned(),
                i64::try_from(*version).ok()?,
            ))
        });
        assert_eq!(row, expected, "booking {booking}");
        let payment = PaymentId::for_booking(*booking);
        let row: Option<(String, i64, Option<i64>, i64)> = sqlx::query_as(
            "SELECT status, amount_minor, refunded_amount_minor, version FROM live.payments WHERE payment_id = $1",
        )
        .bind(payment.as_uuid())
        .fetch_optional(pool)
        .await
        .unwrap();
        let expected = fold.payments.get(&payment).and_then(|(state, version)| {
            let record = state.record()?;
            Some((
                record.status.as_str().to_owned(),
                record.amount.amount_minor(),
                record.refunded.map(domain::values::Money::amount_minor),
                i64::try_from(*version).ok()?,
            ))
        });
        assert_eq!(row, expected, "payment of {booking}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn read_models_equal_the_fold_of_the_log(
        ops in prop::collection::vec((0_u8..3, 0_usize..3, 0_u8..12), 1..30)
    ) {
        let harness = harness();
        harness.runtime.block_on(async {
            let (facility_id, bookings, fold) = run(&ops).await;
            wait_applied(&fold).await;
            check(facility_id, &bookings, &fold).await;
        });
    }
}
