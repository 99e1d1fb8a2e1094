package controlplane

import (
	"context"

	"github.com/infer-run/infer/registry"
)

// A tenant's max_runners quota bounds the runners of all its deployments
// at once. The control plane applies it where it decides to start
// runners: a deployment that wants more runners than its tenant has left
// gets only those left, and its requests wait in its queue (the
// activator's SSE comments say why) until one of the tenant's runners goes
// idle and stops, or the quota is raised.

// tenantQuotas is the optional part of the Registry that knows quotas
// (registry.Store has it); without it, nothing is capped.
type tenantQuotas interface {
	TenantQuotas(ctx context.Context, tenantID string) (registry.Quotas, error)
}

// CapByTenantQuota is how many runners a deployment may have: want, less
// what would take its tenant past maxRunners. live is the deployment's own
// runners that count, tenantLive all the tenant's (live included).
// Runners already there are never taken away here (idle ones stop by the
// idle timeout as ever): the result is at least live when want is.
// maxRunners 0 is no quota.
func CapByTenantQuota(want, live, tenantLive, maxRunners int) int {
	if maxRunners <= 0 || want <= live {
		return want
	}
	left := max(0, maxRunners-tenantLive)
	return min(want, live+left)
}

// capByTenant applies the tenant's runner quota to want, for a deployment
// about to start runners. It lists runners again (scale-ups are rare: two
// Postgres queries and a driver list per start decision, none per tick) and
// on any error keeps want: failing open starts a runner too many rather
// than leave a paying tenant's requests queued by an outage.
func (cp *ControlPlane) capByTenant(ctx context.Context, d registry.Deployment, live, want int) int {
	tq, ok := cp.cfg.Registry.(tenantQuotas)
	if !ok || want <= live {
		return want
	}
	q, err := tq.TenantQuotas(ctx, d.TenantID)
	if err != nil || q.MaxRunners == 0 {
		return want
	}
	runners, err := cp.cfg.Driver.Runners(ctx)
	if err != nil {
		return want
	}
	// The tenant's deployments as the registry has them now (the
	// control plane's own map is filled after a tick's reconciles).
	deps, err := cp.cfg.Registry.ListDeployments(ctx, d.TenantID)
	if err != nil {
		return want
	}
	tenantOf := make(map[string]string, len(deps)+1)
	for _, x := range deps {
		tenantOf[x.ID] = x.TenantID
	}
	tenantOf[d.ID] = d.TenantID
	tenantLive := 0
	for _, r := range runners {
		if !r.Stopping && r.DeploymentID != d.ID && tenantOf[r.DeploymentID] == d.TenantID {
			tenantLive++
		}
	}
	capped := CapByTenantQuota(want, live, tenantLive+live, q.MaxRunners)
	if capped < want {
		cp.log.Debug("tenant at its runner quota; requests wait for one of its runners", "deployment", d.Name,
			"tenant", d.TenantID, "max_runners", q.MaxRunners, "tenant_runners", tenantLive+live, "want", want, "allowed", capped)
	}
	return capped
}
