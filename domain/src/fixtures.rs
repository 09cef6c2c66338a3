//! Sample values for tests, in this crate and in others.
//!
//! Everything here is fixed (no random ids, no clock) so that tests and golden files are
//! repeatable. The story: St Mary's Chapel in London, open 09:00-17:00 on weekdays and
//! 10:00-14:00 on Saturdays with a 30-minute turnaround; Ada Lovelace died on 2027-02-20; her
//! son books a burial on Tuesday 2027-03-02 from 10:00 to 11:00 for £1,250.00, on 2027-02-25.
//!
//! [`FacilityEvent::samples`], [`BookingEvent::samples`], [`PaymentEvent::samples`] and
//! [`SagaEvent::samples`] return
//! one valid instance of every event variant, which the `schemas` crate validates its JSON
//! Schemas against (a variant added without a sample fails this crate's own tests).

use chrono::{DateTime, NaiveDate, TimeZone as _, Utc};
use uuid::Uuid;

use crate::booking::{
    BookingCommand, BookingEvent, Deceased, EncryptedPersonal, FacilitySchedule, FamilyContact,
    PersonalData, SealedPersonal,
};
use crate::facility::{FacilityCommand, FacilityEvent, SlotRejectionReason};
use crate::payment::{PaymentCommand, PaymentEvent};
use crate::pricing::{ItemCode, PriceItem, PriceList, PriceListRef, PricingRequest, Statement};
use crate::saga::{SagaEvent, SagaStep};
use crate::values::{
    BookingId, Capacity, Currency, EmailAddress, FacilityId, FacilityKind, FacilityName,
    ItemDescription, Money, OpeningHours, OpeningInterval, PaymentId, PersonName, PhoneNumber,
    Relationship, ServiceType, Slot, TimeZone, TurnaroundBuffer,
};

const VALID: &str = "fixture literals are valid";

/// St Mary's Chapel.
pub fn facility_id() -> FacilityId {
    FacilityId::from_uuid(Uuid::from_u128(0x5f3c_1e2a_8b4d_4c6e_9a01_2b3c_4d5e_6f70))
}

/// Ada Lovelace's burial.
pub fn booking_id() -> BookingId {
    BookingId::from_uuid(Uuid::from_u128(0x6a1f_7a52_34b4_4e6b_9d0e_0c1f_3a9b_2c11))
}

/// Another booking, competing for the chapel.
pub fn other_booking_id() -> BookingId {
    BookingId::from_uuid(Uuid::from_u128(0x7b2e_8c63_45c5_4f7c_8e1f_1d2e_4b0c_3d22))
}

/// The payment of [`booking_id`].
pub fn payment_id() -> PaymentId {
    PaymentId::for_booking(booking_id())
}

/// Europe/London.
pub fn london() -> TimeZone {
    TimeZone::parse("Europe/London").expect(VALID)
}

/// Monday to Friday 09:00-17:00, Saturday 10:00-14:00.
pub fn opening_hours() -> OpeningHours {
    let mut intervals: Vec<OpeningInterval> = ["mon", "tue", "wed", "thu", "fri"]
        .into_iter()
        .map(|day| OpeningInterval::parse(day, "09:00", "17:00").expect(VALID))
        .collect();
    intervals.push(OpeningInterval::parse("sat", "10:00", "14:00").expect(VALID));
    OpeningHours::new(intervals).expect(VALID)
}

/// 30 minutes.
pub fn turnaround() -> TurnaroundBuffer {
    TurnaroundBuffer::from_minutes(30).expect(VALID)
}

/// The time "now" in the story: Thursday 2027-02-25, noon UTC.
pub fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2027, 2, 25, 12, 0, 0)
        .single()
        .expect(VALID)
}

/// A slot from two RFC 3339 timestamps.
pub fn slot_at(start: &str, end: &str) -> Slot {
    Slot::parse(start, end).expect("fixture slot is valid")
}

/// Tuesday 2027-03-02, 10:00 to 11:00 (GMT).
pub fn slot() -> Slot {
    slot_at("2027-03-02T10:00:00+00:00", "2027-03-02T11:00:00+00:00")
}

/// Ada Lovelace, died 2027-02-20.
pub fn deceased() -> Deceased {
    Deceased {
        full_name: PersonName::parse("Ada Lovelace").expect(VALID),
        date_of_death: NaiveDate::from_ymd_opt(2027, 2, 20).expect(VALID),
    }
}

/// Byron King, her son, with an email and a phone number.
pub fn family_contact() -> FamilyContact {
    FamilyContact {
        name: PersonName::parse("Byron King").expect(VALID),
        relationship: Relationship::parse("son").expect(VALID),
        email: EmailAddress::parse("byron@example.org").expect(VALID),
        phone: Some(PhoneNumber::parse("+447700900123").expect(VALID)),
    }
}

/// What the booking's sealed box holds: Ada Lovelace's name and Byron King.
pub fn personal_data() -> PersonalData {
    PersonalData {
        deceased_full_name: deceased().full_name,
        family_contacts: vec![family_contact()],
    }
}

