//! A batch folded in memory and written set-based, in the batch's transaction
//! (docs/read-side.md, "Batch folding").
//!
//! 1. Every record is checked without the database (envelope, topic, its version's schema)
//!    and decoded; a record that breaks the contract is refused here, and the rest of the batch
//!    goes on.
//! 2. With one statement per table, the rows of every aggregate the batch touches are loaded and
//!    locked (`SELECT … FOR UPDATE`), and the parked ones among them are found; the personal
//!    data of the batch's booking requests is opened meanwhile, their data keys loaded with one
//!    query.
//! 3. The records are folded in log order: each goes through the shared admission rule against
//!    its row's version **as folded so far**, so a booking's request, slot and confirmation in
//!    one batch are three `Next`s in a row, and a redelivered one is a duplicate as before.
//! 4. What changed is written with one upsert per table ([`crate::read_models::Fold::flush`]).
//!
//! Anything unusual takes the one-record path of [`crate::parking`]: a record of a parked
//! aggregate, a gap, an event this release does not know, personal data that does not open.
//! Everything folded so far is flushed first, so that path finds the database exactly as the
//! records before it left it, and every later record of that aggregate in the batch takes the
//! same path. So the transaction ends as applying the records one by one would have left it.

use std::collections::{BTreeSet, HashSet};

use batch_consumer::RecordOutcome;
use event_log::{LogPosition, Topics, resolution::Admission};
use futures::{StreamExt, stream};
use privacy::KeyStore;
use schemas::{AggregateType, EventEnvelope, SchemaRegistry};
use sqlx::PgConnection;
use tracing::Instrument;
use uuid::Uuid;

use crate::{
    parking::{self, Projected},
    read_models::{ApplyError, Decoded, Fold, bookings},
};

#[cfg(test)]
mod tests;

/// How many booking requests' personal data are opened at once (each may read its data key).
const OPENING_AT_ONCE: usize = 8;

/// One record of a batch: its payload, where it was read, and the span its work is traced in.
pub(crate) struct Input<'a> {
    pub(crate) payload: &'a [u8],
    pub(crate) position: &'a LogPosition,
    pub(crate) span: tracing::Span,
}

/// A record after step 1.
// One per record of one batch, for that batch only: boxing the decoded event (a booking request
// with its statement is the large one) would add an allocation per record for nothing.
#[allow(clippy::large_enum_variant)]
enum Checked {
    Refused(Projected),
    Valid {
        envelope: Box<EventEnvelope>,
        /// An unknown (type, version) is parked, other violations refused; decided in order,
        /// since a parked aggregate parks even a record that does not decode.
        decoded: Result<Decoded, schemas::ContractViolation>,
    },
}

