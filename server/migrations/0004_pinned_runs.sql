-- A run asked for on one named node (`POST /api/flows/{name}/run?node=NAME`): only that node
-- claims it, and it is never handed to another one: when that node drains or goes away
-- before running it, it ends failed; when the node dies while running it, it is interrupted
-- and not retried elsewhere.
ALTER TABLE runs ADD COLUMN pinned boolean NOT NULL DEFAULT false;
