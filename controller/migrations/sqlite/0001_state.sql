-- The controller's state: the audit log (a hash chain), rollouts with per-node outcomes, and
-- node status snapshots. Times are unix milliseconds; lists and documents are JSON text.
CREATE TABLE audit (
    id INTEGER PRIMARY KEY,
    at_ms BIGINT NOT NULL,
    os_user TEXT NOT NULL,
    key_fingerprints TEXT NOT NULL,
    command TEXT NOT NULL,
    args TEXT NOT NULL,
    nodes TEXT NOT NULL,
    digests TEXT NOT NULL,
    result TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);

CREATE TABLE rollouts (
    id TEXT PRIMARY KEY,
    cluster TEXT NOT NULL,
    version TEXT NOT NULL,
    state TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    ended_ms BIGINT
);
-- One rollout in flight per cluster: the claim ends with the rollout, so it cannot go stale.
CREATE UNIQUE INDEX rollouts_one_in_flight ON rollouts (cluster) WHERE ended_ms IS NULL;

CREATE TABLE rollout_nodes (
    rollout_id TEXT NOT NULL REFERENCES rollouts (id),
    node TEXT NOT NULL,
    outcome TEXT,
    step TEXT,
    reason TEXT,
    updated_ms BIGINT NOT NULL,
    PRIMARY KEY (rollout_id, node)
);

CREATE TABLE node_status (
    node TEXT PRIMARY KEY,
    at_ms BIGINT NOT NULL,
    status TEXT NOT NULL
);
