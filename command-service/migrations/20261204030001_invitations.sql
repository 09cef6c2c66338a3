-- Families by invitation (docs/identity.md). An invitation names its contact by position in the
-- booking's contacts, never by address, and keeps only the SHA-256 of its code.
CREATE TABLE invitations (
    invitation_id UUID        PRIMARY KEY,
    booking_id    UUID        NOT NULL,
    contact       SMALLINT    NOT NULL CHECK (contact >= 0),
    code_hash     BYTEA       NOT NULL UNIQUE CHECK (length(code_hash) = 32),
    invited_by    TEXT        NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at    TIMESTAMPTZ NOT NULL,
    used_at       TIMESTAMPTZ,
    revoked_at    TIMESTAMPTZ
);

CREATE INDEX invitations_by_booking ON invitations (booking_id);

-- The family-session signing keys: the private key (PKCS#8) sealed under the privacy master key
-- `master_key_id` names, the public point in the clear for the JWKS.
CREATE TABLE session_keys (
    kid           TEXT        PRIMARY KEY,
    master_key_id TEXT        NOT NULL,
    sealed        BYTEA       NOT NULL,
    public_x      TEXT        NOT NULL,
    public_y      TEXT        NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);
