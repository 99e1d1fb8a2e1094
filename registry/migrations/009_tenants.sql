-- Tenants as a product: an operator suspends tenants and sets their
-- quotas. Zero (or NULL for the budget) means unlimited, as for key limits.
--
-- suspended_at: a suspended tenant's keys answer 403 on every route; its
-- deployments, weights and usage stay, so resuming restores everything.
ALTER TABLE tenants
    ADD COLUMN suspended_at        timestamptz,
    ADD COLUMN max_deployments     int NOT NULL DEFAULT 0 CHECK (max_deployments >= 0),
    ADD COLUMN max_runners         int NOT NULL DEFAULT 0 CHECK (max_runners >= 0),
    ADD COLUMN max_artifact_bytes  bigint NOT NULL DEFAULT 0 CHECK (max_artifact_bytes >= 0),
    ADD COLUMN requests_per_min    int NOT NULL DEFAULT 0 CHECK (requests_per_min >= 0),
    ADD COLUMN tokens_per_min      int NOT NULL DEFAULT 0 CHECK (tokens_per_min >= 0),
    ADD COLUMN monthly_budget_usd  numeric(20, 9) CHECK (monthly_budget_usd >= 0);

-- Activators cache each key with its tenant's state (suspended, operator,
-- rate quotas); a change to a tenant reloads the keys, which is how a
-- suspension reaches every activator within milliseconds.
CREATE TRIGGER tenants_notify
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON tenants
    FOR EACH STATEMENT EXECUTE FUNCTION infer_notify_change();
