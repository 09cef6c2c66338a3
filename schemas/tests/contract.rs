//! The wire contract holds: every event the domain can emit has a checked-in schema, validates
//! against it, and reads back equal; anything else is refused with a reason.

#![allow(clippy::unwrap_used)] // A test fails loudly on any unexpected error; that is the point.

use std::collections::BTreeSet;

use chrono::{TimeZone, Utc};
use domain::{
    DomainEvent, booking::BookingEvent, facility::FacilityEvent, payment::PaymentEvent,
    saga::SagaEvent,
};
use schemas::{
    Actor, AggregateType, ContractViolation, EventEnvelope, EventMetadata, Idempotency, Role,
    SchemaRegistry, registry::EVENT_SCHEMAS,
};
use serde_json::{Value, json};
use uuid::Uuid;

fn registry() -> SchemaRegistry {
    SchemaRegistry::load().expect("every checked-in schema compiles")
}

fn metadata() -> EventMetadata {
    EventMetadata {
        correlation_id: Uuid::from_u128(1),
        causation_id: Uuid::from_u128(2),
        actor: Actor {
            subject: "director-1".into(),
            role: Role::Director,
        },
        occurred_at: Utc.with_ymd_and_hms(2027, 1, 5, 9, 30, 0).unwrap(),
        idempotency: Some(Idempotency {
            key: "retry-7".into(),
            fingerprint: "ab".repeat(32),
        }),
    }
}

fn envelope_of<E: DomainEvent>(aggregate: AggregateType, event: &E) -> EventEnvelope {
    EventEnvelope::wrap(aggregate, Uuid::from_u128(42), 3, event, &metadata()).expect("serialises")
}

/// Serialises, validates the document and decodes it back, as a consumer on the wire would.
fn round_trip<E: DomainEvent>(aggregate: AggregateType, event: &E) -> E {
    let registry = registry();
    let bytes = serde_json::to_vec(&envelope_of(aggregate, event)).unwrap();
    let envelope = registry.validate_bytes(&bytes).unwrap_or_else(|violation| {
        panic!(
            "{} does not match its schema: {violation}",
            event.event_type()
        )
    });
    registry.decode(&envelope).expect("decodes")
}

fn all_samples_round_trip<E: DomainEvent>(aggregate: AggregateType, samples: Vec<E>) {
    let types: BTreeSet<_> = samples.iter().map(DomainEvent::event_type).collect();
    let catalogue: BTreeSet<_> = E::catalogue()
        .iter()
        .map(|(event_type, _)| *event_type)
        .collect();
    assert_eq!(types, catalogue, "the samples must cover every variant");
    for event in samples {
        assert_eq!(round_trip(aggregate, &event), event);
    }
}

#[test]
fn every_facility_event_validates_and_reads_back_equal() {
    all_samples_round_trip(AggregateType::Facility, FacilityEvent::samples());
}

#[test]
fn every_booking_event_validates_and_reads_back_equal() {
    all_samples_round_trip(AggregateType::Booking, BookingEvent::samples());
}

#[test]
fn every_payment_event_validates_and_reads_back_equal() {
    all_samples_round_trip(AggregateType::Payment, PaymentEvent::samples());
}

#[test]
fn every_saga_event_validates_and_reads_back_equal() {
    all_samples_round_trip(AggregateType::Saga, SagaEvent::samples());
}

#[test]
fn the_schemas_cover_exactly_the_events_the_domain_can_emit() {
    let emitted: BTreeSet<(&str, u16)> = FacilityEvent::catalogue()
        .iter()
        .chain(BookingEvent::catalogue())
        .chain(PaymentEvent::catalogue())
        .chain(SagaEvent::catalogue())
        .copied()
        .collect();
    let newest: BTreeSet<(&str, u16)> = registry().newest_events().collect();
    assert_eq!(emitted, newest);
}

