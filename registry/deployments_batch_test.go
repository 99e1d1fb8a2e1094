package registry

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

// TestPutDeployments saves deployments in one transaction: all are
// stored, a replaced one keeps its ID, and when one of them cannot be
// saved (weights never uploaded) none is. GetDeployments finds only the
// tenant's, from Postgres and from the cache.
func TestPutDeployments(t *testing.T) {
	s, _ := openStore(t)
	ctx := t.Context()
	acme, _ := s.EnsureTenant(ctx, "acme-batch")
	other, _ := s.EnsureTenant(ctx, "globex-batch")
	art := putArtifact(t, s, strings.Repeat("3", 64))
	batch := func(tenant string, names ...string) []Deployment {
		ds := make([]Deployment, len(names))
		for i, n := range names {
			ds[i] = DefaultDeployment()
			ds[i].TenantID, ds[i].Name, ds[i].ArtifactSHA256 = tenant, n, art.SHA256
		}
		return ds
	}
	var names []string
	for i := range 300 {
		names = append(names, fmt.Sprintf("b-%03d", i))
	}
	saved, err := s.PutDeployments(ctx, batch(acme.ID, names...))
	if err != nil || len(saved) != len(names) {
		t.Fatalf("saving %d: %d, %v", len(names), len(saved), err)
	}
	if _, err := s.PutDeployments(ctx, batch(other.ID, "b-000")); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetDeployments(ctx, acme.ID, append([]string{"missing"}, names...))
	if err != nil || len(got) != len(names) || got["b-007"].ID != saved[7].ID {
		t.Fatalf("GetDeployments: %d found, %v", len(got), err)
	}

	// One bad item: nothing of the batch is saved, the update neither.
	bad := batch(acme.ID, "b-000", "new-1", "new-2")
	bad[0].MaxRunners = 7
	bad[2].ArtifactSHA256 = strings.Repeat("9", 64)
	if _, err := s.PutDeployments(ctx, bad); !errors.Is(err, ErrNotFound) {
		t.Fatalf("a batch with weights never uploaded: %v, want ErrNotFound", err)
	}
	if got, _ := s.GetDeployments(ctx, acme.ID, []string{"b-000", "new-1", "new-2"}); len(got) != 1 || got["b-000"].MaxRunners == 7 {
		t.Errorf("after the refused batch: %+v, want only b-000, unchanged", got)
	}
	// A replaced deployment keeps its ID.
	upd := batch(acme.ID, "b-001")
	upd[0].MaxRunners = 5
	if out, err := s.PutDeployments(ctx, upd); err != nil || out[0].ID != saved[1].ID || out[0].MaxRunners != 5 {
		t.Errorf("update: %+v %v, want ID %s kept", out, err, saved[1].ID)
	}
	if _, err := s.PutDeployments(ctx, make([]Deployment, MaxDeploymentBatch+1)); err == nil {
		t.Error("a batch over MaxDeploymentBatch was accepted")
	}

	c := NewCache(s, nil)
	for _, table := range []string{"deployments", "api_keys"} {
		if err := c.reload(ctx, table); err != nil {
			t.Fatal(err)
		}
	}
	if !c.loaded {
		t.Fatal("cache not loaded")
	}
	if got, err := c.GetDeployments(ctx, other.ID, names[:3]); err != nil || len(got) != 1 || got["b-000"].TenantID != other.ID {
		t.Errorf("cache GetDeployments of the other tenant: %+v %v", got, err)
	}
}
