package registry

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// TenantArtifact is an artifact a tenant holds and the tenant's
// deployments that use it.
type TenantArtifact struct {
	Artifact
	Deployments []string `json:"deployments"`
}

// ListTenantArtifacts returns the artifacts the tenant uploaded, newest
// first, each with the names of the tenant's deployments using it.
func (s *Store) ListTenantArtifacts(ctx context.Context, tenantID string) ([]TenantArtifact, error) {
	rows, err := s.pool.Query(ctx, `
		SELECT `+prefixed("a.", artifactColumns)+`,
			coalesce((SELECT array_agg(d.name ORDER BY d.name) FROM deployments d
				WHERE d.tenant_id = o.tenant_id AND d.artifact_sha256 = a.sha256), '{}')
		FROM artifacts a JOIN artifact_owners o ON o.sha256 = a.sha256 AND o.tenant_id = $1
		ORDER BY o.created_at DESC, a.sha256`, tenantID)
	if err != nil {
		return nil, fmt.Errorf("listing artifacts: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (TenantArtifact, error) {
		var t TenantArtifact
		a := &t.Artifact
		err := r.Scan(&a.SHA256, &a.Size, &a.ObjectKey, &a.Architecture, &a.ParameterCount, &a.Quantization, &a.ContextLength, &a.ChatTemplate, &a.Pooling, &a.CreatedAt, &t.Deployments)
		return t, err
	})
	if err != nil {
		return nil, fmt.Errorf("listing artifacts: %w", err)
	}
	return out, nil
}

// ErrArtifactInUse: a deployment of the tenant uses the artifact.
var ErrArtifactInUse = errors.New("artifact in use")

// RemoveTenantArtifact drops the tenant's claim on an artifact. While one
// of the tenant's deployments uses it, it is refused (an error wrapping
// ErrArtifactInUse names them); one the tenant does not hold is
// ErrNotFound. When no other tenant holds the artifact and no deployment
// uses it, its record is deleted too and orphan is the object key the
// caller must delete from the object store (weights are stored once for
// every tenant that uploaded them, so they go with the last claim).
//
// The record is deleted before the object: an upload of the same bytes
// racing with the deletion stores a new object under a new key, so no
// record ever points at a deleted object.
func (s *Store) RemoveTenantArtifact(ctx context.Context, tenantID, sha string) (orphan string, err error) {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return "", fmt.Errorf("removing artifact %s: %w", sha, err)
	}
	defer tx.Rollback(ctx)
	// Locking the artifact's row serializes this with PutDeployment's
	// foreign-key check (a deployment taking the artifact meanwhile).
	var key string
	err = tx.QueryRow(ctx, `
		SELECT a.object_key FROM artifacts a
		JOIN artifact_owners o ON o.sha256 = a.sha256 AND o.tenant_id = $1
		WHERE a.sha256 = $2 FOR UPDATE OF a`, tenantID, sha).Scan(&key)
	if err != nil {
		return "", notFound(err, "artifact "+sha)
	}
	var using []string
	if err := tx.QueryRow(ctx, `
		SELECT coalesce(array_agg(name ORDER BY name), '{}') FROM deployments
		WHERE tenant_id = $1 AND artifact_sha256 = $2`, tenantID, sha).Scan(&using); err != nil {
		return "", fmt.Errorf("removing artifact %s: %w", sha, err)
	}
	if len(using) > 0 {
		return "", fmt.Errorf("artifact %s is used by deployment %v: %w", sha, using, ErrArtifactInUse)
	}
	if _, err := tx.Exec(ctx, `DELETE FROM artifact_owners WHERE tenant_id = $1 AND sha256 = $2`, tenantID, sha); err != nil {
		return "", fmt.Errorf("removing artifact %s: %w", sha, err)
	}
	tag, err := tx.Exec(ctx, `
		DELETE FROM artifacts a WHERE a.sha256 = $1
		AND NOT EXISTS (SELECT 1 FROM artifact_owners o WHERE o.sha256 = a.sha256)
		AND NOT EXISTS (SELECT 1 FROM deployments d WHERE d.artifact_sha256 = a.sha256)`, sha)
	if err != nil {
		return "", fmt.Errorf("removing artifact %s: %w", sha, err)
	}
	if err := tx.Commit(ctx); err != nil {
		return "", fmt.Errorf("removing artifact %s: %w", sha, err)
	}
	if tag.RowsAffected() == 1 {
		return key, nil
	}
	return "", nil
}