/// Projects a batch inside its transaction; what each record came to, in order. A record that
/// is [`Projected::Refused`] wrote nothing (the caller dead-letters it).
pub(crate) async fn project_batch(
    conn: &mut PgConnection,
    registry: &SchemaRegistry,
    keys: &KeyStore,
    topics: &Topics,
    records: &[Input<'_>],
) -> Result<Vec<Projected>, sqlx::Error> {
    let checked: Vec<Checked> = records
        .iter()
        .map(|input| {
            input.span.in_scope(|| {
                match parking::check(registry, topics, input.payload, input.position) {
                    Ok(envelope) => Checked::Valid {
                        decoded: Decoded::of(registry, &envelope),
                        envelope: Box::new(envelope),
                    },
                    Err(refused) => Checked::Refused(refused),
                }
            })
        })
        .collect();
    let aggregates: Vec<(AggregateType, Uuid)> = checked
        .iter()
        .filter_map(|checked| match checked {
            Checked::Valid { envelope, .. } => {
                Some((envelope.aggregate_type, envelope.aggregate_id))
            }
            Checked::Refused(_) => None,
        })
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut fold = Fold::default();
    let (loaded, mut opened) = tokio::join!(
        async {
            let parked = parking::parked_among(&mut *conn, &aggregates).await?;
            fold.load(&mut *conn, &aggregates).await?;
            Ok::<_, sqlx::Error>(parked)
        },
        open_requests(keys, &checked),
    );
    // Records of these aggregates go one by one: parked before the batch, or by it.
    let mut one_by_one: HashSet<(AggregateType, Uuid)> = loaded?;
    let mut projected = Vec::with_capacity(records.len());
    for ((input, checked), opened) in records.iter().zip(checked).zip(opened.iter_mut()) {
        let (envelope, decoded) = match checked {
            Checked::Refused(refused) => {
                projected.push(refused);
                continue;
            }
            Checked::Valid { envelope, decoded } => (envelope, decoded),
        };
        let aggregate = (envelope.aggregate_type, envelope.aggregate_id);
        let folded = if one_by_one.contains(&aggregate) {
            None
        } else {
            fold_one(&mut fold, input, &envelope, decoded, opened.take())?
        };
        if let Some(folded) = folded {
            // One line per record at `debug`, in the record's span (its topic, offset, event
            // type and aggregate id): what the one-by-one path's statements logged in it, so a
            // record stays traceable in the logs when it is folded with its batch.
            if let Projected::Outcome(outcome) = &folded {
                input
                    .span
                    .in_scope(|| tracing::debug!(?outcome, "folded with its batch"));
            }
            projected.push(folded);
            continue;
        }
        if fold.is_dirty() {
            fold.flush(&mut *conn).await?;
        }
        fold.forget(aggregate.0, aggregate.1);
        one_by_one.insert(aggregate);
        projected.push(
            parking::project_checked(
                &mut *conn,
                registry,
                keys,
                &envelope,
                input.payload,
                input.position,
            )
            .instrument(input.span.clone())
            .await?,
        );
    }
    fold.flush(conn).await?;
    Ok(projected)
}

/// Folds one record of an aggregate that is not parked into `fold`; `None` when it must take
/// the one-record path (a gap, an unknown event, personal data that does not open).
fn fold_one(
    fold: &mut Fold,
    input: &Input<'_>,
    envelope: &EventEnvelope,
    decoded: Result<Decoded, schemas::ContractViolation>,
    opened: Option<Result<Option<bookings::Personal>, ApplyError>>,
) -> Result<Option<Projected>, sqlx::Error> {
    let event = match decoded {
        Err(violation) if violation.is_unknown_event() => return Ok(None),
        Err(violation) => {
            return Ok(Some(Projected::Refused {
                full: violation.without_values(),
                for_log: violation.without_values(),
            }));
        }
        Ok(Decoded::Saga) => return Ok(Some(Projected::Outcome(RecordOutcome::Ignored))),
        Ok(event) => event,
    };
    match fold.admission(envelope) {
        Admission::Stale => {
            input
                .span
                .in_scope(|| parking::duplicate(envelope, input.position));
            Ok(Some(Projected::Outcome(RecordOutcome::Duplicate)))
        }
        Admission::Gap { .. } => Ok(None),
        Admission::Next => {
            let personal = match opened {
                Some(Err(ApplyError::Database(error))) => return Err(error),
                // Parked, with its reason, by the one-record path.
                Some(Err(_)) => return Ok(None),
                Some(Ok(personal)) => personal,
                None => None,
            };
            fold.fold(&event, envelope, personal);
            Ok(Some(Projected::Outcome(RecordOutcome::Applied)))
        }
    }
}

/// Opens the personal data of every booking request among `checked` (`None` for every other
/// record), several at a time. Opened whatever their admission: a duplicate's is not used.
async fn open_requests(
    keys: &KeyStore,
    checked: &[Checked],
) -> Vec<Option<Result<Option<bookings::Personal>, ApplyError>>> {
    // Their keys in one query first (a replay meets a request in about one record of seven,
    // and a round trip each was most of the projector's system time); what the prefetch could
    // not load is read by its own open, which reports its own error.
    let requests: Vec<Uuid> = checked
        .iter()
        .filter_map(|checked| match checked {
            Checked::Valid {
                envelope,
                decoded: Ok(Decoded::Booking(event)),
            } if bookings::is_request(event) => Some(envelope.aggregate_id),
            _ => None,
        })
        .collect();
    if let Err(error) = keys.prefetch(&requests).await {
        tracing::warn!(%error, "the batch's data keys could not be loaded at once; opening one by one");
    }
    // By index: a closure taking `&Checked` would have to return a future for every lifetime.
    stream::iter(0..checked.len())
        .map(|i| open_request(keys, &checked[i]))
        .buffered(OPENING_AT_ONCE)
        .collect()
        .await
}

async fn open_request(
    keys: &KeyStore,
    checked: &Checked,
) -> Option<Result<Option<bookings::Personal>, ApplyError>> {
    match checked {
        Checked::Valid {
            envelope,
            decoded: Ok(Decoded::Booking(event)),
        } if bookings::is_request(event) => Some(bookings::personal(keys, event, envelope).await),
        _ => None,
    }
}
