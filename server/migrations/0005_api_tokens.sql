-- API tokens: a token is shown once, when it is made; only the sha256 of its secret part is
-- kept, with its public id (`etl_` and 12 hex digits, the start of the token, by which it is
-- looked up, listed and revoked), its role, its tenant (none: the operator's, every tenant),
-- who made it and when, when it was last used, when it expires and when it was revoked.
CREATE TABLE api_tokens (
    id text PRIMARY KEY,
    secret_sha256 bytea NOT NULL,
    role text NOT NULL CHECK (role IN ('read', 'run', 'admin')),
    tenant text,
    created_by text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    expires_at timestamptz,
    revoked_at timestamptz
);
