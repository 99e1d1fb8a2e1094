-- Billing and key limits.
--
-- A usage record carries the prices in force when its request ran (the
-- activator copies them from its cache into the job, the runner into the
-- record), and its cost is computed from those at ingestion, so neither a
-- price change nor a late ingestion rewrites what a request cost.
ALTER TABLE usage
    ADD COLUMN price_prompt_per_mtok     numeric(20, 9) NOT NULL DEFAULT 0,
    ADD COLUMN price_completion_per_mtok numeric(20, 9) NOT NULL DEFAULT 0,
    ADD COLUMN cost_usd                  numeric(20, 9) NOT NULL DEFAULT 0;
CREATE INDEX usage_key_created ON usage (key_id, created_at);

-- One row per runner lifetime, so a deployment's cold-start and idle cost
-- is visible. Written when the runner stops; idempotent by runner ID.
CREATE TABLE runner_usage (
    runner_id           text PRIMARY KEY,
    deployment          text NOT NULL,
    deployment_id       text NOT NULL DEFAULT '',
    tenant_id           text NOT NULL DEFAULT '',
    started_at          timestamptz NOT NULL,
    ended_at            timestamptz NOT NULL,
    price_runner_second numeric(20, 9) NOT NULL DEFAULT 0,
    seconds             numeric(20, 3) NOT NULL DEFAULT 0,
    cost_usd            numeric(20, 9) NOT NULL DEFAULT 0,
    created_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX runner_usage_tenant_ended ON runner_usage (tenant_id, ended_at);

-- Key restrictions: the deployments a key may call (empty: all of its
-- tenant's), requests and tokens per minute (0: unlimited) and a spend
-- budget in US dollars (NULL: unlimited).
ALTER TABLE api_keys
    ADD COLUMN deployments       text[] NOT NULL DEFAULT '{}',
    ADD COLUMN requests_per_min  int NOT NULL DEFAULT 0 CHECK (requests_per_min >= 0),
    ADD COLUMN tokens_per_min    int NOT NULL DEFAULT 0 CHECK (tokens_per_min >= 0),
    ADD COLUMN budget_usd        numeric(20, 9) CHECK (budget_usd >= 0);
