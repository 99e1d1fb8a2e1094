-- Prices and placement per deployment.
--
-- Prices are in US dollars: per million prompt tokens, per million
-- completion tokens and per runner-second (what a runner costs while it
-- exists, so cold starts and idle time are visible). numeric keeps cents
-- exact when summed over millions of records.
--
-- Resources are what one runner asks of a driver that places runners
-- (Kubernetes quantities such as "4", "500m", "16Gi"; empty leaves them
-- unset), GPUs per runner and a node selector.
ALTER TABLE deployments
    ADD COLUMN price_prompt_per_mtok     numeric(20, 9) NOT NULL DEFAULT 0 CHECK (price_prompt_per_mtok >= 0),
    ADD COLUMN price_completion_per_mtok numeric(20, 9) NOT NULL DEFAULT 0 CHECK (price_completion_per_mtok >= 0),
    ADD COLUMN price_runner_second       numeric(20, 9) NOT NULL DEFAULT 0 CHECK (price_runner_second >= 0),
    ADD COLUMN cpu                       text NOT NULL DEFAULT '',
    ADD COLUMN memory                    text NOT NULL DEFAULT '',
    ADD COLUMN gpus                      int NOT NULL DEFAULT 0 CHECK (gpus >= 0),
    ADD COLUMN node_selector             jsonb NOT NULL DEFAULT '{}'::jsonb;
