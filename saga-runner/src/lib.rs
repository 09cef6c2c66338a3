//! The booking saga's process manager: its own binary, port 8084.
//!
//! It reads the booking, facility and payment topics, keeps what it learns about each booking
//! in PostgreSQL (schema `saga`), and drives every booking to an outcome through the
//! command-service's internal routes (with a `system` token), the payment gateway and SMTP.
//! docs/saga.md is the design; this is the map:
//!
//! - [`saga`]: the pure state machine (facts in, one next step out). No I/O.
//! - `store`: the saga rows, the offsets and the per-aggregate sequences in PostgreSQL.
//! - `consumer`: log → facts, offsets in the same transaction as the facts they caused.
//! - `worker`: picks sagas whose next step is due and performs it, one booking at a time.
//! - `actions`: the command-service client, the gateway and the mailer behind one `Effects` port.
//! - `routes`: `/ready`, and the ops view of sagas (`GET /sagas`, `GET /sagas/{booking_id}`).

pub mod saga;
