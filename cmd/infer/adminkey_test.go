package main

import (
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/infer-run/infer/internal/testenv"
	"github.com/infer-run/infer/registry"
)

// TestAdminKeyNotResurrected: a start never reinstates a revoked admin
// key. With INFER_ADMIN_KEY the start fails and says to set a new one;
// `infer dev`'s saved key is replaced by a new one (the old stays
// revoked). Placeholder keys are refused at start.
func TestAdminKeyNotResurrected(t *testing.T) {
	ctx := t.Context()
	store, err := registry.Open(ctx, testenv.Postgres(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(store.Close)
	log := slog.New(slog.DiscardHandler)
	revoke := func(secret string) {
		t.Helper()
		k, err := store.AuthenticateKey(ctx, secret)
		if err != nil {
			t.Fatal(err)
		}
		if err := store.RevokeKey(ctx, k.TenantID, k.ID); err != nil {
			t.Fatal(err)
		}
	}

	t.Run("INFER_ADMIN_KEY", func(t *testing.T) {
		const secret = "3f9c1a7e5b2d8046c1e9a7b3d5f20486"
		t.Setenv("INFER_ADMIN_KEY", secret)
		home := t.TempDir()
		if err := ensureAdminKey(ctx, store, home, false, log); err != nil {
			t.Fatal(err)
		}
		revoke(secret)
		err := ensureAdminKey(ctx, store, home, false, log)
		if !errors.Is(err, registry.ErrRevoked) || !strings.Contains(err.Error(), "set INFER_ADMIN_KEY to a new secret") {
			t.Errorf("restart with a revoked INFER_ADMIN_KEY: %v; want a refusal saying to set a new one", err)
		}
		if _, err := store.AuthenticateKey(ctx, secret); err == nil {
			t.Error("the revoked INFER_ADMIN_KEY authenticates again after a restart")
		}
	})

	t.Run("placeholder", func(t *testing.T) {
		for _, secret := range []string{"change-me-infer-admin-key", "CHANGE-ME-to-a-long-random-admin-key", "short-key"} {
			t.Setenv("INFER_ADMIN_KEY", secret)
			if err := ensureAdminKey(ctx, store, t.TempDir(), false, log); err == nil {
				t.Errorf("INFER_ADMIN_KEY=%s accepted at start", secret)
			}
			if _, err := store.AuthenticateKey(ctx, secret); err == nil {
				t.Errorf("placeholder %s installed", secret)
			}
		}
	})

	t.Run("dev", func(t *testing.T) {
		t.Setenv("INFER_ADMIN_KEY", "")
		home := t.TempDir()
		keyFile := filepath.Join(home, "admin-key")
		if err := ensureAdminKey(ctx, store, home, true, log); err != nil {
			t.Fatal(err)
		}
		first, _ := os.ReadFile(keyFile)
		old := strings.TrimSpace(string(first))
		revoke(old)
		if err := ensureAdminKey(ctx, store, home, true, log); err != nil {
			t.Fatalf("dev restart after revoking its key: %v", err)
		}
		if _, err := store.AuthenticateKey(ctx, old); err == nil {
			t.Error("infer dev's restart un-revoked its saved admin key")
		}
		second, _ := os.ReadFile(keyFile)
		k, err := store.AuthenticateKey(ctx, strings.TrimSpace(string(second)))
		if err != nil || k.Role != registry.RoleAdmin || strings.TrimSpace(string(second)) == old {
			t.Errorf("after the restart %s holds %q (%+v, %v); want a new working admin key", keyFile, second, k, err)
		}
	})
}