/// A sealed box of the right shape. Its bytes are not a real encryption (the domain cannot
/// encrypt: that is the `privacy` crate's); tests that open boxes seal their own.
pub fn sealed_personal() -> SealedPersonal {
    SealedPersonal::Encrypted(EncryptedPersonal {
        key_id: Uuid::from_u128(0x0d1e_2c3b_4a59_4687_9a0b_1c2d_3e4f_5061),
        nonce: "AAECAwQFBgcICQoLDA0ODxAREhMUFRYX".to_owned(),
        ciphertext: "c2VhbGVkIHBlcnNvbmFsIGRhdGEgKG5vdCByZWFsKQ==".to_owned(),
    })
}

/// £1,250.00.
pub fn price() -> Money {
    Money::new(125_000, Currency::GBP).expect(VALID)
}

/// The funeral home whose price list [`price_list`] is.
pub fn home_id() -> Uuid {
    Uuid::from_u128(0x4e0a_9f1b_2c3d_4e5f_8a6b_7c8d_9e0f_1a2b)
}

/// A home's price list: a burial at £950.00, a chapel at £300.00 an hour, a celebrant at
/// £180.00 as an add-on.
pub fn price_list() -> PriceList {
    let code = |code: &str| ItemCode::parse(code).expect(VALID);
    let text = |text: &str| ItemDescription::parse(text).expect(VALID);
    PriceList::new(
        Currency::GBP,
        vec![
            PriceItem::Service {
                code: code("burial"),
                description: text("Burial service"),
                service_type: ServiceType::Burial,
                amount_minor: 95_000,
            },
            PriceItem::FacilityHour {
                code: code("chapel.hour"),
                description: text("Chapel, per hour"),
                facility_kind: FacilityKind::Chapel,
                amount_minor: 30_000,
            },
            PriceItem::AddOn {
                code: code("celebrant"),
                description: text("Celebrant"),
                amount_minor: 18_000,
            },
        ],
    )
    .expect(VALID)
}

/// [`price_list`] priced for [`request_booking`]'s burial in the chapel for an hour: £1,250.00,
/// which is [`price`].
pub fn statement() -> Statement {
    price_list()
        .price(
            PriceListRef {
                home_id: home_id(),
                version: 1,
            },
            PricingRequest {
                service_type: ServiceType::Burial,
                facility_kind: FacilityKind::Chapel,
                slot: &slot(),
                add_ons: &[],
                adjustments: Vec::new(),
            },
        )
        .expect(VALID)
}

/// Registers St Mary's Chapel.
pub fn register_facility() -> FacilityCommand {
    FacilityCommand::Register {
        facility_id: facility_id(),
        name: FacilityName::parse("St Mary's Chapel").expect(VALID),
        kind: FacilityKind::Chapel,
        capacity: Capacity::new(120).expect(VALID),
        time_zone: london(),
        opening_hours: opening_hours(),
        turnaround: turnaround(),
        funeral_home_id: None,
    }
}

/// The event [`register_facility`] produces.
pub fn facility_registered() -> FacilityEvent {
    FacilityEvent::FacilityRegistered {
        facility_id: facility_id(),
        name: FacilityName::parse("St Mary's Chapel").expect(VALID),
        kind: FacilityKind::Chapel,
        capacity: Capacity::new(120).expect(VALID),
        time_zone: london(),
        opening_hours: opening_hours(),
        turnaround_minutes: turnaround(),
        funeral_home_id: None,
    }
}

/// What the booking aggregate is told about St Mary's Chapel.
pub fn facility_schedule() -> FacilitySchedule {
    FacilitySchedule {
        facility_id: facility_id(),
        time_zone: london(),
        opening_hours: opening_hours(),
    }
}

/// Byron King asks for the burial of Ada Lovelace.
pub fn request_booking() -> BookingCommand {
    BookingCommand::Request {
        booking_id: booking_id(),
        facility: facility_schedule(),
        service_type: ServiceType::Burial,
        slot: slot(),
        deceased: deceased(),
        family_contacts: vec![family_contact()],
        personal: sealed_personal(),
        statement: statement(),
        now: now(),
    }
}

/// The event [`request_booking`] produces.
pub fn booking_requested() -> BookingEvent {
    BookingEvent::BookingRequested {
        booking_id: booking_id(),
        facility_id: facility_id(),
        service_type: ServiceType::Burial,
        slot: slot(),
        date_of_death: deceased().date_of_death,
        personal: sealed_personal(),
        price: price(),
        statement: statement(),
    }
}

/// The gateway captured the price.
pub fn record_capture() -> PaymentCommand {
    PaymentCommand::RecordCapture {
        payment_id: payment_id(),
        booking_id: booking_id(),
        amount: price(),
        gateway_reference: "cap_0001".to_owned(),
    }
}

/// The event [`record_capture`] produces.
pub fn payment_captured() -> PaymentEvent {
    PaymentEvent::PaymentCaptured {
        payment_id: payment_id(),
        booking_id: booking_id(),
        amount: price(),
        gateway_reference: "cap_0001".to_owned(),
    }
}

