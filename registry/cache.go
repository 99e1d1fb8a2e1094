package registry

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"
)

// Cache answers the questions every inference request asks — which key
// is this, which deployment is that model, which models are there — from
// memory, so the request
// path runs no Postgres query. It loads both tables at start and reloads
// one whenever Postgres notifies a change on ChangesChannel. While the
// notification connection is down the cache keeps answering from what it
// has (warm deployments keep serving through a Postgres outage) and
// reloads everything once it is back, so no change is missed.
type Cache struct {
	*Store
	log *slog.Logger

	mu          sync.RWMutex
	keys        keyIndex
	deployments map[tenantName]Deployment
	// byName is the keys of deployments sorted by tenant, then name, for
	// paging (ListDeploymentsPage); nil when deployments changed since.
	byName []tenantName
	loaded bool

	// spend is what each budgeted key has spent, as of spendAt; see Spend.
	spend   map[string]float64
	spendAt time.Time
	// tenantSpend is what each budgeted tenant spent in spendAt's month.
	tenantSpend map[string]float64
}

// tenantName keys deployments: a name is unique only within its tenant.
type tenantName struct{ tenant, name string }

// cachedKey is a key's record with the hash it is stored under.
type cachedKey struct {
	APIKey
	hash [sha256.Size]byte
}

// keyIndex finds keys by the first 8 bytes of their hash: a map lookup on
// that prefix only narrows the candidates, and a key is accepted only by
// comparing its whole hash in constant time (see hashMatches), so
// acceptance never rests on a comparison that stops at the first
// differing byte.
type keyIndex map[uint64][]cachedKey

func indexOf(h [sha256.Size]byte) uint64 { return binary.BigEndian.Uint64(h[:8]) }

func (ix keyIndex) add(k cachedKey) { ix[indexOf(k.hash)] = append(ix[indexOf(k.hash)], k) }

// find returns the key whose hash is h.
func (ix keyIndex) find(h [sha256.Size]byte) (APIKey, bool) {
	for _, k := range ix[indexOf(h)] {
		if hashMatches(k.hash[:], h) {
			return k.APIKey, true
		}
	}
	return APIKey{}, false
}

// SpendRefresh is how often Run reloads what budgeted keys have spent, and
// budgeted tenants this month.
const SpendRefresh = 5 * time.Second

// Spend returns what the key's requests cost as of the returned time (zero
// if never loaded). Callers add what they saw finish since, so a budget is
// enforced without a query per request; it can be overshot by what
// finishes on other activators within one refresh plus ingestion lag.
func (c *Cache) Spend(keyID string) (float64, time.Time) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.spend[keyID], c.spendAt
}

// TenantSpend returns what the tenant's usage cost in the calendar month
// (UTC) of the returned time, as of that time (zero if never loaded), for
// a tenant with a monthly budget. As with Spend, callers add what they saw
// finish since; a figure from an earlier month than now's is worth zero.
func (c *Cache) TenantSpend(tenantID string) (float64, time.Time) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.tenantSpend[tenantID], c.spendAt
}

