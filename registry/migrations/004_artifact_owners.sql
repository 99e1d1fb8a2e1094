-- Which tenants uploaded each artifact. Weights stay content-addressed and
-- stored once, however many tenants upload the same bytes, but a tenant may
-- deploy only an artifact it uploaded itself: knowing a digest is not
-- having the weights.
CREATE TABLE artifact_owners (
    tenant_id  text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    sha256     text NOT NULL REFERENCES artifacts (sha256) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, sha256)
);
CREATE INDEX artifact_owners_sha256 ON artifact_owners (sha256);

-- Existing deployments keep working: a tenant owns what it has deployed.
INSERT INTO artifact_owners (tenant_id, sha256)
SELECT DISTINCT tenant_id, artifact_sha256 FROM deployments
ON CONFLICT DO NOTHING;

-- With a single tenant there is nobody to keep artifacts from, so it owns
-- every artifact, deployed or not (the usual self-hosted installation). With
-- several, an artifact nobody deployed is owned by nobody until a tenant
-- uploads it again, which stores nothing new.
INSERT INTO artifact_owners (tenant_id, sha256)
SELECT t.id, a.sha256 FROM artifacts a CROSS JOIN tenants t
WHERE (SELECT count(*) FROM tenants) = 1
ON CONFLICT DO NOTHING;
