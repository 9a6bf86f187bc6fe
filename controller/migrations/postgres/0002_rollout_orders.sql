-- Rolling upgrades: each rollout's targets, the signed order handed to them and why it ended;
-- each node's step times; and the sequence every signed order and control takes (one row).
ALTER TABLE rollouts ADD COLUMN targets TEXT NOT NULL DEFAULT '[]';
ALTER TABLE rollouts ADD COLUMN order_document TEXT;
ALTER TABLE rollouts ADD COLUMN reason TEXT;

ALTER TABLE rollout_nodes ADD COLUMN started_ms BIGINT;
ALTER TABLE rollout_nodes ADD COLUMN ended_ms BIGINT;

CREATE TABLE order_sequence (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    value BIGINT NOT NULL
);
INSERT INTO order_sequence (id, value) VALUES (1, 0);
