-- The last failure to reach a node (`fleet serve`'s collector), beside its last status: a
-- node that stops answering keeps its last known status, shown with its age, and says why
-- it is not current.
CREATE TABLE node_errors (
    node TEXT PRIMARY KEY,
    at_ms BIGINT NOT NULL,
    error TEXT NOT NULL
);
