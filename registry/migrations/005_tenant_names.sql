-- Deployment names are per tenant. A name used to be unique across all
-- tenants, so a tenant could tell another's names from free ones (its PUT
-- of a taken name conflicted). Now each tenant has its own names; what
-- crosses processes (queues, NATS subjects, runners, usage records) is
-- keyed by the deployment's ID, which is never reused.
ALTER TABLE deployments DROP CONSTRAINT deployments_name_key;
ALTER TABLE deployments ADD CONSTRAINT deployments_tenant_name_key UNIQUE (tenant_id, name);

-- Usage is billed by deployment ID; reports that filter by a tenant's
-- deployment name still use the existing (deployment, created_at) index
-- together with tenant_id.
CREATE INDEX usage_deployment_id_created ON usage (deployment_id, created_at);
