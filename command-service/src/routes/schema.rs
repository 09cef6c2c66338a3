//! OpenAPI schemas of request fields whose rules are a domain vocabulary: built from the
//! vocabulary itself, so the document lists exactly what the domain accepts and cannot drift
//! from it. (A client, and the fuzzer, can then send valid values, not guess them.)

use domain::values::{Currency, FacilityKind, ServiceType};
use utoipa::openapi::{
    Object, ObjectBuilder,
    schema::{SchemaType, Type},
};

fn one_of<S: Into<String>>(values: impl IntoIterator<Item = S>, example: &str) -> Object {
    ObjectBuilder::new()
        .schema_type(SchemaType::Type(Type::String))
        .enum_values(Some(values.into_iter().map(Into::into)))
        .examples([example])
        .build()
}

/// `chapel`, `crematorium`, ...
pub(crate) fn facility_kinds() -> Object {
    one_of(FacilityKind::ALL.iter().map(|kind| kind.as_str()), "chapel")
}

/// `burial`, `cremation`, ...
pub(crate) fn service_types() -> Object {
    one_of(ServiceType::ALL.iter().map(|kind| kind.as_str()), "burial")
}

/// One of `values`, or `null` (an optional field that serde reads `null` as absent for).
fn one_of_or_null<S: Into<String>>(values: impl IntoIterator<Item = S>, example: &str) -> Object {
    let values = values
        .into_iter()
        .map(|value| serde_json::Value::String(value.into()))
        .chain([serde_json::Value::Null]);
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::String, Type::Null]))
        .enum_values(Some(values))
        .examples([example])
        .build()
}

/// `chapel`, `crematorium`, ... or `null`.
pub(crate) fn facility_kinds_or_null() -> Object {
    one_of_or_null(FacilityKind::ALL.iter().map(|kind| kind.as_str()), "chapel")
}

/// `burial`, `cremation`, ... or `null`.
pub(crate) fn service_types_or_null() -> Object {
    one_of_or_null(ServiceType::ALL.iter().map(|kind| kind.as_str()), "burial")
}

/// The ISO 4217 codes the domain knows.
pub(crate) fn currencies() -> Object {
    one_of(Currency::all().map(Currency::code), "GBP")
}

/// `mon` to `sun`.
pub(crate) fn weekdays() -> Object {
    one_of(["mon", "tue", "wed", "thu", "fri", "sat", "sun"], "mon")
}