// refreshSpend reloads spend every SpendRefresh until ctx is done.
func (c *Cache) refreshSpend(ctx context.Context) {
	t := time.NewTicker(SpendRefresh)
	defer t.Stop()
	for {
		at := time.Now()
		spend, err := c.Store.SpendByKey(ctx)
		var tenants map[string]float64
		if err == nil {
			tenants, err = c.Store.TenantMonthSpend(ctx, at)
		}
		if err == nil {
			c.mu.Lock()
			c.spend, c.tenantSpend, c.spendAt = spend, tenants, at
			c.mu.Unlock()
		} else if ctx.Err() == nil {
			c.log.Warn("refreshing key spend; budgets use the last known spend", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// NewCache wraps a store. Run must be running for the cache to be used;
// until it has loaded, lookups go to the store.
func NewCache(s *Store, log *slog.Logger) *Cache {
	return &Cache{Store: s, log: log}
}

// AuthenticateKey looks a key up by its hash in memory.
func (c *Cache) AuthenticateKey(ctx context.Context, secret string) (APIKey, error) {
	c.mu.RLock()
	loaded := c.loaded
	k, ok := c.keys.find(sha256.Sum256([]byte(secret)))
	c.mu.RUnlock()
	if !loaded {
		return c.Store.AuthenticateKey(ctx, secret)
	}
	if !ok {
		return APIKey{}, ErrUnauthorized
	}
	return k, nil
}

// GetDeployment looks the tenant's deployment up in memory.
func (c *Cache) GetDeployment(ctx context.Context, tenantID, name string) (Deployment, error) {
	c.mu.RLock()
	loaded := c.loaded
	d, ok := c.deployments[tenantName{tenantID, name}]
	c.mu.RUnlock()
	if !loaded {
		return c.Store.GetDeployment(ctx, tenantID, name)
	}
	if !ok {
		return Deployment{}, ErrNotFound
	}
	return d, nil
}

// ListDeployments lists a tenant's deployments (every tenant's for "") by
// name from memory, so GET /v1/models answers through a Postgres outage
// like the request path does.
func (c *Cache) ListDeployments(ctx context.Context, tenantID string) ([]Deployment, error) {
	c.mu.RLock()
	if !c.loaded {
		c.mu.RUnlock()
		return c.Store.ListDeployments(ctx, tenantID)
	}
	var deps []Deployment
	for _, d := range c.deployments {
		if tenantID == "" || d.TenantID == tenantID {
			deps = append(deps, d)
		}
	}
	c.mu.RUnlock()
	slices.SortFunc(deps, func(a, b Deployment) int { return strings.Compare(a.Name, b.Name) })
	return deps, nil
}

// CreateLimitedKey writes through, so a key works on this activator as soon
// as it is returned (others learn of it from the notification).
func (c *Cache) CreateLimitedKey(ctx context.Context, tenantID, name, role string, l Limits) (APIKey, string, error) {
	k, secret, err := c.Store.CreateLimitedKey(ctx, tenantID, name, role, l)
	if err == nil {
		c.mu.Lock()
		if c.keys != nil {
			c.keys.add(cachedKey{k, sha256.Sum256([]byte(secret))})
		}
		c.mu.Unlock()
	}
	return k, secret, err
}

// RevokeKey writes through: a revoked key stops working here at once.
func (c *Cache) RevokeKey(ctx context.Context, tenantID, keyID string) error {
	err := c.Store.RevokeKey(ctx, tenantID, keyID)
	if err == nil {
		c.mu.Lock()
		for i, ks := range c.keys {
			c.keys[i] = slices.DeleteFunc(ks, func(k cachedKey) bool { return k.ID == keyID })
		}
		c.mu.Unlock()
	}
	return err
}

// reloadKeysNow reloads the keys after a change this activator made to a
// tenant or a key, so it sees the change at once (others see it when the
// notification arrives, milliseconds later): a tenant resumed through one
// activator then works there on the very next request. A failed reload is
// left to the notification.
func (c *Cache) reloadKeysNow(ctx context.Context) {
	c.mu.RLock()
	loaded := c.keys != nil
	c.mu.RUnlock()
	if !loaded {
		return
	}
	if err := c.reload(ctx, "api_keys"); err != nil {
		c.log.Warn("reloading keys after a change; the change notification will", "err", err)
	}
}

// ReloadKeys reads the keys again now, for a key created on the store
// itself (infer dev's admin key): the change notification would bring it
// a moment later, and a client handed the key at once would get a 401.
func (c *Cache) ReloadKeys(ctx context.Context) error {
	return c.reload(ctx, "api_keys")
}

// SuspendTenant writes through (see reloadKeysNow).
func (c *Cache) SuspendTenant(ctx context.Context, id string, suspend bool) (Tenant, error) {
	t, err := c.Store.SuspendTenant(ctx, id, suspend)
	if err == nil {
		c.reloadKeysNow(ctx)
	}
	return t, err
}

// SetTenantQuotas writes through (see reloadKeysNow): a budget raised
// through this activator admits the tenant here at once.
func (c *Cache) SetTenantQuotas(ctx context.Context, id string, q Quotas) (Tenant, error) {
	t, err := c.Store.SetTenantQuotas(ctx, id, q)
	if err == nil {
		c.reloadKeysNow(ctx)
	}
	return t, err
}

// DeleteTenant writes through (see reloadKeysNow): the tenant's keys stop
// working here at once.
func (c *Cache) DeleteTenant(ctx context.Context, id string) error {
	err := c.Store.DeleteTenant(ctx, id)
	if err == nil {
		c.reloadKeysNow(ctx)
	}
	return err
}

// SetKeyShare writes through (see reloadKeysNow).
func (c *Cache) SetKeyShare(ctx context.Context, tenantID, keyID string, share int) (APIKey, error) {
	k, err := c.Store.SetKeyShare(ctx, tenantID, keyID, share)
	if err == nil {
		c.reloadKeysNow(ctx)
	}
	return k, err
}

// PutDeployment writes through, so the writer sees its change at once
// (other activators see it when the notification arrives).
func (c *Cache) PutDeployment(ctx context.Context, d Deployment) (Deployment, error) {
	d, err := c.Store.PutDeployment(ctx, d)
	if err == nil {
		c.mu.Lock()
		if c.deployments != nil {
			c.deployments[tenantName{d.TenantID, d.Name}] = d
			c.byName = nil
		}
		c.mu.Unlock()
	}
	return d, err
}

// DeleteDeployment writes through.
func (c *Cache) DeleteDeployment(ctx context.Context, tenantID, name string) error {
	err := c.Store.DeleteDeployment(ctx, tenantID, name)
	if err == nil {
		c.mu.Lock()
		delete(c.deployments, tenantName{tenantID, name})
		c.byName = nil
		c.mu.Unlock()
	}
	return err
}

// Run keeps the cache fresh until ctx is done.
func (c *Cache) Run(ctx context.Context) error {
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.refreshSpend(ctx)
	}()
	defer func() { <-done }()
	wait := 100 * time.Millisecond
	for ctx.Err() == nil {
		err := c.listen(ctx)
		if ctx.Err() != nil {
			break
		}
		c.log.Warn("registry change notifications lost; serving from cache and reconnecting", "err", err, "retry_in", wait)
		select {
		case <-ctx.Done():
		case <-time.After(wait):
		}
		wait = min(2*wait, 5*time.Second)
	}
	return nil
}

// listen holds one connection that LISTENs for changes; it returns when
// the connection fails.
func (c *Cache) listen(ctx context.Context) error {
	conn, err := c.pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("connecting: %w", err)
	}
	// The connection is left in LISTEN state: destroy it instead of
	// returning it to the pool.
	defer func() {
		conn.Conn().Close(context.Background())
		conn.Release()
	}()
	if _, err := conn.Exec(ctx, "LISTEN "+ChangesChannel); err != nil {
		return fmt.Errorf("listening: %w", err)
	}
	// Listen first, then load: a change between the two is reloaded
	// again rather than missed.
	if err := c.reload(ctx, "api_keys"); err != nil {
		return err
	}
	if err := c.reload(ctx, "deployments"); err != nil {
		return err
	}
	for {
		n, err := conn.Conn().WaitForNotification(ctx)
		if err != nil {
			return fmt.Errorf("waiting for changes: %w", err)
		}
		if err := c.reload(ctx, n.Payload); err != nil {
			return err
		}
	}
}

func (c *Cache) reload(ctx context.Context, table string) error {
	switch table {
	case "api_keys", "tenants":
		// A key carries its tenant's state (suspended, quotas), so a
		// tenant's change reloads the keys.
		keys, err := c.loadKeys(ctx)
		if err != nil {
			return err
		}
		c.mu.Lock()
		c.keys = keys
		c.loaded = c.deployments != nil
		c.mu.Unlock()
	case "deployments":
		deps, err := c.Store.ListDeployments(ctx, "")
		if err != nil {
			return fmt.Errorf("loading deployments: %w", err)
		}
		m := make(map[tenantName]Deployment, len(deps))
		for _, d := range deps {
			m[tenantName{d.TenantID, d.Name}] = d
		}
		c.mu.Lock()
		c.deployments = m
		c.byName = nil
		c.loaded = c.keys != nil
		c.mu.Unlock()
	}
	return nil
}

func (c *Cache) loadKeys(ctx context.Context) (keyIndex, error) {
	keys := keyIndex{}
	rows, err := c.pool.Query(ctx, `SELECT hash, `+keyColumns+` FROM api_keys WHERE revoked_at IS NULL`)
	if err != nil {
		return nil, fmt.Errorf("loading keys: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var hash []byte
		k, err := scanKey(rows, &hash)
		if err != nil {
			return nil, fmt.Errorf("loading keys: %w", err)
		}
		var h [sha256.Size]byte
		copy(h[:], hash)
		keys.add(cachedKey{k, h})
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("loading keys: %w", err)
	}
	return keys, nil
}
