//! The log evolves without breaking its past (docs/evolution.md): released schemas are frozen,
//! every upcaster turns every record of its version into a valid record of the next, and the
//! first release's records, read by today's registry, fold into the states that release reached.

#![allow(clippy::unwrap_used)] // A test fails loudly on any unexpected error; that is the point.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use domain::{
    Aggregate, booking::Booking, booking::BookingEvent, facility::Facility,
    facility::FacilityEvent, payment::Payment, saga::Saga,
};
use schemas::{
    AggregateType, ContractViolation, EventEnvelope, SchemaRegistry,
    registry::{ENVELOPE_SCHEMA, EVENT_SCHEMAS},
    upcast::{UPCASTERS, step},
};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const RELEASE_1: &str = include_str!("../fixtures/release-1.jsonl");
const RELEASE_1_STATES: &str = include_str!("../fixtures/release-1.states.json");
const RELEASED: &str = include_str!("../released.sha256");

fn registry() -> SchemaRegistry {
    SchemaRegistry::load().expect("every checked-in schema compiles")
}

/// The first release's records, each as its document.
fn release_1() -> Vec<Value> {
    RELEASE_1
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// A schema's text without what rule 1 lets change: every `description`, and the layout (keys
/// sorted, no whitespace). Its SHA-256, in hex, is what `released.sha256` records.
fn frozen_digest(text: &str) -> String {
    fn strip(value: &mut Value) {
        match value {
            Value::Object(fields) => {
                fields.remove("description");
                fields.values_mut().for_each(strip);
            }
            Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    fn canonical(value: &Value, out: &mut String) {
        match value {
            Value::Object(fields) => {
                let sorted: BTreeMap<_, _> = fields.iter().collect();
                out.push('{');
                for (i, (key, value)) in sorted.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&Value::String(key.clone()).to_string());
                    out.push(':');
                    canonical(value, out);
                }
                out.push('}');
            }
            Value::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    canonical(item, out);
                }
                out.push(']');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    let mut schema: Value = serde_json::from_str(text).unwrap();
    strip(&mut schema);
    let mut text = String::new();
    canonical(&schema, &mut text);
    Sha256::digest(text.as_bytes())
        .iter()
        .fold(String::new(), |mut hex, byte| {
            let _ = write!(hex, "{byte:02x}");
            hex
        })
}

/// Every schema file this build embeds, by its path under `schemas/`, with its text.
fn embedded_schemas() -> BTreeMap<String, &'static str> {
    let mut schemas: BTreeMap<String, &'static str> = EVENT_SCHEMAS
        .iter()
        .map(|file| {
            (
                format!(
                    "events/{}/{}.v{}.json",
                    file.aggregate, file.event_type, file.event_version
                ),
                file.text,
            )
        })
        .collect();
    schemas.insert("envelope.v1.json".to_owned(), ENVELOPE_SCHEMA);
    schemas
}

#[test]
fn no_released_schema_has_changed_and_every_schema_is_recorded() {
    let embedded = embedded_schemas();
    let mut recorded = BTreeSet::new();
    for line in RELEASED.lines().filter(|line| !line.starts_with('#')) {
        let (digest, path) = line.split_once("  ").unwrap();
        let text = embedded
            .get(path)
            .unwrap_or_else(|| panic!("{path} was released: it must stay embedded for ever"));
        assert_eq!(
            frozen_digest(text),
            digest,
            "{path} was released and must never change (only `description` may): \
             copy it to the next version and change that instead (docs/evolution.md)"
        );
        recorded.insert(path.to_owned());
    }
    for (path, text) in &embedded {
        assert!(
            recorded.contains(path),
            "{path} is not recorded in schemas/released.sha256; add the line\n{}  {path}",
            frozen_digest(text)
        );
    }
}

#[test]
fn the_frozen_digest_ignores_descriptions_and_layout_but_nothing_else() {
    let schema = r#"{"type": "object", "description": "a", "properties": {"n": {"type": "integer", "maximum": 5}}}"#;
    let reworded =
        r#"{"properties":{"n":{"maximum":5,"type":"integer","description":"b"}},"type":"object"}"#;
    let widened = r#"{"type": "object", "description": "a", "properties": {"n": {"type": "integer", "maximum": 6}}}"#;
    assert_eq!(frozen_digest(schema), frozen_digest(reworded));
    assert_ne!(frozen_digest(schema), frozen_digest(widened));
}

#[test]
fn every_version_but_the_newest_has_a_step_up_and_every_step_starts_at_a_known_version() {
    let registry = registry();
    let newest: BTreeMap<&str, u16> = registry.newest_events().collect();
    for (event_type, version) in registry.known_events() {
        let has_step = step(event_type, version).is_some();
        assert_eq!(
            has_step,
            version < newest[event_type],
            "{event_type} v{version}: a step up exists exactly when a newer version does"
        );
    }
    let known: BTreeSet<_> = registry.known_events().collect();
    for upcaster in UPCASTERS {
        assert!(known.contains(&(upcaster.event_type, upcaster.from_version)));
        assert!(known.contains(&(upcaster.event_type, upcaster.from_version + 1)));
    }
}

#[test]
fn the_fixture_holds_every_event_type_in_the_first_releases_format() {
    let registry = registry();
    let types: BTreeSet<(String, u64)> = release_1()
        .iter()
        .map(|record| {
            (
                record["event_type"].as_str().unwrap().to_owned(),
                record["event_version"].as_u64().unwrap(),
            )
        })
        .collect();
    // Types introduced after the first release cannot be in its log.
    let introduced_later = ["PersonalDataErased"];
    let newest_types: BTreeSet<String> = registry
        .newest_events()
        .map(|(event_type, _)| event_type.to_owned())
        .filter(|event_type| !introduced_later.contains(&event_type.as_str()))
        .collect();
    let fixture_types: BTreeSet<String> = types.iter().map(|(t, _)| t.clone()).collect();
    assert_eq!(
        fixture_types, newest_types,
        "one record of every type at least"
    );
    assert!(types.iter().all(|(_, version)| *version == 1), "{types:?}");
}

#[test]
fn every_step_turns_every_fixture_record_of_its_version_into_a_valid_record_of_the_next() {
    let registry = registry();
    let mut stepped = 0;
    for document in release_1() {
        let mut envelope = registry.validate(&document).unwrap();
        while let Some(upcaster) = step(&envelope.event_type, envelope.event_version) {
            let Value::Object(data) = envelope.data.clone() else {
                panic!("a validated payload is an object")
            };
            envelope.data = Value::Object((upcaster.apply)(&envelope, data));
            envelope.event_version += 1;
            registry
                .validate_payload(&envelope)
                .unwrap_or_else(|violation| {
                    panic!("{} does not upcast validly: {violation}", envelope.event_id)
                });
            stepped += 1;
        }
    }
    assert!(stepped > 0, "the fixture exercises at least one step");
}

/// One stream's events decoded through the registry and folded, as JSON.
fn replay<A: Aggregate>(registry: &SchemaRegistry, stream: &[EventEnvelope]) -> Value
where
    A::State: serde::Serialize,
{
    let events: Vec<A::Event> = stream
        .iter()
        .map(|envelope| registry.decode(envelope).unwrap())
        .collect();
    serde_json::to_value(A::replay(&events)).unwrap()
}

/// Folds every stream of `records` with today's registry into its state, as JSON by
/// `<aggregate type>/<aggregate id>`.
fn fold(registry: &SchemaRegistry, records: &[Value]) -> BTreeMap<String, Value> {
    let mut streams: BTreeMap<(AggregateType, uuid::Uuid), Vec<EventEnvelope>> = BTreeMap::new();
    for document in records {
        let envelope = registry.validate(document).unwrap();
        streams
            .entry((envelope.aggregate_type, envelope.aggregate_id))
            .or_default()
            .push(envelope);
    }
    streams
        .iter()
        .map(|((kind, id), stream)| {
            let state = match kind {
                AggregateType::Facility => replay::<Facility>(registry, stream),
                AggregateType::Booking => replay::<Booking>(registry, stream),
                AggregateType::Payment => replay::<Payment>(registry, stream),
                AggregateType::Saga => replay::<Saga>(registry, stream),
            };
            (format!("{kind}/{id}"), state)
        })
        .collect()
}

/// A booking state as the first release's fold wrote it: `BookingRequested` v2 moved the date of
/// death up and sealed the people in `personal`; a v1 record's upcast keeps them as plaintext, so
/// the first release's shape is rebuilt from it and compared whole. Any other change of meaning
/// (a lost contact, a changed date, a state that is not plaintext) still fails.
///
/// A facility's profile gained `funeral_home_id` with tenancy: a first-release facility has none,
/// so the field must be there and null, and is then dropped to compare the rest.
fn as_release_1(mut state: Value) -> Value {
    if let Some(profile) = state.get_mut("registered").and_then(Value::as_object_mut) {
        let home = profile.remove("funeral_home_id");
        assert_eq!(
            home,
            Some(Value::Null),
            "a first-release facility folds into a profile without a home"
        );
    }
    let Some(details) = state
        .pointer_mut("/booking/0")
        .and_then(Value::as_object_mut)
    else {
        return state;
    };
    let date = details.remove("date_of_death").unwrap();
    let personal = details.remove("personal").unwrap();
    let plaintext = &personal["plaintext"];
    details.insert(
        "deceased".to_owned(),
        json!({"full_name": plaintext["deceased_full_name"], "date_of_death": date}),
    );
    details.insert(
        "family_contacts".to_owned(),
        plaintext["family_contacts"].clone(),
    );
    state
}

#[test]
fn the_first_releases_log_folds_into_the_states_that_release_reached() {
    let states: BTreeMap<String, Value> = fold(&registry(), &release_1())
        .into_iter()
        .map(|(stream, state)| (stream, as_release_1(state)))
        .collect();
    if std::env::var_os("FM_BLESS_RELEASE_1").is_some() {
        std::fs::write(
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/fixtures/release-1.states.json"
            ),
            serde_json::to_string_pretty(&states).unwrap() + "\n",
        )
        .unwrap();
    }
    let expected: BTreeMap<String, Value> = serde_json::from_str(RELEASE_1_STATES).unwrap();
    assert_eq!(states.len(), 10, "every stream of the fixture");
    assert_eq!(states, expected);
}

