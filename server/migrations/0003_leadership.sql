-- The scheduler's leadership: a Redis lease says who leads now; this row's epoch grows with
-- every grant (durably, across Redis restarts), and writes a leader makes carry it, so a node
-- that lost the lease without knowing it is refused.
CREATE TABLE leadership (
    id          int PRIMARY KEY CHECK (id = 1),
    epoch       bigint NOT NULL DEFAULT 0,
    node        text,
    granted_at  timestamptz
);
INSERT INTO leadership (id) VALUES (1);
