-- The last control (pause, resume, abort, abort_rollback) a rollout's nodes took, as the
-- controller that handed it out recorded it: a watch begun afresh knows of an abort with
-- rollback before any node reports.
ALTER TABLE rollouts ADD COLUMN last_control TEXT;
