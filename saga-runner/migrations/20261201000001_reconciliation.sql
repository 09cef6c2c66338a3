-- The payment reconciliation's reports (saga-runner/src/reconcile.rs): every run compares the
-- gateway's captures with what the log says each booking kept, and stores what it found, so
-- that any replica (and `fmctl payments reconcile --last`) can show the last one.
CREATE TABLE reconciliations (
    id          BIGSERIAL   PRIMARY KEY,
    started_at  TIMESTAMPTZ NOT NULL,
    finished_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Captures that no booking kept (the alert's count), and the whole report.
    discrepancies INTEGER   NOT NULL,
    report      JSONB       NOT NULL
);

CREATE INDEX reconciliations_latest ON reconciliations (finished_at DESC);
