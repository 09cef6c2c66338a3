-- Read models become versioned: each version lives in its own schema (`rm_v1`, `rm_v2`, ...),
-- created by the projection-service from `src/versions.rs`, and the schema `live` holds views
-- onto the version that answers queries. A rebuild fills a new version beside the live one and
-- switches the views in one transaction (docs/read-side.md).
--
-- The first cut's unversioned tables are dropped: read models are derived from the log, and the
-- projection-service rebuilds version 1 from offset 0 when it starts and finds no live version.
DROP TABLE IF EXISTS bookings;
DROP TABLE IF EXISTS facilities;
DROP TABLE IF EXISTS projection_offsets;

CREATE TABLE projection_versions (
    version      INTEGER PRIMARY KEY CHECK (version > 0),
    -- building: being filled beside the live one; live: answering queries; retired: switched
    -- away from, about to be dropped; dropped: its schema is gone.
    state        TEXT        NOT NULL CHECK (state IN ('building', 'live', 'retired', 'dropped')),
    requested_by TEXT        NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    switched_at  TIMESTAMPTZ,
    dropped_at   TIMESTAMPTZ
);

-- At most one live and one building version at any time.
CREATE UNIQUE INDEX projection_versions_one_live ON projection_versions ((true)) WHERE state = 'live';
CREATE UNIQUE INDEX projection_versions_one_building ON projection_versions ((true)) WHERE state = 'building';

CREATE SCHEMA IF NOT EXISTS live;
