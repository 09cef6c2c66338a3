-- Each funeral home's price lists (docs/pricing.md): one row per published version, never
-- updated or deleted. A booking keeps its own priced statement in the log, so nothing but new
-- requests reads these rows.
CREATE TABLE price_lists (
    home         UUID        NOT NULL,
    version      INTEGER     NOT NULL CHECK (version >= 1),
    list         JSONB       NOT NULL,
    published_by TEXT        NOT NULL,
    published_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (home, version)
);
