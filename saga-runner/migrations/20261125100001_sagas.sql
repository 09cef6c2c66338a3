-- The booking saga's durable state (schema `saga`, owned by the saga runner; its migrations
-- table lives in this schema too, so it never mixes with the read models' migrations).

-- One row per booking: the facts the saga knows (`facts`, see saga-runner/src/saga.rs) and
-- the schedule of its next step. The consumer changes `facts` (and wakes the row up); the
-- worker performs the next step and records what it learned.
CREATE TABLE sagas (
    booking_id      UUID PRIMARY KEY,
    -- PaymentRefunded names only the payment; its id is derived from the booking's.
    payment_id      UUID        NOT NULL UNIQUE,
    facts           JSONB       NOT NULL,
    -- Bumped by every fact the consumer applies, so a worker that acted on older facts knows
    -- to decide again at once.
    facts_version   BIGINT      NOT NULL DEFAULT 0,
    -- The current decision: its stage (`waiting`, `reserving`, ... `done`) and step name.
    stage           TEXT        NOT NULL DEFAULT 'waiting',
    step            TEXT,
    done            BOOLEAN     NOT NULL DEFAULT false,
    -- Failed attempts of `step` so far (the backoff's exponent).
    attempts        INTEGER     NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- When the current step must be done by; past it the saga is stuck (shown, counted).
    deadline        TIMESTAMPTZ,
    last_error      TEXT,
    -- Whether any compensation (reject, release, fail, refund) was performed.
    compensated     BOOLEAN     NOT NULL DEFAULT false,
    -- The steps performed, oldest first: [{"step", "outcome", "at", "error"?}].
    history         JSONB       NOT NULL DEFAULT '[]',
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX sagas_due ON sagas (next_attempt_at) WHERE NOT done;

-- Where the saga's consumer has read up to, written in the same transaction as the facts.
CREATE TABLE offsets (
    topic       TEXT    NOT NULL,
    partition   INTEGER NOT NULL,
    next_offset BIGINT  NOT NULL CHECK (next_offset >= 0),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, partition)
);

-- The last admitted sequence of every aggregate the saga reads (the admission rule of
-- docs/consistency.md: a losing writer's record is never taken as a fact).
CREATE TABLE streams (
    aggregate_id  UUID PRIMARY KEY,
    last_sequence BIGINT NOT NULL
);

-- Facility names, for the family's letters.
CREATE TABLE facilities (
    facility_id UUID PRIMARY KEY,
    name        TEXT NOT NULL
);

-- The saga's progress as other readers may see it (the query-api shows it with the booking).
CREATE VIEW progress AS
SELECT booking_id, stage, step, done, attempts, next_attempt_at, deadline, last_error,
       compensated, history, updated_at
FROM sagas;
