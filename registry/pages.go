package registry

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
)

// Lists page by keyset, as OpenAI's list endpoints do: a page holds at
// most Limit items in the list's order, starting after the item whose ID
// is After ("" starts at the first). The next page starts after the last
// item of this one, so a page costs the same however deep it is (no
// OFFSET, which reads and discards every row before it), and items added
// or removed meanwhile shift nothing.

// MaxPageLimit bounds Limit: a page of 1,000 deployments or records is
// about 1 MB of JSON.
const MaxPageLimit = 1000

// ErrBadPage is a page request whose limit is out of range.
var ErrBadPage = errors.New("page limit out of range")

func checkLimit(limit int) error {
	if limit < 1 || limit > MaxPageLimit {
		return fmt.Errorf("%w: limit %d, want 1 to %d", ErrBadPage, limit, MaxPageLimit)
	}
	return nil
}

// ListDeploymentsPage returns up to limit of the tenant's deployments by
// name, starting after the name after, and whether more follow. Only
// lists the names to include (a key limited to some deployments); nil
// includes all. It reads the (tenant_id, name) unique index in order.
func (s *Store) ListDeploymentsPage(ctx context.Context, tenantID string, only []string, after string, limit int) ([]Deployment, bool, error) {
	if err := checkLimit(limit); err != nil {
		return nil, false, err
	}
	rows, err := s.pool.Query(ctx, `SELECT `+deploymentColumns+` FROM deployments
		WHERE tenant_id = $1 AND name > $2 AND ($3::text[] IS NULL OR name = ANY($3))
		ORDER BY name LIMIT $4`, tenantID, after, only, limit+1)
	if err != nil {
		return nil, false, fmt.Errorf("listing deployments: %w", err)
	}
	deps, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Deployment, error) { return scanDeployment(r) })
	if err != nil {
		return nil, false, fmt.Errorf("listing deployments: %w", err)
	}
	more := len(deps) > limit
	return deps[:min(len(deps), limit)], more, nil
}

// ListDeploymentsPage pages the tenant's deployments from memory (as
// ListDeployments does, so GET /v1/models answers through a Postgres
// outage), until the cache has loaded. A page is a binary search in the
// sorted index of names and a walk of limit entries: collecting and sorting
// a tenant's 10,000 deployments for every page made a page of 100 take 50
// ms on a loaded 2-core machine, the index 1.1 ms (BenchmarkListPages);
// it is sorted once per change.
func (c *Cache) ListDeploymentsPage(ctx context.Context, tenantID string, only []string, after string, limit int) ([]Deployment, bool, error) {
	if err := checkLimit(limit); err != nil {
		return nil, false, err
	}
	c.mu.RLock()
	if !c.loaded {
		c.mu.RUnlock()
		return c.Store.ListDeploymentsPage(ctx, tenantID, only, after, limit)
	}
	if c.byName == nil {
		c.mu.RUnlock()
		c.mu.Lock()
		if c.byName == nil {
			c.byName = slices.SortedFunc(maps.Keys(c.deployments), compareTenantName)
		}
		c.mu.Unlock()
		c.mu.RLock()
	}
	defer c.mu.RUnlock()
	idx := c.byName
	if idx == nil {
		// Changed again between the locks: this page is read unsorted.
		idx = slices.SortedFunc(maps.Keys(c.deployments), compareTenantName)
	}
	i, _ := slices.BinarySearchFunc(idx, tenantName{tenantID, after + "\x00"}, compareTenantName)
	var deps []Deployment
	for ; i < len(idx) && idx[i].tenant == tenantID && len(deps) <= limit; i++ {
		if only == nil || slices.Contains(only, idx[i].name) {
			deps = append(deps, c.deployments[idx[i]])
		}
	}
	more := len(deps) > limit
	return deps[:min(len(deps), limit)], more, nil
}

func compareTenantName(a, b tenantName) int {
	return cmp.Or(strings.Compare(a.tenant, b.tenant), strings.Compare(a.name, b.name))
}

// ListUsagePage returns up to f.Limit of the records f selects, newest
// first, starting after the record f.After, and whether more follow. An
// After that names no record of f's tenant is ErrNotFound.
func (s *Store) ListUsagePage(ctx context.Context, f UsageFilter) ([]UsageRecord, bool, error) {
	if err := checkLimit(f.Limit); err != nil {
		return nil, false, err
	}
	limit := f.Limit
	f.Limit++
	recs, err := s.ListUsage(ctx, f)
	if err != nil {
		return nil, false, err
	}
	if len(recs) == 0 && f.After != "" {
		// Only now is it worth asking whether the cursor exists.
		var one int
		err := s.pool.QueryRow(ctx, `SELECT 1 FROM usage WHERE request_id = $1 AND ($2::text = '' OR tenant_id = $2)`,
			f.After, f.TenantID).Scan(&one)
		if err != nil {
			return nil, false, notFound(err, "usage record "+f.After)
		}
	}
	more := len(recs) > limit
	return recs[:min(len(recs), limit)], more, nil
}
