package controlplane

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/infer-run/infer/internal/testenv"
	"github.com/infer-run/infer/registry"
)

func TestCapByTenantQuota(t *testing.T) {
	for _, c := range []struct {
		name                               string
		want, live, tenantLive, maxRunners int
		out                                int
	}{
		{"no quota", 5, 0, 9, 0, 5},
		{"under the quota", 2, 0, 1, 4, 2},
		{"exactly at the quota after starting", 3, 1, 2, 4, 3},
		{"partly over: only what is left", 4, 1, 3, 4, 2},
		{"at the quota: no new runner", 1, 0, 2, 2, 0},
		{"over the quota (lowered): keep what runs", 3, 2, 5, 2, 2},
		{"scaling down is not capped", 1, 3, 3, 2, 1},
		{"nothing wanted", 0, 0, 2, 2, 0},
	} {
		if got := CapByTenantQuota(c.want, c.live, c.tenantLive, c.maxRunners); got != c.out {
			t.Errorf("%s: CapByTenantQuota(want %d, live %d, tenant %d, max %d) = %d, want %d",
				c.name, c.want, c.live, c.tenantLive, c.maxRunners, got, c.out)
		}
	}
}

// quotaRegistry is swapRegistry with tenants' quotas.
type quotaRegistry struct {
	swapRegistry
	quotas map[string]registry.Quotas
}

func (r *quotaRegistry) TenantQuotas(_ context.Context, tenantID string) (registry.Quotas, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.quotas[tenantID], nil
}

// TestTenantRunnerQuota: a tenant with max_runners 1 has two deployments
// that each want a runner (min_runners 1); the control plane starts one
// runner for the tenant, never two, while another tenant's deployment
// gets its runner. (The driver is the in-memory cluster of the other
// control plane tests: it runs no processes.)
func TestTenantRunnerQuota(t *testing.T) {
	nc, _ := testenv.JetStream(t)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	dep := func(id, tenant string) registry.Deployment {
		return registry.Deployment{ID: id, TenantID: tenant, Name: id, ArtifactSHA256: "aaaa",
			MinRunners: 1, MaxRunners: 1, Parallel: 1, IdleTimeout: time.Hour}
	}
	reg := &quotaRegistry{quotas: map[string]registry.Quotas{"tnt_capped": {MaxRunners: 1}}}
	reg.set(dep("dep_one", "tnt_capped"), dep("dep_two", "tnt_capped"), dep("dep_free", "tnt_free"))
	c := &cluster{runners: map[string]RunnerRef{}, starts: map[string]int{}}
	cp, err := New(Config{Registry: reg, Driver: clusterView{c, "cp"}, NATS: nc, Logger: slog.Default(), Tick: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cp.Run(ctx) }()
	defer func() { cancel(); <-done }()

	count := func() (capped, free int) {
		c.mu.Lock()
		defer c.mu.Unlock()
		for _, r := range c.runners {
			switch r.DeploymentID {
			case "dep_one", "dep_two":
				capped++
			case "dep_free":
				free++
			}
		}
		return capped, free
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if capped, free := count(); capped == 1 && free == 1 {
			break
		}
		if time.Now().After(deadline) {
			capped, free := count()
			t.Fatalf("runners: %d of the capped tenant, %d of the free one; want 1 and 1", capped, free)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Twenty more ticks start nothing more for the capped tenant.
	time.Sleep(400 * time.Millisecond)
	if capped, _ := count(); capped != 1 {
		t.Errorf("the capped tenant has %d runners, its quota is 1", capped)
	}
	// Raising the quota lets the second deployment start.
	reg.mu.Lock()
	reg.quotas["tnt_capped"] = registry.Quotas{MaxRunners: 2}
	reg.mu.Unlock()
	deadline = time.Now().Add(10 * time.Second)
	for capped, _ := count(); capped != 2; capped, _ = count() {
		if time.Now().After(deadline) {
			t.Fatalf("the capped tenant has %d runners after its quota rose to 2", capped)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