impl FacilityEvent {
    /// One sample of every facility event variant.
    pub fn samples() -> Vec<FacilityEvent> {
        vec![
            facility_registered(),
            FacilityEvent::OpeningHoursChanged {
                opening_hours: OpeningHours::new(vec![
                    OpeningInterval::parse("mon", "08:30", "12:00").expect(VALID),
                    OpeningInterval::parse("mon", "13:00", "18:00").expect(VALID),
                    OpeningInterval::parse("sun", "11:00", "15:00").expect(VALID),
                ])
                .expect(VALID),
            },
            FacilityEvent::SlotReserved {
                booking_id: booking_id(),
                slot: slot(),
            },
            FacilityEvent::SlotRejected {
                booking_id: other_booking_id(),
                slot: slot_at("2027-03-02T10:30:00+00:00", "2027-03-02T11:30:00+00:00"),
                reason: SlotRejectionReason::OverlapsExisting,
            },
            FacilityEvent::SlotReleased {
                booking_id: booking_id(),
            },
        ]
    }
}

impl BookingEvent {
    /// One sample of every booking event variant.
    pub fn samples() -> Vec<BookingEvent> {
        vec![
            booking_requested(),
            BookingEvent::BookingSlotHeld {},
            BookingEvent::BookingConfirmed {},
            BookingEvent::BookingRejected {
                reason: "overlaps_existing".to_owned(),
            },
            BookingEvent::BookingFailed {
                reason: "payment declined: insufficient funds".to_owned(),
            },
            BookingEvent::BookingCancelled {
                reason: Some("the family chose another date".to_owned()),
                was_confirmed: true,
            },
            BookingEvent::PersonalDataErased {
                reason: Some("retention period ended".to_owned()),
            },
        ]
    }
}

impl PaymentEvent {
    /// One sample of every payment event variant.
    pub fn samples() -> Vec<PaymentEvent> {
        vec![
            payment_captured(),
            PaymentEvent::PaymentDeclined {
                payment_id: payment_id(),
                booking_id: booking_id(),
                amount: price(),
                reason: "insufficient funds".to_owned(),
            },
            PaymentEvent::PaymentRefunded {
                amount: price(),
                gateway_reference: "ref_0001".to_owned(),
            },
        ]
    }
}

impl SagaEvent {
    /// One sample of every saga event variant.
    pub fn samples() -> Vec<SagaEvent> {
        vec![
            SagaEvent::SagaParked {
                booking_id: booking_id(),
                step: SagaStep::Refund,
                reason: "the gateway refused the refund: 422 more than is left".to_owned(),
            },
            SagaEvent::SagaRetryRequested {
                booking_id: booking_id(),
                reason: "the provider fixed the capture's record".to_owned(),
            },
            SagaEvent::SagaStepSkipped {
                booking_id: booking_id(),
                step: SagaStep::NotifyFailure,
                reason: "the director phoned the family".to_owned(),
            },
            SagaEvent::SagaResolvedByHand {
                booking_id: booking_id(),
                reason: "refunded outside the system".to_owned(),
            },
        ]
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::{Value, json};

    use super::*;
    use crate::DomainEvent;

    /// Checks that the samples cover the catalogue, that the serde tag is the event type, and
    /// that an event rebuilds from its wire parts.
    fn check_samples<E: DomainEvent>(samples: &[E]) {
        let covered: BTreeSet<_> = samples
            .iter()
            .map(|event| (event.event_type(), event.event_version()))
            .collect();
        let catalogue: BTreeSet<_> = E::catalogue().iter().copied().collect();
        assert_eq!(
            covered, catalogue,
            "samples must cover every catalogued event"
        );
        assert_eq!(
            catalogue.len(),
            E::catalogue().len(),
            "catalogue has duplicates"
        );
        for event in samples {
            let wire = serde_json::to_value(event).unwrap();
            let Value::Object(fields) = &wire else {
                panic!("{wire} is not an object")
            };
            assert_eq!(fields.len(), 2, "{wire}");
            assert_eq!(wire["event_type"], json!(event.event_type()));
            assert!(
                wire["data"].is_object(),
                "payload of {wire} is not an object"
            );
            let rebuilt: E = serde_json::from_value(json!({
                "event_type": event.event_type(),
                "data": wire["data"].clone(),
            }))
            .unwrap();
            assert_eq!(&rebuilt, event);
        }
    }

    #[test]
    fn facility_samples_cover_every_event() {
        check_samples(&FacilityEvent::samples());
    }

    #[test]
    fn booking_samples_cover_every_event() {
        check_samples(&BookingEvent::samples());
    }

    #[test]
    fn payment_samples_cover_every_event() {
        check_samples(&PaymentEvent::samples());
    }

    #[test]
    fn saga_samples_cover_every_event() {
        check_samples(&SagaEvent::samples());
    }

    #[test]
    fn the_story_is_consistent() {
        assert!(opening_hours().contains(&london(), &slot()));
        assert!(slot().start_utc() > now());
        assert!(deceased().date_of_death < now().date_naive());
    }
}
