package registry

import (
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/tern/v2/migrate"

	"github.com/infer-run/infer/internal/testenv"
)

// TestArtifactOwners: an artifact is visible to the tenants that uploaded
// it and to nobody else, as if it did not exist.
func TestArtifactOwners(t *testing.T) {
	s, _ := openStore(t)
	ctx := t.Context()
	acme, _ := s.EnsureTenant(ctx, "acme")
	other, _ := s.EnsureTenant(ctx, "other")
	sha := strings.Repeat("ab", 32)
	if _, _, err := s.PutArtifact(ctx, Artifact{SHA256: sha, Size: 10, ObjectKey: "uploads/x.gguf", Architecture: "llama"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetTenantArtifact(ctx, acme.ID, sha); !errors.Is(err, ErrNotFound) {
		t.Errorf("an artifact nobody owns: %v, want ErrNotFound", err)
	}
	for range 2 { // idempotent
		if err := s.AddArtifactOwner(ctx, acme.ID, sha); err != nil {
			t.Fatal(err)
		}
	}
	if a, err := s.GetTenantArtifact(ctx, acme.ID, sha); err != nil || a.SHA256 != sha || a.ObjectKey != "uploads/x.gguf" {
		t.Errorf("the owner's artifact: %+v, %v", a, err)
	}
	if _, err := s.GetTenantArtifact(ctx, other.ID, sha); !errors.Is(err, ErrNotFound) {
		t.Errorf("another tenant's artifact: %v, want ErrNotFound", err)
	}
	if err := s.AddArtifactOwner(ctx, other.ID, sha); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetTenantArtifact(ctx, other.ID, sha); err != nil {
		t.Errorf("after uploading it too: %v", err)
	}
	if err := s.AddArtifactOwner(ctx, acme.ID, strings.Repeat("cd", 32)); !errors.Is(err, ErrNotFound) {
		t.Errorf("owning a missing artifact: %v, want ErrNotFound", err)
	}
}

// TestArtifactOwnersBackfill migrates databases written before artifacts
// had owners: deployed artifacts belong to their deployments' tenants, and
// the only tenant of a single-tenant database owns every artifact.
func TestArtifactOwnersBackfill(t *testing.T) {
	for _, tenants := range []int{1, 2} {
		t.Run(fmt.Sprintf("%d tenants", tenants), func(t *testing.T) {
			ctx := t.Context()
			dsn := testenv.Postgres(t)
			conn, err := pgx.Connect(ctx, dsn)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close(ctx)
			m, err := migrate.NewMigrator(ctx, conn, versionTable)
			if err != nil {
				t.Fatal(err)
			}
			sub, _ := fs.Sub(migrationFiles, "migrations")
			if err := m.LoadMigrations(sub); err != nil {
				t.Fatal(err)
			}
			if err := m.MigrateTo(ctx, 3); err != nil {
				t.Fatal(err)
			}
			deployed, spare := strings.Repeat("a1", 32), strings.Repeat("b2", 32)
			stmts := []string{
				`INSERT INTO tenants (id, name) VALUES ('tnt_a', 'a')`,
				`INSERT INTO artifacts (sha256, size, object_key, architecture) VALUES ('` + deployed + `', 1, 'k1', 'llama'), ('` + spare + `', 1, 'k2', 'llama')`,
				`INSERT INTO deployments (id, tenant_id, name, artifact_sha256) VALUES ('dep_1', 'tnt_a', 'one', '` + deployed + `')`,
			}
			if tenants == 2 {
				stmts = append(stmts, `INSERT INTO tenants (id, name) VALUES ('tnt_b', 'b')`)
			}
			for _, q := range stmts {
				if _, err := conn.Exec(ctx, q); err != nil {
					t.Fatalf("%s: %v", q, err)
				}
			}
			s, err := Open(ctx, dsn)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			rows, _ := s.Pool().Query(ctx, `SELECT tenant_id || ' ' || sha256 FROM artifact_owners ORDER BY 1`)
			got, err := pgx.CollectRows(rows, pgx.RowTo[string])
			if err != nil {
				t.Fatal(err)
			}
			want := []string{"tnt_a " + deployed}
			if tenants == 1 {
				want = append(want, "tnt_a "+spare)
			}
			if !slices.Equal(got, want) {
				t.Errorf("owners after migrating: %q, want %q", got, want)
			}
		})
	}
}