#[test]
fn a_v1_registration_reads_as_v2_with_no_funeral_home_and_a_v2_one_keeps_its_home() {
    let registry = registry();
    let v1 = release_1()
        .into_iter()
        .find(|record| record["event_type"] == "FacilityRegistered")
        .unwrap();
    let envelope = registry.validate(&v1).unwrap();
    assert_eq!(envelope.event_version, 1);
    let upcast = registry.upcast(&envelope).unwrap();
    assert_eq!(upcast.event_version, 2);
    assert_eq!(upcast.data["funeral_home_id"], Value::Null);
    assert_eq!(upcast.event_id, envelope.event_id);
    let FacilityEvent::FacilityRegistered {
        funeral_home_id, ..
    } = registry.decode(&envelope).unwrap()
    else {
        panic!("a registration")
    };
    assert_eq!(funeral_home_id, None);

    let home = uuid::Uuid::from_u128(7);
    let mut v2 = v1.clone();
    v2["event_version"] = json!(2);
    v2["data"]["funeral_home_id"] = json!(home);
    let FacilityEvent::FacilityRegistered {
        funeral_home_id, ..
    } = registry.decode(&registry.validate(&v2).unwrap()).unwrap()
    else {
        panic!("a registration")
    };
    assert_eq!(funeral_home_id.map(uuid::Uuid::from), Some(home));

    // Each version is held to its own schema: v1 never had the field, v2 must have it.
    let mut v1_with_home = v1;
    v1_with_home["data"]["funeral_home_id"] = json!(home);
    let mut v2_without = v2;
    v2_without["data"]
        .as_object_mut()
        .unwrap()
        .remove("funeral_home_id");
    for document in [v1_with_home, v2_without] {
        assert!(matches!(
            registry.validate(&document),
            Err(ContractViolation::Payload { .. })
        ));
    }
}

