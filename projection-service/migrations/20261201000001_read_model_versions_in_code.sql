-- Read-model versions belong to the code (docs/read-side.md): a projection-service builds the
-- version its release declares, in builds `read_v<V>_b<B>`, beside whatever other releases keep
-- current; the query-api of a release reads the views `read_v<V>` of its own version and
-- registers as its reader, so that a version is dropped only once no running query-api reads it.
--
-- Additive: the legacy layout of the releases before (`projection_versions`, `rm_v<N>`, `live`)
-- keeps working beside it for as long as those releases run, and `fmctl projections
-- drop-legacy` removes it afterwards. On a database where it was never used it goes now.

CREATE TABLE read_model_versions (
    version     INTEGER PRIMARY KEY CHECK (version > 0),
    -- When a projection-service first declared it.
    declared_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- When its first build went live (its query-apis may answer from then on).
    live_at     TIMESTAMPTZ,
    -- When it may be dropped, as the projection-services last computed it (NULL: it is kept,
    -- because a query-api reads it or no newer version is live).
    drop_after  TIMESTAMPTZ,
    dropped_at  TIMESTAMPTZ
);

CREATE TABLE read_model_builds (
    -- Numbers builds across all versions, so a build's schema name is never reused.
    build        INTEGER GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    version      INTEGER     NOT NULL REFERENCES read_model_versions (version),
    -- building: being filled from the log; live: behind the version's views; retired: switched
    -- away from, about to be dropped; dropped: its schema is gone.
    state        TEXT        NOT NULL CHECK (state IN ('building', 'live', 'retired', 'dropped')),
    requested_by TEXT        NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    switched_at  TIMESTAMPTZ,
    dropped_at   TIMESTAMPTZ
);

-- At most one live and one building build per version.
CREATE UNIQUE INDEX read_model_builds_one_live ON read_model_builds (version) WHERE state = 'live';
CREATE UNIQUE INDEX read_model_builds_one_building ON read_model_builds (version) WHERE state = 'building';

-- Each query-api process and the version it reads. Not a foreign key: a query-api may start
-- before any projection-service has declared its version.
CREATE TABLE read_model_readers (
    instance   UUID        PRIMARY KEY,
    version    INTEGER     NOT NULL,
    host       TEXT        NOT NULL,
    started_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    seen_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- It counts as running until then; each heartbeat moves it on.
    expires_at TIMESTAMPTZ NOT NULL,
    -- Set when it stopped cleanly.
    stopped_at TIMESTAMPTZ
);
CREATE INDEX read_model_readers_by_version ON read_model_readers (version, expires_at);

-- The legacy layout goes where no release ever used it (a fresh database).
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM projection_versions) THEN
        DROP TABLE projection_versions;
        DROP SCHEMA IF EXISTS live CASCADE;
    END IF;
END
$$;
