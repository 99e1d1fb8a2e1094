package registry

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"testing"
	"time"
)

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("%s did not happen within 10s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestCacheFollowsChanges(t *testing.T) {
	s, _ := openStore(t)
	ctx := t.Context()
	tenant, err := s.EnsureTenant(ctx, "acme")
	if err != nil {
		t.Fatal(err)
	}
	key, secret, err := s.CreateKey(ctx, tenant.ID, "app", RoleUser)
	if err != nil {
		t.Fatal(err)
	}
	a, _, err := s.PutArtifact(ctx, Artifact{SHA256: modelSHA256, Size: 1185376, ObjectKey: "uploads/a.gguf", Architecture: "llama"})
	if err != nil {
		t.Fatal(err)
	}

	c := NewCache(s, slog.Default())
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { c.Run(runCtx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	eventually(t, "initial load", func() bool {
		c.mu.RLock()
		defer c.mu.RUnlock()
		return c.loaded
	})

	got, err := c.AuthenticateKey(ctx, secret)
	if err != nil || got.ID != key.ID {
		t.Fatalf("cached key: %+v, %v", got, err)
	}
	if _, err := c.AuthenticateKey(ctx, "sk-nope"); !errors.Is(err, ErrUnauthorized) {
		t.Errorf("unknown key: %v", err)
	}

	// A deployment written by someone else (another activator, straight
	// to the store) appears through the notification.
	d := DefaultDeployment()
	d.Name, d.TenantID, d.ArtifactSHA256 = "stories", tenant.ID, a.SHA256
	if _, err := s.PutDeployment(ctx, d); err != nil {
		t.Fatal(err)
	}
	eventually(t, "deployment appearing in the cache", func() bool {
		_, err := c.GetDeployment(ctx, tenant.ID, "stories")
		return err == nil
	})

	// Lists follow too, by tenant and in name order.
	other, err := s.EnsureTenant(ctx, "globex")
	if err != nil {
		t.Fatal(err)
	}
	for _, dd := range []struct{ name, tenant string }{{"alpha", tenant.ID}, {"theirs", other.ID}} {
		d := d
		d.Name, d.TenantID = dd.name, dd.tenant
		if _, err := s.PutDeployment(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	names := func(tenantID string) []string {
		deps, err := c.ListDeployments(ctx, tenantID)
		if err != nil {
			t.Fatalf("listing deployments: %v", err)
		}
		var out []string
		for _, d := range deps {
			out = append(out, d.Name)
		}
		return out
	}
	eventually(t, "new deployments reaching the cached list", func() bool {
		return slices.Equal(names(tenant.ID), []string{"alpha", "stories"}) && slices.Equal(names(""), []string{"alpha", "stories", "theirs"})
	})
	if err := s.DeleteDeployment(ctx, tenant.ID, "alpha"); err != nil {
		t.Fatal(err)
	}
	eventually(t, "deletion reaching the cached list", func() bool {
		return slices.Equal(names(tenant.ID), []string{"stories"})
	})

	// A revoked key stops working without a restart.
	if err := s.RevokeKey(ctx, tenant.ID, key.ID); err != nil {
		t.Fatal(err)
	}
	eventually(t, "revocation reaching the cache", func() bool {
		_, err := c.AuthenticateKey(ctx, secret)
		return errors.Is(err, ErrUnauthorized)
	})

	// Deleting is seen too.
	if err := s.DeleteDeployment(ctx, tenant.ID, "stories"); err != nil {
		t.Fatal(err)
	}
	eventually(t, "deletion reaching the cache", func() bool {
		_, err := c.GetDeployment(ctx, tenant.ID, "stories")
		return errors.Is(err, ErrNotFound)
	})

	// With Postgres gone, deployments are still listed (from memory).
	d.Name = "survivor"
	if _, err := c.PutDeployment(ctx, d); err != nil {
		t.Fatal(err)
	}
	// (Stop following first: closing the pool waits for the connection
	// that listens.)
	cancel()
	<-done
	s.Close()
	if got := names(tenant.ID); !slices.Equal(got, []string{"survivor"}) {
		t.Errorf("with Postgres closed, tenant lists %q; want [survivor]", got)
	}
}
