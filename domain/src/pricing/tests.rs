use serde_json::json;

use super::*;
use crate::fixtures::{home_id, price, price_list, slot, slot_at, statement};

fn reference() -> PriceListRef {
    PriceListRef {
        home_id: home_id(),
        version: 1,
    }
}

fn item(value: serde_json::Value) -> PriceItem {
    serde_json::from_value(value).unwrap()
}

fn burial_in_the_chapel<'a>(slot: &'a Slot, add_ons: &'a [ItemCode]) -> PricingRequest<'a> {
    PricingRequest {
        service_type: ServiceType::Burial,
        facility_kind: FacilityKind::Chapel,
        slot,
        add_ons,
        adjustments: Vec::new(),
    }
}

fn code(code: &str) -> ItemCode {
    ItemCode::parse(code).unwrap()
}

#[test]
fn a_booking_is_priced_item_by_item_from_the_list() {
    let statement = statement();
    assert_eq!(statement.price_list, Some(reference()));
    assert_eq!(statement.currency, Currency::GBP);
    let lines: Vec<_> = statement
        .lines
        .iter()
        .map(|line| (line.code.as_str(), line.minutes, line.amount_minor))
        .collect();
    assert_eq!(
        lines,
        [("burial", None, 95_000), ("chapel.hour", Some(60), 30_000)]
    );
    assert_eq!(statement.total(), price());
    assert!(statement.adds_up());
}

#[test]
fn hours_are_charged_pro_rata_to_the_minute_and_rounded_up() {
    // 1 h 20 min of a chapel at 30 000 an hour is 40 000; 37 min at 100 an hour is 61.67, so 62.
    let long = slot_at("2027-03-02T10:00:00+00:00", "2027-03-02T11:20:00+00:00");
    let statement = price_list()
        .price(reference(), burial_in_the_chapel(&long, &[]))
        .unwrap();
    assert_eq!(statement.lines[1].minutes, Some(80));
    assert_eq!(statement.lines[1].amount_minor, 40_000);

    let list = PriceList::new(
        Currency::GBP,
        vec![
            item(json!({"kind": "service", "code": "burial", "description": "Burial", "service_type": "burial", "amount_minor": 1})),
            item(json!({"kind": "facility_hour", "code": "chapel", "description": "Chapel", "facility_kind": "chapel", "amount_minor": 100})),
        ],
    )
    .unwrap();
    let short = slot_at("2027-03-02T10:00:00+00:00", "2027-03-02T10:37:00+00:00");
    let statement = list
        .price(reference(), burial_in_the_chapel(&short, &[]))
        .unwrap();
    assert_eq!(statement.lines[1].amount_minor, 62);
    assert_eq!(statement.total_minor, 63);
}

#[test]
fn add_ons_are_charged_once_each_and_must_be_on_the_list() {
    let slot = slot();
    let celebrant = [code("celebrant")];
    let statement = price_list()
        .price(reference(), burial_in_the_chapel(&slot, &celebrant))
        .unwrap();
    assert_eq!(statement.lines[2].code, "celebrant");
    assert_eq!(statement.total_minor, 125_000 + 18_000);

    // Not on the list; named by its index.
    let unknown = [code("celebrant"), code("fireworks")];
    assert_eq!(
        price_list().price(reference(), burial_in_the_chapel(&slot, &unknown)),
        Err(DomainError::UnknownAddOn { index: 1 })
    );
    // The service's item is not an add-on, even though its code is on the list.
    let not_an_add_on = [code("burial")];
    assert_eq!(
        price_list().price(reference(), burial_in_the_chapel(&slot, &not_an_add_on)),
        Err(DomainError::UnknownAddOn { index: 0 })
    );
    let twice = [code("celebrant"), code("celebrant")];
    assert_eq!(
        price_list().price(reference(), burial_in_the_chapel(&slot, &twice)),
        Err(DomainError::AddOnRepeated { index: 1 })
    );
    let many: Vec<_> = (0..=MAX_ADD_ONS).map(|i| code(&format!("a{i}"))).collect();
    assert_eq!(
        price_list().price(reference(), burial_in_the_chapel(&slot, &many)),
        Err(DomainError::TooManyAddOns { max: MAX_ADD_ONS })
    );
}

#[test]
fn a_service_or_facility_the_list_does_not_price_cannot_be_booked() {
    let slot = slot();
    let mut request = burial_in_the_chapel(&slot, &[]);
    request.service_type = ServiceType::Cremation;
    assert_eq!(
        price_list().price(reference(), request.clone()),
        Err(DomainError::ServiceNotOffered {
            service_type: ServiceType::Cremation
        })
    );
    request.service_type = ServiceType::Burial;
    request.facility_kind = FacilityKind::Crematorium;
    let refused = price_list().price(reference(), request).unwrap_err();
    assert_eq!(refused.field(), Some("facility_id"));
    assert_eq!(refused.rule(), "price_list.not_offered");
}

