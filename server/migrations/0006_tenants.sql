-- Tenants: every flow and run belongs to one. Flows and runs made before tenants existed
-- belong to the tenant `default` (the cluster owner's, whose paths and tables stay where they
-- were); a flow's name is unique within its tenant.
ALTER TABLE flows ADD COLUMN tenant text NOT NULL DEFAULT 'default';
ALTER TABLE flows DROP CONSTRAINT flows_pkey;
ALTER TABLE flows ADD PRIMARY KEY (tenant, name);
ALTER TABLE runs ADD COLUMN tenant text NOT NULL DEFAULT 'default';
DROP INDEX runs_flow;
CREATE INDEX runs_flow ON runs (tenant, flow, id DESC);
-- A tenant's running runs are counted against its max_running_flows at every claim.
CREATE INDEX runs_tenant_running ON runs (tenant) WHERE state = 'running';
ALTER TABLE schedule_fires ADD COLUMN tenant text NOT NULL DEFAULT 'default';
ALTER TABLE schedule_fires DROP CONSTRAINT schedule_fires_pkey;
ALTER TABLE schedule_fires ADD PRIMARY KEY (tenant, flow, fire_time);
