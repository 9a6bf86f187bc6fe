-- Cluster mode: a run is dispatched to a node (target_node) and claimed by it; every claim
-- bumps claim_epoch, and the claimer's later writes carry it, so a node that lost a run (it was
-- thought dead and the run re-dispatched) can no longer change it.
ALTER TABLE runs ADD COLUMN target_node text;
ALTER TABLE runs ADD COLUMN claim_epoch bigint NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN retry_of bigint REFERENCES runs (id);
ALTER TABLE runs DROP CONSTRAINT runs_state_check;
ALTER TABLE runs ADD CONSTRAINT runs_state_check
    CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'canceled', 'interrupted'));
CREATE INDEX runs_queued_target ON runs (target_node, id) WHERE state = 'queued';

-- One row: the round-robin cursor shared by every entry node.
CREATE TABLE cluster_state (
    id         int PRIMARY KEY CHECK (id = 1),
    rr_cursor  bigint NOT NULL DEFAULT 0
);
INSERT INTO cluster_state (id) VALUES (1);

-- 1 for a run asked for, 2 for its first retry after its node died, ...
ALTER TABLE runs ADD COLUMN attempt int NOT NULL DEFAULT 1;
