//! Who sees which rows: the caller's reach as SQL, added to every query beside its own filters,
//! so that a page is cut from what the caller may see, never filtered after it was fetched
//! (docs/identity.md, "Tenancy").
//!
//! - A director (and a group administrator) sees the facilities of the homes they act for
//!   (`facilities.home = ANY($homes)`, through the index `facilities_by_home`; a facility
//!   registered before homes were named has no home in the read model and counts as the
//!   deployment's default home), and the bookings at those facilities. Anything else answers
//!   404 by id and is absent from lists.
//! - A family sees every facility (it picks where to book) and the bookings it requested.
//! - `ops` sees every home, with the bookings' personal data masked; `system` sees everything.

use platform::auth::{Caller, Homes};
use schemas::Role;
use sqlx::{Postgres, QueryBuilder};
use uuid::Uuid;

/// Adds to `query` the condition that facility row `f` is the caller's to see.
pub(crate) fn facility_scope(
    query: &mut QueryBuilder<'_, Postgres>,
    caller: &Caller,
    default_home: Uuid,
) {
    if caller.role != Role::Director {
        return;
    }
    let Homes::Only(homes) = &caller.homes else {
        return;
    };
    query
        .push(" AND (f.home = ANY(")
        .push_bind(homes.iter().copied().collect::<Vec<Uuid>>())
        .push(")");
    if homes.contains(&default_home) {
        query.push(" OR f.home IS NULL");
    }
    query.push(")");
}

/// Adds to `query` the condition that booking row `b` is the caller's to see: a family's own, a
/// director's at a facility of their homes.
pub(crate) fn booking_scope(
    query: &mut QueryBuilder<'_, Postgres>,
    caller: &Caller,
    default_home: Uuid,
) {
    match caller.role {
        Role::Family => {
            query
                .push(" AND b.requested_by = ")
                .push_bind(caller.subject.clone());
        }
        Role::Director if caller.homes != Homes::All => {
            query.push(" AND b.facility_id IN (SELECT f.facility_id FROM facilities f WHERE true");
            facility_scope(query, caller, default_home);
            query.push(")");
        }
        Role::Director | Role::Ops | Role::System => {}
    }
}

/// Whether the caller sees a booking's personal data in the read model: not `ops`, who sees
/// every home's operations but not who the people are (docs/identity.md).
pub(crate) fn masks_personal_data(caller: &Caller) -> bool {
    caller.role == Role::Ops
}

/// Whether the caller sees which booking holds a slot in a facility's calendar: staff of the
/// facility's home (the query already refused a director of another home), ops and the system;
/// a family sees busy windows only, never another family's booking ids.
pub(crate) fn sees_booking_ids(caller: &Caller) -> bool {
    caller.role != Role::Family
}
