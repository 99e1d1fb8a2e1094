package registry

import (
	"strings"
	"testing"
	"time"

	"github.com/infer-run/infer/internal/wire"
)

// TestUsageFollowsDeploymentID: two tenants deploy the same name, and one
// deletes its deployment and creates it again. Each usage record and
// runner lifetime is stored for the deployment (and tenant) it names by
// ID, never for whoever holds the name when it is ingested; a record
// without an ID (written before names were per tenant) is attributed by
// name only while one deployment has that name.
func TestUsageFollowsDeploymentID(t *testing.T) {
	s, _ := openStore(t)
	ctx := t.Context()
	a, _ := s.EnsureTenant(ctx, "tenant-a")
	b, _ := s.EnsureTenant(ctx, "tenant-b")
	art := putArtifact(t, s, strings.Repeat("c", 64))
	put := func(tenant string) Deployment {
		t.Helper()
		d := DefaultDeployment()
		d.TenantID, d.Name, d.ArtifactSHA256 = tenant, "foo", art.SHA256
		stored, err := s.PutDeployment(ctx, d)
		if err != nil {
			t.Fatal(err)
		}
		return stored
	}
	oldA := put(a.ID)
	if err := s.DeleteDeployment(ctx, a.ID, "foo"); err != nil {
		t.Fatal(err)
	}
	fooB := put(b.ID)
	now := time.Now()

	// A's runner on its deleted deployment ends after B took the name.
	if _, err := s.RecordRunnerUsage(ctx, RunnerUsage{RunnerID: "run-a", Deployment: "foo", DeploymentID: oldA.ID,
		StartedAt: now.Add(-time.Minute), EndedAt: now, PricePerSecond: 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.RecordUsage(ctx, UsageRecord{RequestID: "req-a", Deployment: "foo", DeploymentID: oldA.ID,
		PromptTokens: 3, Status: "ok"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.RecordUsage(ctx, UsageRecord{RequestID: "req-b", Deployment: "foo", DeploymentID: fooB.ID,
		TenantID: b.ID, PromptTokens: 5, Status: "ok"}); err != nil {
		t.Fatal(err)
	}
	// A's old deployment is gone from the table, so its tenant cannot be
	// looked up: the record says nothing of B either.
	var runnerDep, runnerTenant string
	if err := s.pool.QueryRow(ctx, `SELECT deployment_id, tenant_id FROM runner_usage WHERE runner_id = 'run-a'`).
		Scan(&runnerDep, &runnerTenant); err != nil {
		t.Fatal(err)
	}
	if runnerDep != oldA.ID || runnerTenant == b.ID {
		t.Errorf("A's runner stored for deployment %s tenant %s; want %s, not tenant B (%s)", runnerDep, runnerTenant, oldA.ID, b.ID)
	}
	// With its tenant on the record (as the control plane sends it), it
	// is A's.
	if _, err := s.RecordRunnerUsage(ctx, RunnerUsage{RunnerID: "run-a2", Deployment: "foo", DeploymentID: oldA.ID, TenantID: a.ID,
		StartedAt: now.Add(-time.Minute), EndedAt: now, PricePerSecond: 1}); err != nil {
		t.Fatal(err)
	}
	if err := s.pool.QueryRow(ctx, `SELECT tenant_id FROM runner_usage WHERE runner_id = 'run-a2'`).Scan(&runnerTenant); err != nil {
		t.Fatal(err)
	}
	if runnerTenant != a.ID {
		t.Errorf("A's runner billed to tenant %q, want A (%s)", runnerTenant, a.ID)
	}
	bUsage, err := s.ListUsage(ctx, UsageFilter{TenantID: b.ID})
	if err != nil {
		t.Fatal(err)
	}
	if len(bUsage) != 1 || bUsage[0].RequestID != "req-b" {
		t.Errorf("tenant B's usage: %+v; want only req-b", bUsage)
	}

	// Records without an ID: by name while one deployment has it, by
	// nobody once two tenants do.
	if _, err := s.RecordUsage(ctx, UsageRecord{RequestID: "legacy-1", Deployment: "foo", Status: "ok"}); err != nil {
		t.Fatal(err)
	}
	put(a.ID)
	if _, err := s.RecordUsage(ctx, UsageRecord{RequestID: "legacy-2", Deployment: "foo", Status: "ok"}); err != nil {
		t.Fatal(err)
	}
	for id, want := range map[string]string{"legacy-1": b.ID, "legacy-2": ""} {
		var tenant string
		if err := s.pool.QueryRow(ctx, `SELECT tenant_id FROM usage WHERE request_id = $1`, id).Scan(&tenant); err != nil {
			t.Fatal(err)
		}
		if tenant != want {
			t.Errorf("%s stored for tenant %q, want %q", id, tenant, want)
		}
	}
}

// TestNewDeploymentID: IDs are fresh and usable as NATS subject tokens and
// stream-name suffixes, which is what queues and subjects are keyed by.
func TestNewDeploymentID(t *testing.T) {
	seen := map[string]bool{}
	for range 1000 {
		id := NewDeploymentID()
		if !wire.ValidKey(id) || !strings.HasPrefix(id, "dep_") {
			t.Fatalf("NewDeploymentID() = %q, not a valid key", id)
		}
		if seen[id] {
			t.Fatalf("NewDeploymentID() repeated %q", id)
		}
		seen[id] = true
	}
}
