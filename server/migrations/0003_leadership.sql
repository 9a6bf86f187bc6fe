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

-- Every schedule fire, once: the key is (flow, fire time), and the row carries the epoch of the
-- leader that wrote it. A fire the misfire policy passed over has no run.
CREATE TABLE schedule_fires (
    flow       text NOT NULL,
    fire_time  timestamptz NOT NULL,
    epoch      bigint NOT NULL,
    node       text NOT NULL,
    run_id     bigint REFERENCES runs (id),
    skipped    boolean NOT NULL DEFAULT false,
    fired_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (flow, fire_time)
);