#[test]
fn every_schema_file_on_disk_is_embedded_and_every_embedded_one_is_on_disk() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("events");
    let mut on_disk = BTreeSet::new();
    for aggregate in std::fs::read_dir(&root).unwrap() {
        let aggregate = aggregate.unwrap();
        for file in std::fs::read_dir(aggregate.path()).unwrap() {
            let name = file.unwrap().file_name().into_string().unwrap();
            on_disk.insert(format!(
                "{}/{name}",
                aggregate.file_name().to_string_lossy()
            ));
        }
    }
    let embedded: BTreeSet<String> = EVENT_SCHEMAS
        .iter()
        .map(|file| {
            format!(
                "{}/{}.v{}.json",
                file.aggregate, file.event_type, file.event_version
            )
        })
        .collect();
    assert_eq!(on_disk, embedded);
}

/// The sample `BookingRequested` envelope as a JSON document, for tampering with.
fn booking_requested_document() -> Value {
    let event = BookingEvent::samples().into_iter().next().unwrap();
    serde_json::to_value(envelope_of(AggregateType::Booking, &event)).unwrap()
}

fn violation(document: &Value) -> ContractViolation {
    registry().validate(document).expect_err("must be refused")
}

#[test]
fn an_event_that_grew_a_field_its_schema_does_not_know_is_refused() {
    let mut document = booking_requested_document();
    document["data"]["discount"] = json!(10);
    assert!(matches!(
        violation(&document),
        ContractViolation::Payload { .. }
    ));
}

#[test]
fn an_event_that_lost_or_renamed_a_field_is_refused() {
    let mut document = booking_requested_document();
    let price = document["data"]
        .as_object_mut()
        .unwrap()
        .remove("price")
        .unwrap();
    document["data"]["cost"] = price;
    assert!(matches!(
        violation(&document),
        ContractViolation::Payload { .. }
    ));
}

#[test]
fn an_event_whose_field_changed_type_is_refused_naming_the_place() {
    let mut document = booking_requested_document();
    document["data"]["price"]["amount_minor"] = json!(1250.50);
    let ContractViolation::Payload { path, .. } = violation(&document) else {
        panic!("expected a payload violation")
    };
    assert_eq!(path, "/price/amount_minor");
}

#[test]
fn a_payload_that_breaks_a_value_rule_is_refused() {
    let mut document = booking_requested_document();
    document["data"]["date_of_death"] = json!("the twentieth");
    assert!(matches!(
        violation(&document),
        ContractViolation::Payload { .. }
    ));
}

#[test]
fn a_violation_for_logs_names_the_place_but_not_the_value() {
    let mut document = booking_requested_document();
    document["data"]["date_of_death"] = json!("byron.at.example.org");
    let violation = violation(&document);
    // The full text (the dead letter's reason) quotes the value; the log form must not.
    assert!(
        violation.to_string().contains("byron.at.example.org"),
        "{violation}"
    );
    let redacted = violation.without_values();
    assert!(!redacted.contains("byron"), "{redacted}");
    assert!(
        redacted.starts_with("BookingRequested v3 payload invalid at '/date_of_death'"),
        "{redacted}"
    );

    let decode = ContractViolation::Decode {
        event_type: "BookingRequested".into(),
        event_version: 1,
        message: "invalid type: string \"+447700900123\"".into(),
    };
    assert_eq!(
        decode.without_values(),
        "BookingRequested v1 payload does not decode"
    );
    let envelope = ContractViolation::Envelope {
        path: "/actor/subject".into(),
        message: "\"Byron King\" is too long".into(),
    };
    assert_eq!(
        envelope.without_values(),
        "envelope invalid at '/actor/subject'"
    );
}

#[test]
fn an_unknown_event_type_or_version_is_refused() {
    let mut document = booking_requested_document();
    document["event_version"] = json!(4);
    assert!(matches!(
        violation(&document),
        ContractViolation::UnknownEvent { .. }
    ));
    document["event_version"] = json!(1);
    document["event_type"] = json!("BookingTeleported");
    assert!(matches!(
        violation(&document),
        ContractViolation::UnknownEvent { .. }
    ));
}

