-- The registry's records. Tables hold what users configure (tenants, keys,
-- deployments), what they uploaded (artifacts, immutable) and what they used
-- (usage, append-only).

CREATE TABLE tenants (
    id         text PRIMARY KEY,
    name       text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    id         text PRIMARY KEY,
    tenant_id  text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name       text NOT NULL DEFAULT '',
    role       text NOT NULL CHECK (role IN ('admin', 'user')),
    -- The first characters of the key, so people can tell keys apart; the
    -- key itself is only ever stored as its SHA-256.
    prefix     text NOT NULL,
    hash       bytea NOT NULL UNIQUE CHECK (length(hash) = 32),
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);
CREATE INDEX api_keys_tenant ON api_keys (tenant_id);

-- Uploaded weights, named by content. Rows are never updated: a deployment
-- that points at an artifact always gets the same bytes.
CREATE TABLE artifacts (
    sha256          text PRIMARY KEY CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    size            bigint NOT NULL CHECK (size > 0),
    object_key      text NOT NULL,
    architecture    text NOT NULL,
    parameter_count bigint NOT NULL DEFAULT 0,
    quantization    text NOT NULL DEFAULT '',
    context_length  int NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now()
);

-- Names are global, not per tenant: a name is the OpenAI "model" field, a
-- NATS subject token and part of a JetStream stream name. The defaults here
-- match registry.DefaultDeployment.
CREATE TABLE deployments (
    id               text PRIMARY KEY,
    tenant_id        text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name             text NOT NULL UNIQUE CHECK (name ~ '^[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?$'),
    artifact_sha256  text NOT NULL REFERENCES artifacts (sha256),
    min_runners      int NOT NULL DEFAULT 0,
    max_runners      int NOT NULL DEFAULT 1,
    parallel         int NOT NULL DEFAULT 4,
    context_length   int NOT NULL DEFAULT 0,
    idle_timeout_ms  bigint NOT NULL DEFAULT 300000,
    queue_limit      int NOT NULL DEFAULT 1000,
    queue_timeout_ms bigint NOT NULL DEFAULT 300000,
    chat_template    text NOT NULL DEFAULT '',
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX deployments_tenant ON deployments (tenant_id);
CREATE INDEX deployments_artifact ON deployments (artifact_sha256);

-- One row per finished request. Deliberately no foreign keys: usage is
-- billing data and outlives deleted deployments and keys.
CREATE TABLE usage (
    request_id        text PRIMARY KEY,
    deployment        text NOT NULL,
    deployment_id     text NOT NULL DEFAULT '',
    tenant_id         text NOT NULL DEFAULT '',
    key_id            text NOT NULL DEFAULT '',
    prompt_tokens     int NOT NULL DEFAULT 0,
    completion_tokens int NOT NULL DEFAULT 0,
    queue_wait_ms     double precision NOT NULL DEFAULT 0,
    ttft_ms           double precision NOT NULL DEFAULT 0,
    duration_ms       double precision NOT NULL DEFAULT 0,
    cold_start        boolean NOT NULL DEFAULT false,
    status            text NOT NULL DEFAULT '',
    finish_reason     text NOT NULL DEFAULT '',
    runner_id         text NOT NULL DEFAULT '',
    created_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX usage_deployment_created ON usage (deployment, created_at);
CREATE INDEX usage_tenant_created ON usage (tenant_id, created_at);

-- Activators cache deployments and keys; a notification tells them to
-- refresh instead of waiting for a TTL. The payload is the table name.
-- Statement-level, so a bulk change sends one notification, and Postgres
-- folds identical notifications within a transaction anyway.
CREATE FUNCTION infer_notify_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('infer_changes', TG_TABLE_NAME);
    RETURN NULL;
END;
$$;

CREATE TRIGGER deployments_notify
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON deployments
    FOR EACH STATEMENT EXECUTE FUNCTION infer_notify_change();

CREATE TRIGGER api_keys_notify
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON api_keys
    FOR EACH STATEMENT EXECUTE FUNCTION infer_notify_change();
