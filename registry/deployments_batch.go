package registry

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// MaxDeploymentBatch bounds the deployments one PutDeployments call (one
// PUT /v1/deployments) saves: a transaction of 1,000 inserts holds its
// row locks for ~50 ms here, and the request body stays well under the
// activator's 1 MiB limit for management bodies.
const MaxDeploymentBatch = 1000

// PutDeployments saves deployments as PutDeployment does each, in one
// transaction sent as one batch: all or none, one round trip and one
// commit. One client saving deployments one at a time is bound by the
// commit's fsync (1–8 ms on the development host: ~450/s); a batch pays
// it once (activator BenchmarkPutDeploymentsBatch).
func (s *Store) PutDeployments(ctx context.Context, ds []Deployment) ([]Deployment, error) {
	if len(ds) > MaxDeploymentBatch {
		return nil, fmt.Errorf("invalid deployments: %d in one batch, at most %d", len(ds), MaxDeploymentBatch)
	}
	for _, d := range ds {
		if err := d.Validate(); err != nil {
			return nil, fmt.Errorf("invalid deployment %q: %w", d.Name, err)
		}
		if d.TenantID == "" {
			return nil, fmt.Errorf("invalid deployment %q: no tenant", d.Name)
		}
	}
	out := make([]Deployment, len(ds))
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var b pgx.Batch
		for _, d := range ds {
			b.Queue(putDeploymentSQL, putDeploymentArgs(d)...)
		}
		br := tx.SendBatch(ctx, &b)
		for i, d := range ds {
			stored, err := scanDeployment(br.QueryRow())
			switch {
			case pgCode(err) == codeForeignKey:
				br.Close()
				return fmt.Errorf("saving deployment %q: artifact %s or tenant %s: %w", d.Name, d.ArtifactSHA256, d.TenantID, ErrNotFound)
			case err != nil:
				br.Close()
				return fmt.Errorf("saving deployment %q: %w", d.Name, err)
			}
			out[i] = stored
		}
		return br.Close()
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// GetDeployments returns those of the tenant's deployments named in names
// that exist, by name, in one query.
func (s *Store) GetDeployments(ctx context.Context, tenantID string, names []string) (map[string]Deployment, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+deploymentColumns+` FROM deployments
		WHERE tenant_id = $1 AND name = ANY($2)`, tenantID, names)
	if err != nil {
		return nil, fmt.Errorf("looking up deployments: %w", err)
	}
	deps, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Deployment, error) { return scanDeployment(r) })
	if err != nil {
		return nil, fmt.Errorf("looking up deployments: %w", err)
	}
	out := make(map[string]Deployment, len(deps))
	for _, d := range deps {
		out[d.Name] = d
	}
	return out, nil
}

// PutDeployments writes through, as PutDeployment.
func (c *Cache) PutDeployments(ctx context.Context, ds []Deployment) ([]Deployment, error) {
	out, err := c.Store.PutDeployments(ctx, ds)
	if err == nil {
		c.mu.Lock()
		if c.deployments != nil {
			for _, d := range out {
				c.deployments[tenantName{d.TenantID, d.Name}] = d
			}
			c.byName = nil
		}
		c.mu.Unlock()
	}
	return out, err
}

// GetDeployments answers from memory once loaded.
func (c *Cache) GetDeployments(ctx context.Context, tenantID string, names []string) (map[string]Deployment, error) {
	c.mu.RLock()
	loaded := c.loaded
	out := make(map[string]Deployment, len(names))
	for _, n := range names {
		if d, ok := c.deployments[tenantName{tenantID, n}]; ok {
			out[n] = d
		}
	}
	c.mu.RUnlock()
	if !loaded {
		return c.Store.GetDeployments(ctx, tenantID, names)
	}
	return out, nil
}
