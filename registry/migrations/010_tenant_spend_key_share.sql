-- Monthly budgets enforced, and fair-sharing weights.
--
-- tenant_month_spend is each tenant's cost per calendar month (UTC), kept
-- by triggers on usage (by created_at) and runner_usage (by ended_at), the
-- same months and records as Invoice sums: so checking a tenant's monthly
-- budget reads one row, and the figure is the invoice's total to the last
-- digit (numeric, never floating point). Activators load the current
-- month's rows of budgeted tenants every registry.SpendRefresh.
CREATE TABLE tenant_month_spend (
    tenant_id text NOT NULL,
    month     date NOT NULL,
    spent_usd numeric(20, 9) NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, month)
);
INSERT INTO tenant_month_spend (tenant_id, month, spent_usd)
    SELECT tenant_id, month, sum(usd) FROM (
        SELECT tenant_id, date_trunc('month', created_at AT TIME ZONE 'UTC')::date AS month, cost_usd AS usd
        FROM usage WHERE tenant_id <> ''
        UNION ALL
        SELECT tenant_id, date_trunc('month', ended_at AT TIME ZONE 'UTC')::date, cost_usd
        FROM runner_usage WHERE tenant_id <> ''
    ) r GROUP BY tenant_id, month;

CREATE FUNCTION infer_tenant_month_spent() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    at timestamptz;
BEGIN
    IF NEW.tenant_id = '' THEN
        RETURN NULL;
    END IF;
    IF TG_TABLE_NAME = 'usage' THEN
        at := NEW.created_at;
    ELSE
        at := NEW.ended_at;
    END IF;
    INSERT INTO tenant_month_spend AS s (tenant_id, month, spent_usd)
        VALUES (NEW.tenant_id, date_trunc('month', at AT TIME ZONE 'UTC')::date, NEW.cost_usd)
        ON CONFLICT (tenant_id, month) DO UPDATE SET spent_usd = s.spent_usd + EXCLUDED.spent_usd;
    RETURN NULL;
END;
$$;

-- As for key_spend: rows ON CONFLICT DO NOTHING skipped (a redelivered
-- record) fire no AFTER INSERT row trigger, so nothing counts twice.
CREATE TRIGGER usage_tenant_month_spent AFTER INSERT ON usage
    FOR EACH ROW EXECUTE FUNCTION infer_tenant_month_spent();
CREATE TRIGGER runner_usage_tenant_month_spent AFTER INSERT ON runner_usage
    FOR EACH ROW EXECUTE FUNCTION infer_tenant_month_spent();

-- A key's weight in fair sharing (activator/fair.go): while its
-- deployment is saturated, a key with share 3 gets three places for each
-- one a key with share 1 gets.
ALTER TABLE api_keys
    ADD COLUMN share int NOT NULL DEFAULT 1 CHECK (share BETWEEN 1 AND 1000);