#[test]
fn a_broken_envelope_is_refused_naming_the_field() {
    for (field, value) in [
        ("aggregate_id", json!("not-a-uuid")),
        ("sequence", json!(0)),
        ("aggregate_type", json!("hearse")),
        ("occurred_at", json!("yesterday")),
    ] {
        let mut document = booking_requested_document();
        document[field] = value;
        let ContractViolation::Envelope { path, .. } = violation(&document) else {
            panic!("{field}: expected an envelope violation")
        };
        assert_eq!(path, format!("/{field}"));
    }
    let mut document = booking_requested_document();
    document.as_object_mut().unwrap().remove("actor");
    assert!(matches!(
        violation(&document),
        ContractViolation::Envelope { .. }
    ));
}

#[test]
fn every_event_type_belongs_to_the_aggregate_its_schema_names() {
    let registry = registry();
    for (aggregate, catalogue) in [
        (AggregateType::Facility, FacilityEvent::catalogue()),
        (AggregateType::Booking, BookingEvent::catalogue()),
        (AggregateType::Payment, PaymentEvent::catalogue()),
        (AggregateType::Saga, SagaEvent::catalogue()),
    ] {
        for (event_type, _) in catalogue {
            assert_eq!(
                registry.aggregate_of(event_type),
                Some(aggregate),
                "{event_type}"
            );
        }
    }
    for file in EVENT_SCHEMAS {
        let schema: Value = serde_json::from_str(file.text).unwrap();
        assert_eq!(
            schema["x-fm-aggregate"],
            json!(file.aggregate),
            "{}",
            file.event_type
        );
    }
}

/// The review's finding (issue 14): a `SlotReleased` with a valid payload in a booking envelope
/// on the booking topic passed every schema, and the saga runner, unable to decode it into a
/// booking event, retried its batch for ever.
#[test]
fn an_event_type_of_another_aggregate_is_refused_even_when_its_payload_is_valid() {
    let slot_released = FacilityEvent::samples()
        .into_iter()
        .find(|event| event.event_type() == "SlotReleased")
        .unwrap();
    let mut document =
        serde_json::to_value(envelope_of(AggregateType::Facility, &slot_released)).unwrap();
    assert!(registry().validate(&document).is_ok());
    document["aggregate_type"] = json!("booking");
    let refused = violation(&document);
    assert_eq!(
        refused,
        ContractViolation::WrongAggregate {
            event_type: "SlotReleased".into(),
            aggregate_type: "booking".into(),
            belongs_to: "facility".into(),
        }
    );
    assert_eq!(
        refused.to_string(),
        "SlotReleased is a facility event, not a booking event"
    );
}

/// What passes every schema but no reader can use: a facility in a time zone that does not
/// exist. `check_bytes` (what a retry would meet) refuses it; `validate_bytes` alone does not.
#[test]
fn a_payload_that_passes_its_schema_but_does_not_decode_is_refused_by_the_full_check() {
    let registered = FacilityEvent::samples().into_iter().next().unwrap();
    let mut document =
        serde_json::to_value(envelope_of(AggregateType::Facility, &registered)).unwrap();
    document["data"]["time_zone"] = json!("Mars/Olympus_Mons");
    let bytes = serde_json::to_vec(&document).unwrap();
    let registry = registry();
    assert!(registry.validate_bytes(&bytes).is_ok());
    let refused = registry.check_bytes(&bytes).expect_err("refused");
    assert!(
        matches!(&refused, ContractViolation::Decode { event_type, .. } if event_type == "FacilityRegistered"),
        "{refused}"
    );
    let valid = serde_json::to_vec(&envelope_of(AggregateType::Facility, &registered)).unwrap();
    assert!(registry.check_bytes(&valid).is_ok());
}

#[test]
fn bytes_that_are_not_json_are_refused() {
    let error = registry()
        .validate_bytes(b"\x00\x9f garbage")
        .expect_err("refused");
    assert!(matches!(error, ContractViolation::NotJson(_)));
}
