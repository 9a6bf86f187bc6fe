-- Flows and their runs: the durable truth every node of a cluster shares.
CREATE TABLE flows (
    name        text PRIMARY KEY,
    definition  jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE runs (
    id                bigserial PRIMARY KEY,
    flow              text NOT NULL,
    -- The flow as it was when the run was asked for: replacing or deleting the flow later
    -- does not change what a queued run does or what a finished one did.
    definition        jsonb NOT NULL,
    state             text NOT NULL DEFAULT 'queued'
                      CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'canceled')),
    node              text,
    rows_read         bigint NOT NULL DEFAULT 0,
    rows_written      bigint NOT NULL DEFAULT 0,
    rows_rejected     bigint NOT NULL DEFAULT 0,
    bad_rows          jsonb NOT NULL DEFAULT '[]',
    reject_file       text,
    error             text,
    cancel_requested  boolean NOT NULL DEFAULT false,
    created_at        timestamptz NOT NULL DEFAULT now(),
    started_at        timestamptz,
    finished_at       timestamptz
);

CREATE INDEX runs_flow ON runs (flow, id DESC);
CREATE INDEX runs_queued ON runs (id) WHERE state = 'queued';
CREATE INDEX runs_state ON runs (state, id DESC);