#[test]
fn a_booking_priced_before_price_lists_reads_as_a_statement_of_its_agreed_price() {
    let registry = registry();
    let v1 = release_1()
        .into_iter()
        .find(|record| record["event_type"] == "BookingRequested")
        .unwrap();
    let agreed = v1["data"]["price"].clone();
    let envelope = registry.validate(&v1).unwrap();
    let upcast = registry.upcast(&envelope).unwrap();
    assert_eq!(upcast.event_version, 3);
    let statement = &upcast.data["statement"];
    assert_eq!(statement["price_list"], Value::Null);
    assert_eq!(statement["lines"].as_array().map(Vec::len), Some(1));
    assert_eq!(statement["lines"][0]["code"], "agreed_price");
    assert_eq!(
        statement["lines"][0]["amount_minor"],
        agreed["amount_minor"]
    );
    assert_eq!(statement["total_minor"], agreed["amount_minor"]);
    assert_eq!(statement["currency"], agreed["currency"]);
    let BookingEvent::BookingRequested {
        price, statement, ..
    } = registry.decode(&envelope).unwrap()
    else {
        panic!("a booking request")
    };
    assert_eq!(statement.total(), price);
    assert!(statement.adds_up());

    // A v3 record must carry its statement; a v2 one must not.
    let mut v3_without = upcast.clone();
    v3_without.data.as_object_mut().unwrap().remove("statement");
    let v3_without = serde_json::to_value(&v3_without).unwrap();
    assert!(matches!(
        registry.validate(&v3_without),
        Err(ContractViolation::Payload { .. })
    ));
    let mut v2_with = serde_json::to_value(&upcast).unwrap();
    v2_with["event_version"] = json!(2);
    assert!(matches!(
        registry.validate(&v2_with),
        Err(ContractViolation::Payload { .. })
    ));
}

#[test]
fn an_envelope_field_a_later_release_adds_is_ignored_but_a_known_one_stays_strict() {
    let registry = registry();
    let mut record = release_1().swap_remove(0);
    record["tenant"] = json!("home-7");
    let envelope = registry.validate(&record).unwrap();
    assert!(
        serde_json::to_value(&envelope)
            .unwrap()
            .get("tenant")
            .is_none()
    );

    record["actor"]["nickname"] = json!("x");
    assert!(matches!(
        registry.validate(&record),
        Err(ContractViolation::Envelope { .. })
    ));
}
