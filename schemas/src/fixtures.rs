//! Whole event streams for tests and benchmarks: envelopes as the services would write them.

use domain::{
    DomainEvent,
    booking::BookingEvent,
    facility::FacilityEvent,
    fixtures,
    payment::PaymentEvent,
    values::{BookingId, FacilityId, PaymentId},
};
use uuid::Uuid;

use crate::{AggregateType, EventEnvelope, EventMetadata};

/// `event` at `sequence` of stream `id`, written by the saga.
pub fn envelope<E: DomainEvent>(
    kind: AggregateType,
    id: Uuid,
    sequence: u64,
    event: &E,
) -> EventEnvelope {
    EventEnvelope::wrap(kind, id, sequence, event, &EventMetadata::system("saga"))
        .expect("domain events serialise")
}

/// One booking's whole life on a facility of its own, as the saga will write it: registration,
/// request, hold, capture, confirmation (6 events), and for every third `i` a cancellation with
/// refund and release (9 events).
pub fn booking_story(i: usize) -> (BookingId, Vec<EventEnvelope>) {
    let (f, b, p) = (
        AggregateType::Facility,
        AggregateType::Booking,
        AggregateType::Payment,
    );
    let facility = Uuid::new_v4();
    let booking = BookingId::new();
    let payment = PaymentId::for_booking(booking);
    let (b_id, p_id) = (*booking.as_uuid(), *payment.as_uuid());
    let FacilityEvent::FacilityRegistered {
        name,
        kind,
        capacity,
        time_zone,
        opening_hours,
        turnaround_minutes,
        ..
    } = fixtures::facility_registered()
    else {
        unreachable!("the fixture is a registration")
    };
    let BookingEvent::BookingRequested {
        service_type,
        slot,
        date_of_death,
        personal,
        price,
        statement,
        ..
    } = fixtures::booking_requested()
    else {
        unreachable!("the fixture is a request")
    };
    let registered = FacilityEvent::FacilityRegistered {
        facility_id: FacilityId::from(facility),
        name,
        kind,
        capacity,
        time_zone,
        opening_hours,
        turnaround_minutes,
        funeral_home_id: None,
    };
    let requested = BookingEvent::BookingRequested {
        booking_id: booking,
        facility_id: FacilityId::from(facility),
        service_type,
        slot,
        date_of_death,
        personal,
        price,
        statement,
    };
    let captured = PaymentEvent::PaymentCaptured {
        payment_id: payment,
        booking_id: booking,
        amount: price,
        gateway_reference: format!("cap-{i}"),
    };
    let mut events = vec![
        envelope(f, facility, 1, &registered),
        envelope(b, b_id, 1, &requested),
        envelope(
            f,
            facility,
            2,
            &FacilityEvent::SlotReserved {
                booking_id: booking,
                slot,
            },
        ),
        envelope(b, b_id, 2, &BookingEvent::BookingSlotHeld {}),
        envelope(p, p_id, 1, &captured),
        envelope(b, b_id, 3, &BookingEvent::BookingConfirmed {}),
    ];
    if i.is_multiple_of(3) {
        let cancelled = BookingEvent::BookingCancelled {
            reason: Some("changed plans".into()),
            was_confirmed: true,
        };
        let refunded = PaymentEvent::PaymentRefunded {
            amount: price,
            gateway_reference: format!("ref-{i}"),
        };
        events.extend([
            envelope(b, b_id, 4, &cancelled),
            envelope(p, p_id, 2, &refunded),
            envelope(
                f,
                facility,
                3,
                &FacilityEvent::SlotReleased {
                    booking_id: booking,
                },
            ),
        ]);
    }
    (booking, events)
}