#[test]
fn adjustments_are_recorded_with_their_reason_and_cannot_make_the_total_zero() {
    let slot = slot();
    let mut request = burial_in_the_chapel(&slot, &[]);
    request.adjustments = vec![Adjustment::new(-25_000, "Hardship discount").unwrap()];
    let statement = price_list().price(reference(), request.clone()).unwrap();
    assert_eq!(statement.total_minor, 100_000);
    assert_eq!(statement.adjustments[0].reason, "Hardship discount");
    assert!(statement.adds_up());

    request.adjustments = vec![Adjustment::new(-125_000, "Waived").unwrap()];
    assert_eq!(
        price_list().price(reference(), request.clone()),
        Err(DomainError::ZeroPrice)
    );
    request.adjustments = vec![Adjustment::new(-200_000, "More than the price").unwrap()];
    let refused = price_list()
        .price(reference(), request.clone())
        .unwrap_err();
    assert_eq!(
        (refused.field(), refused.rule()),
        (Some("statement.total"), "booking.price_positive")
    );
    request.adjustments = (0..=MAX_ADJUSTMENTS)
        .map(|_| Adjustment::new(-1, "Goodwill").unwrap())
        .collect();
    assert_eq!(
        price_list().price(reference(), request),
        Err(DomainError::TooManyAdjustments {
            max: MAX_ADJUSTMENTS
        })
    );
}

#[test]
fn an_adjustment_needs_an_amount_and_a_plain_reason() {
    assert_eq!(Adjustment::new(0, "Nothing").unwrap_err().0, "amount_minor");
    assert_eq!(
        Adjustment::new(MAX_AMOUNT_MINOR + 1, "Too much")
            .unwrap_err()
            .0,
        "amount_minor"
    );
    let (field, error) = Adjustment::new(-5, "  ").unwrap_err();
    assert_eq!((field, error.rule), ("reason", "reason.length"));
    let (field, error) = Adjustment::new(-5, "line\nbreak").unwrap_err();
    assert_eq!((field, error.rule), ("reason", "reason.control_characters"));
    let (_, error) = Adjustment::new(-5, &"x".repeat(REASON_MAX_CHARS + 1)).unwrap_err();
    assert_eq!(error.rule, "reason.length");
    assert_eq!(Adjustment::new(-5, " Kept ").unwrap().reason, "Kept");
}

#[test]
fn a_list_is_checked_and_every_broken_rule_named_by_its_field() {
    let violations = PriceList::new(
        Currency::GBP,
        vec![
            item(json!({"kind": "service", "code": "burial", "description": "Burial", "service_type": "burial", "amount_minor": 1})),
            item(json!({"kind": "service", "code": "burial", "description": "Again", "service_type": "burial", "amount_minor": -1})),
            item(json!({"kind": "facility_hour", "code": "a", "description": "A", "facility_kind": "chapel", "amount_minor": 1})),
            item(json!({"kind": "facility_hour", "code": "b", "description": "B", "facility_kind": "chapel", "amount_minor": MAX_AMOUNT_MINOR + 1})),
        ],
    )
    .unwrap_err();
    let named: Vec<_> = violations
        .iter()
        .map(|violation| (violation.field.as_str(), violation.error.rule))
        .collect();
    assert_eq!(
        named,
        [
            ("items[1].code", "price_list.duplicate_code"),
            ("items[1].amount_minor", "price_list.amount_range"),
            ("items[1].service_type", "price_list.duplicate_service"),
            ("items[3].amount_minor", "price_list.amount_range"),
            (
                "items[3].facility_kind",
                "price_list.duplicate_facility_kind"
            ),
        ]
    );
    let empty = PriceList::new(Currency::GBP, Vec::new()).unwrap_err();
    assert_eq!(empty[0].error.rule, "price_list.empty");
}

#[test]
fn codes_are_short_lower_case_words() {
    for good in ["burial", "chapel.hour", "cremation-fee", "a1", "9_x"] {
        assert!(ItemCode::parse(good).is_ok(), "{good}");
    }
    for bad in ["", "Burial", ".hidden", "a b", "é", &"a".repeat(65)] {
        assert_eq!(
            ItemCode::parse(bad).unwrap_err().rule,
            "item_code.format",
            "{bad}"
        );
    }
}

#[test]
fn a_list_and_a_statement_round_trip_and_a_broken_list_does_not_deserialise() {
    let list = price_list();
    let json = serde_json::to_value(&list).unwrap();
    assert_eq!(json["items"][1]["kind"], "facility_hour");
    assert_eq!(serde_json::from_value::<PriceList>(json).unwrap(), list);
    let statement = statement();
    let json = serde_json::to_value(&statement).unwrap();
    assert_eq!(
        serde_json::from_value::<Statement>(json).unwrap(),
        statement
    );

    let duplicate = json!({"currency": "GBP", "items": [
        {"kind": "add_on", "code": "x", "description": "X", "amount_minor": 1},
        {"kind": "add_on", "code": "x", "description": "Y", "amount_minor": 1},
    ]});
    assert!(serde_json::from_value::<PriceList>(duplicate).is_err());
    let unknown_field =
        json!({"kind": "add_on", "code": "x", "description": "X", "amount_minor": 1, "price": 2});
    assert!(serde_json::from_value::<PriceItem>(unknown_field).is_err());
}

#[test]
fn a_price_agreed_before_lists_is_a_statement_of_one_line() {
    let agreed = Statement::agreed(price());
    assert_eq!(agreed.price_list, None);
    assert_eq!(agreed.lines.len(), 1);
    assert_eq!(agreed.lines[0].code, Statement::AGREED_PRICE);
    assert_eq!(agreed.total(), price());
    assert!(agreed.adds_up());
}
