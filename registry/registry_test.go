package registry

import (
	"context"
	"errors"
	"math"
	"net/url"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/infer-run/infer/internal/testenv"
)

// openStore opens a Store on a fresh database.
func openStore(t *testing.T) (*Store, string) {
	t.Helper()
	dsn := testenv.Postgres(t)
	s, err := Open(t.Context(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s, dsn
}

// TestOpen checks that Open creates a missing database, that processes
// starting together all come up, and that migrating again is a no-op.
func TestOpen(t *testing.T) {
	base := testenv.Postgres(t) // a server we may create databases on
	u, err := url.Parse(base)
	if err != nil {
		t.Fatal(err)
	}
	name := strings.TrimPrefix(u.Path, "/") + "_created"
	u.Path = "/" + name
	dsn := u.String()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, base)
		if err != nil {
			t.Error(err)
			return
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
			t.Error(err)
		}
	})

	const n = 4
	stores := make([]*Store, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { stores[i], errs[i] = Open(t.Context(), dsn) })
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("concurrent Open %d: %v", i, errs[i])
		}
		stores[i].Close()
	}

	s, err := Open(t.Context(), dsn)
	if err != nil {
		t.Fatalf("Open on a migrated database: %v", err)
	}
	defer s.Close()
	var version int
	if err := s.Pool().QueryRow(t.Context(), "SELECT version FROM "+versionTable).Scan(&version); err != nil {
		t.Fatal(err)
	}
	entries, _ := migrationFiles.ReadDir("migrations")
	if version != len(entries) {
		t.Errorf("schema version %d, want %d", version, len(entries))
	}
	for _, table := range []string{"tenants", "api_keys", "artifacts", "deployments", "usage"} {
		var exists bool
		s.Pool().QueryRow(t.Context(), "SELECT to_regclass($1) IS NOT NULL", table).Scan(&exists)
		if !exists {
			t.Errorf("table %s missing", table)
		}
	}
}

func TestOpenBadDSN(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if _, err := Open(ctx, "postgres://127.0.0.1:1/x?sslmode=disable&connect_timeout=2"); err == nil {
		t.Error("Open of an unreachable server worked")
	}
	if _, err := Open(ctx, "::not a dsn::"); err == nil {
		t.Error("Open of a malformed DSN worked")
	}
}

func TestKeys(t *testing.T) {
	s, _ := openStore(t)
	ctx := t.Context()

	if has, err := s.HasAnyKey(ctx); err != nil || has {
		t.Fatalf("HasAnyKey on an empty database = %v, %v", has, err)
	}
	acme, err := s.EnsureTenant(ctx, "acme")
	if err != nil {
		t.Fatal(err)
	}
	again, err := s.EnsureTenant(ctx, "acme")
	if err != nil || again.ID != acme.ID {
		t.Fatalf("EnsureTenant twice: %+v then %+v, %v", acme, again, err)
	}
	other, err := s.EnsureTenant(ctx, "other")
	if err != nil {
		t.Fatal(err)
	}

	key, secret, err := s.CreateKey(ctx, acme.ID, "ci", RoleUser)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(secret, "sk-infer-") || len(secret) != len("sk-infer-")+64 {
		t.Errorf("secret %q does not look like sk-infer-<64 hex>", secret)
	}
	if key.Prefix != secret[:12] || key.Role != RoleUser || key.TenantID != acme.ID || key.Name != "ci" {
		t.Errorf("key record %+v", key)
	}
	var stored int
	s.Pool().QueryRow(ctx, "SELECT count(*) FROM api_keys WHERE hash = $1", sha256Sum([]byte(secret))).Scan(&stored)
	if stored != 1 {
		t.Errorf("%d keys stored under the secret's sha256, want 1", stored)
	}
	if has, _ := s.HasAnyKey(ctx); !has {
		t.Error("HasAnyKey = false after creating one")
	}

	got, err := s.AuthenticateKey(ctx, secret)
	if err != nil || got.ID != key.ID || got.Role != RoleUser {
		t.Fatalf("AuthenticateKey = %+v, %v", got, err)
	}
	for _, wrong := range []string{"", "sk-infer-nope", secret + "x", strings.ToUpper(secret)} {
		if _, err := s.AuthenticateKey(ctx, wrong); !errors.Is(err, ErrUnauthorized) {
			t.Errorf("AuthenticateKey(%q) = %v, want ErrUnauthorized", wrong, err)
		}
	}
	if _, _, err := s.CreateKey(ctx, acme.ID, "x", "root"); err == nil {
		t.Error("CreateKey with role root worked")
	}
	if _, _, err := s.CreateKey(ctx, "tnt_missing", "x", RoleUser); !errors.Is(err, ErrNotFound) {
		t.Errorf("CreateKey for a missing tenant = %v, want ErrNotFound", err)
	}

	if err := s.RevokeKey(ctx, other.ID, key.ID); !errors.Is(err, ErrNotFound) {
		t.Errorf("revoking another tenant's key = %v, want ErrNotFound", err)
	}
	if err := s.RevokeKey(ctx, acme.ID, key.ID); err != nil {
		t.Fatal(err)
	}
	if err := s.RevokeKey(ctx, acme.ID, key.ID); err != nil {
		t.Errorf("revoking twice: %v", err)
	}
	if _, err := s.AuthenticateKey(ctx, secret); !errors.Is(err, ErrUnauthorized) {
		t.Errorf("AuthenticateKey with a revoked key = %v, want ErrUnauthorized", err)
	}
	if has, _ := s.HasAnyKey(ctx); has {
		t.Error("HasAnyKey = true with only a revoked key")
	}
	keys, err := s.ListKeys(ctx, acme.ID)
	if err != nil || len(keys) != 1 || keys[0].RevokedAt == nil {
		t.Errorf("ListKeys = %+v, %v; want the one revoked key", keys, err)
	}
}

func TestEnsureAdminKey(t *testing.T) {
	s, _ := openStore(t)
	ctx := t.Context()
	const secret = "sk-infer-operator-chosen"

	k1, err := s.EnsureAdminKey(ctx, "default", secret)
	if err != nil {
		t.Fatal(err)
	}
	k2, err := s.EnsureAdminKey(ctx, "default", secret)
	if err != nil || k2.ID != k1.ID || k2.Role != RoleAdmin {
		t.Fatalf("EnsureAdminKey twice: %+v then %+v, %v", k1, k2, err)
	}
	got, err := s.AuthenticateKey(ctx, secret)
	if err != nil || got.ID != k1.ID || got.Role != RoleAdmin {
		t.Fatalf("AuthenticateKey = %+v, %v", got, err)
	}
	// Revoked stays revoked: installing it again (a restart) fails and
	// says why, and the key still does not authenticate.
	if err := s.RevokeKey(ctx, k1.TenantID, k1.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := s.EnsureAdminKey(ctx, "default", secret); !errors.Is(err, ErrRevoked) || !strings.Contains(err.Error(), k1.ID) {
		t.Errorf("EnsureAdminKey of a revoked key = %v; want ErrRevoked naming %s", err, k1.ID)
	}
	if _, err := s.AuthenticateKey(ctx, secret); !errors.Is(err, ErrUnauthorized) {
		t.Errorf("after EnsureAdminKey, the revoked key authenticates: %v", err)
	}
	if keys, _ := s.ListKeys(ctx, k1.TenantID); len(keys) != 1 || keys[0].RevokedAt == nil {
		t.Errorf("keys = %+v, want the one revoked key", keys)
	}
	if _, err := s.EnsureAdminKey(ctx, "default", "short"); err == nil {
		t.Error("a 5-character admin key was accepted")
	}
}

func TestCheckAdminSecret(t *testing.T) {
	for _, tt := range []struct {
		secret string
		ok     bool
	}{
		{"change-me-infer-admin-key", false}, // docker-compose.yml's old default
		{"CHANGE-ME-to-a-long-random-admin-key", false},
		{"please-changeme-0123456789", false},
		{"short", false},
		{"0123456789abcde", false}, // 15 characters
		{"aaaaaaaaaaaaaaaaaaaaaaaa", false},
		{"abababababababababab", false},
		{"0123456789abcdef", true},
		{"3f9c1a7e5b2d8046c1e9a7b3d5f20486", true},
		{"sk-infer-operator-chosen", true},
	} {
		if err := CheckAdminSecret(tt.secret); (err == nil) != tt.ok {
			t.Errorf("CheckAdminSecret(%q) = %v, want ok=%v", tt.secret, err, tt.ok)
		}
	}
}

// putArtifact records a made-up artifact.
func putArtifact(t *testing.T, s *Store, sha string) Artifact {
	t.Helper()
	a, _, err := s.PutArtifact(t.Context(), Artifact{SHA256: sha, Size: 1234, ObjectKey: "uploads/" + sha + ".gguf", Architecture: "llama"})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestArtifacts(t *testing.T) {
	s, _ := openStore(t)
	ctx := t.Context()
	a := Artifact{SHA256: modelSHA256, Size: 1185376, ObjectKey: "uploads/a.gguf", Architecture: "llama",
		ParameterCount: 260_000, Quantization: "F32", ContextLength: 2048}
	got, created, err := s.PutArtifact(ctx, a)
	if err != nil || !created {
		t.Fatalf("PutArtifact = %v, %v", created, err)
	}
	if got.CreatedAt.IsZero() {
		t.Error("no created_at")
	}
	got.CreatedAt = time.Time{}
	if got != a {
		t.Errorf("stored %+v, want %+v", got, a)
	}
	b := a
	b.ObjectKey = "uploads/b.gguf"
	got, created, err = s.PutArtifact(ctx, b)
	if err != nil || created || got.ObjectKey != a.ObjectKey {
		t.Errorf("second PutArtifact = %+v, %v, %v; want the first record", got, created, err)
	}
	if got, err := s.GetArtifact(ctx, modelSHA256); err != nil || got.ObjectKey != a.ObjectKey {
		t.Errorf("GetArtifact = %+v, %v", got, err)
	}
	if _, err := s.GetArtifact(ctx, strings.Repeat("0", 64)); !errors.Is(err, ErrNotFound) {
		t.Errorf("GetArtifact of a missing digest = %v, want ErrNotFound", err)
	}
	for _, bad := range []Artifact{
		{SHA256: "abc", Size: 1, ObjectKey: "k"},
		{SHA256: strings.Repeat("A", 64), Size: 1, ObjectKey: "k"},
		{SHA256: strings.Repeat("1", 64), Size: 0, ObjectKey: "k"},
		{SHA256: strings.Repeat("1", 64), Size: 1},
	} {
		if _, _, err := s.PutArtifact(ctx, bad); err == nil {
			t.Errorf("PutArtifact(%+v) worked", bad)
		}
	}
}

func TestValidName(t *testing.T) {
	tests := []struct {
		name string
		ok   bool
	}{
		{"stories", true},
		{"a", true},
		{"7", true},
		{"llama-3_1-8b", true},
		{strings.Repeat("a", 63), true},
		{"", false},
		{strings.Repeat("a", 64), false},
		{"Stories", false},
		{"-lead", false},
		{"trail_", false},
		{"has.dot", false},
		{"has space", false},
		{"wild*", false},
		{"gt>", false},
		{"ünï", false},
	}
	for _, tc := range tests {
		err := ValidName(tc.name)
		if (err == nil) != tc.ok {
			t.Errorf("ValidName(%q) = %v, want ok=%v", tc.name, err, tc.ok)
		}
		if err != nil && tc.name != "" && !strings.Contains(err.Error(), "deployment name") {
			t.Errorf("ValidName(%q) = %q: the message should say what is wrong", tc.name, err)
		}
	}
}

func TestDeploymentValidate(t *testing.T) {
	valid := DefaultDeployment()
	valid.Name = "stories"
	valid.ArtifactSHA256 = modelSHA256
	if err := valid.Validate(); err != nil {
		t.Fatalf("default deployment: %v", err)
	}
	tests := []struct {
		name   string
		change func(*Deployment)
		want   string
		field  string // the FieldError's field: the API's param
	}{
		{"bad name", func(d *Deployment) { d.Name = "a.b" }, "deployment name", "name"},
		{"no artifact", func(d *Deployment) { d.ArtifactSHA256 = "" }, "artifact", "artifact"},
		{"bad artifact", func(d *Deployment) { d.ArtifactSHA256 = "xyz" }, "hex", "artifact"},
		{"negative min", func(d *Deployment) { d.MinRunners = -1 }, "min_runners", "min_runners"},
		{"zero max", func(d *Deployment) { d.MaxRunners = 0 }, "max_runners", "max_runners"},
		{"min over max", func(d *Deployment) { d.MinRunners, d.MaxRunners = 3, 2 }, "more than max_runners", "min_runners"},
		{"zero parallel", func(d *Deployment) { d.Parallel = 0 }, "parallel", "parallel"},
		{"negative context", func(d *Deployment) { d.ContextLength = -1 }, "context_length", "context_length"},
		{"tiny idle timeout", func(d *Deployment) { d.IdleTimeout = time.Millisecond }, "idle_timeout", "idle_timeout"},
		{"zero queue limit", func(d *Deployment) { d.QueueLimit = 0 }, "queue_limit", "queue_limit"},
		{"huge queue timeout", func(d *Deployment) { d.QueueTimeout = 48 * time.Hour }, "queue_timeout", "queue_timeout"},
		{"unknown template", func(d *Deployment) { d.ChatTemplate = "jinja2" }, "chat_template", "chat_template"},
		{"negative price", func(d *Deployment) { d.Prices.PromptPerMTok = -1 }, "prices.prompt_per_mtok", "prices.prompt_per_mtok"},
		{"NaN price", func(d *Deployment) { d.Prices.RunnerSecond = math.NaN() }, "prices.runner_second", "prices.runner_second"},
		{"huge price", func(d *Deployment) { d.Prices.CompletionPerMTok = 2e6 }, "prices.completion_per_mtok", "prices.completion_per_mtok"},
		{"bad cpu", func(d *Deployment) { d.Resources.CPU = "four" }, "resources.cpu", "resources.cpu"},
		{"zero memory", func(d *Deployment) { d.Resources.Memory = "0Gi" }, "resources.memory", "resources.memory"},
		{"negative gpus", func(d *Deployment) { d.Resources.GPUs = -1 }, "resources.gpus", "resources.gpus"},
		{"bad selector key", func(d *Deployment) { d.Resources.NodeSelector = map[string]string{"a b": "x"} }, "node_selector key", "resources.node_selector"},
		{"bad selector value", func(d *Deployment) { d.Resources.NodeSelector = map[string]string{"zone": "a/b"} }, "node_selector value", "resources.node_selector"},
	}
	for _, tc := range tests {
		d := valid
		tc.change(&d)
		err := d.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: Validate = %v, want an error mentioning %q", tc.name, err, tc.want)
		}
		var fe *FieldError
		if !errors.As(err, &fe) || fe.Field != tc.field {
			t.Errorf("%s: Validate = %#v, want a FieldError for %q", tc.name, err, tc.field)
		}
	}
}

func TestDeployments(t *testing.T) {
	s, _ := openStore(t)
	ctx := t.Context()
	acme, _ := s.EnsureTenant(ctx, "acme")
	other, _ := s.EnsureTenant(ctx, "other")
	art1, _, err := s.PutArtifact(ctx, Artifact{SHA256: strings.Repeat("1", 64), Size: 1234, ObjectKey: "uploads/1.gguf", Architecture: "llama", ChatTemplate: "jinja"})
	if err != nil {
		t.Fatal(err)
	}
	art2 := putArtifact(t, s, strings.Repeat("2", 64))

	d := DefaultDeployment()
	d.TenantID, d.Name, d.ArtifactSHA256 = acme.ID, "stories", art1.SHA256
	d.IdleTimeout = 1500 * time.Millisecond
	created, err := s.PutDeployment(ctx, d)
	if err != nil {
		t.Fatal(err)
	}
	if created.ID == "" || created.CreatedAt.IsZero() || created.IdleTimeout != d.IdleTimeout || created.QueueTimeout != 5*time.Minute || created.Parallel != 4 {
		t.Errorf("created %+v", created)
	}

	d.ArtifactSHA256, d.MaxRunners, d.ChatTemplate = art2.SHA256, 3, "chatml"
	d.Prices = Prices{PromptPerMTok: 0.15, CompletionPerMTok: 0.6, RunnerSecond: 0.000123456}
	d.Resources = Resources{CPU: "2", Memory: "4Gi", GPUs: 1, NodeSelector: map[string]string{"pool": "gpu"}}
	updated, err := s.PutDeployment(ctx, d)
	if err != nil {
		t.Fatal(err)
	}
	if updated.Prices != d.Prices || !reflect.DeepEqual(updated.Resources, d.Resources) {
		t.Errorf("prices and resources round trip: got %+v %+v, want %+v %+v", updated.Prices, updated.Resources, d.Prices, d.Resources)
	}
	if updated.ID != created.ID || !updated.CreatedAt.Equal(created.CreatedAt) || updated.UpdatedAt.Before(created.UpdatedAt) {
		t.Errorf("update changed identity: %+v then %+v", created, updated)
	}
	if updated.ArtifactSHA256 != art2.SHA256 || updated.MaxRunners != 3 || updated.ChatTemplate != "chatml" {
		t.Errorf("update not applied: %+v", updated)
	}
	// The template in use: the override, else the artifact's.
	if created.Template != "jinja" || updated.Template != "chatml" {
		t.Errorf("template in use %q, then %q after the override; want jinja (art1's), then chatml", created.Template, updated.Template)
	}

	// Names are per tenant: another tenant's "stories" is its own
	// deployment, with its own ID, and leaves acme's as it was.
	theirs := d
	theirs.TenantID = other.ID
	theirs.ArtifactSHA256 = art1.SHA256
	theirsStored, err := s.PutDeployment(ctx, theirs)
	if err != nil {
		t.Fatalf("PutDeployment of a name another tenant has: %v", err)
	}
	if theirsStored.ID == created.ID || theirsStored.TenantID != other.ID {
		t.Errorf("another tenant's deployment of the same name: %+v, acme's ID %s", theirsStored, created.ID)
	}
	got, err := s.GetDeployment(ctx, acme.ID, "stories")
	if err != nil || got.ID != created.ID || got.ArtifactSHA256 != art2.SHA256 {
		t.Errorf("acme's deployment after another tenant's put: %+v, %v", got, err)
	}
	if got, err := s.GetDeployment(ctx, other.ID, "stories"); err != nil || got.ID != theirsStored.ID {
		t.Errorf("the other tenant's deployment: %+v, %v", got, err)
	}
	if _, err := s.GetDeployment(ctx, "tnt_none", "stories"); !errors.Is(err, ErrNotFound) {
		t.Errorf("GetDeployment for a tenant without it = %v, want ErrNotFound", err)
	}
	if err := s.DeleteDeployment(ctx, other.ID, "stories"); err != nil {
		t.Fatal(err)
	}

	missing := d
	missing.Name, missing.ArtifactSHA256 = "ghost", strings.Repeat("9", 64)
	if _, err := s.PutDeployment(ctx, missing); !errors.Is(err, ErrNotFound) {
		t.Errorf("PutDeployment with a missing artifact = %v, want ErrNotFound", err)
	}
	invalid := d
	invalid.Name = "Bad Name"
	if _, err := s.PutDeployment(ctx, invalid); err == nil {
		t.Error("PutDeployment of an invalid deployment worked")
	}

	d2 := DefaultDeployment()
	d2.TenantID, d2.Name, d2.ArtifactSHA256 = other.ID, "another", art1.SHA256
	if _, err := s.PutDeployment(ctx, d2); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		tenant string
		want   []string
	}{{acme.ID, []string{"stories"}}, {other.ID, []string{"another"}}, {"", []string{"another", "stories"}}, {"tnt_none", nil}} {
		deps, err := s.ListDeployments(ctx, tc.tenant)
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, d := range deps {
			names = append(names, d.Name)
		}
		if strings.Join(names, ",") != strings.Join(tc.want, ",") {
			t.Errorf("ListDeployments(%q) = %v, want %v", tc.tenant, names, tc.want)
		}
	}

	if err := s.DeleteDeployment(ctx, other.ID, "stories"); !errors.Is(err, ErrNotFound) {
		t.Errorf("deleting a deployment only another tenant has = %v, want ErrNotFound", err)
	}
	if err := s.DeleteDeployment(ctx, acme.ID, "stories"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetDeployment(ctx, acme.ID, "stories"); !errors.Is(err, ErrNotFound) {
		t.Errorf("GetDeployment after delete = %v, want ErrNotFound", err)
	}
	if err := s.DeleteDeployment(ctx, acme.ID, "stories"); !errors.Is(err, ErrNotFound) {
		t.Errorf("deleting twice = %v, want ErrNotFound", err)
	}
	// The name is free again, and a new deployment of it gets a new ID.
	again, err := s.PutDeployment(ctx, d)
	if err != nil {
		t.Fatalf("reusing a deleted name: %v", err)
	}
	if again.ID == created.ID {
		t.Errorf("a recreated deployment reuses ID %s", again.ID)
	}
}

func TestUsage(t *testing.T) {
	s, _ := openStore(t)
	ctx := t.Context()
	acme, _ := s.EnsureTenant(ctx, "acme")
	art := putArtifact(t, s, strings.Repeat("1", 64))
	d := DefaultDeployment()
	d.TenantID, d.Name, d.ArtifactSHA256 = acme.ID, "stories", art.SHA256
	dep, err := s.PutDeployment(ctx, d)
	if err != nil {
		t.Fatal(err)
	}

	t0 := time.Now().Add(-24 * time.Hour).Truncate(time.Second).UTC()
	rec := UsageRecord{RequestID: "req-1", Deployment: "stories", KeyID: "key_1", RunnerID: "r1",
		PromptTokens: 10, CompletionTokens: 20, QueueWaitMS: 1.5, TTFTMS: 30.25, DurationMS: 100,
		ColdStart: true, Status: "ok", FinishReason: "stop", CreatedAt: t0}
	for i, want := range []bool{true, false} {
		inserted, err := s.RecordUsage(ctx, rec)
		if err != nil || inserted != want {
			t.Fatalf("RecordUsage #%d = %v, %v; want %v", i+1, inserted, err, want)
		}
	}
	var rows int
	s.Pool().QueryRow(ctx, "SELECT count(*) FROM usage WHERE request_id = 'req-1'").Scan(&rows)
	if rows != 1 {
		t.Fatalf("%d rows for one request", rows)
	}
	for i, r := range []UsageRecord{
		{RequestID: "req-2", Deployment: "stories", TenantID: acme.ID, PromptTokens: 1, CompletionTokens: 2, Status: "ok", CreatedAt: t0.Add(time.Hour)},
		{RequestID: "req-3", Deployment: "gone", TenantID: "tnt_other", PromptTokens: 5, ColdStart: true, Status: "error", CreatedAt: t0.Add(2 * time.Hour)},
		{RequestID: "req-4", Deployment: "stories", PromptTokens: 100, Status: "ok"}, // now
	} {
		if _, err := s.RecordUsage(ctx, r); err != nil {
			t.Fatalf("record %d: %v", i, err)
		}
	}
	if _, err := s.RecordUsage(ctx, UsageRecord{Deployment: "stories"}); err == nil {
		t.Error("a record without request ID was stored")
	}

	all, err := s.ListUsage(ctx, UsageFilter{})
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 4 || all[0].RequestID != "req-4" || all[3].RequestID != "req-1" {
		t.Fatalf("ListUsage = %+v, want 4 records newest first", all)
	}
	got := all[3]
	want := rec
	want.DeploymentID, want.TenantID = dep.ID, acme.ID // filled in from the deployment
	if !got.CreatedAt.Equal(want.CreatedAt) {
		t.Errorf("created_at %v, want %v", got.CreatedAt, want.CreatedAt)
	}
	got.CreatedAt = want.CreatedAt
	if got != want {
		t.Errorf("stored %+v\nwant %+v", got, want)
	}

	ids := func(f UsageFilter) string {
		t.Helper()
		recs, err := s.ListUsage(ctx, f)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, r := range recs {
			out = append(out, r.RequestID)
		}
		return strings.Join(out, ",")
	}
	for _, tc := range []struct {
		name string
		f    UsageFilter
		want string
	}{
		{"tenant", UsageFilter{TenantID: acme.ID}, "req-4,req-2,req-1"},
		{"deployment", UsageFilter{Deployment: "gone"}, "req-3"},
		{"since", UsageFilter{Since: t0.Add(time.Hour)}, "req-4,req-3,req-2"},
		{"until is exclusive", UsageFilter{Until: t0.Add(time.Hour)}, "req-1"},
		{"window", UsageFilter{TenantID: acme.ID, Since: t0, Until: t0.Add(3 * time.Hour)}, "req-2,req-1"},
		{"limit", UsageFilter{Limit: 2}, "req-4,req-3"},
		{"nothing", UsageFilter{TenantID: "tnt_none"}, ""},
	} {
		if got := ids(tc.f); got != tc.want {
			t.Errorf("%s: got %q, want %q", tc.name, got, tc.want)
		}
	}

	sum, err := s.UsageSummary(ctx, UsageFilter{})
	if err != nil {
		t.Fatal(err)
	}
	wantSum := []DeploymentUsage{
		{Deployment: "gone", Requests: 1, PromptTokens: 5, ColdStarts: 1},
		{Deployment: "stories", Requests: 3, PromptTokens: 111, CompletionTokens: 22, ColdStarts: 1},
	}
	if len(sum) != len(wantSum) || sum[0] != wantSum[0] || sum[1] != wantSum[1] {
		t.Errorf("UsageSummary = %+v, want %+v", sum, wantSum)
	}
	if sum, _ := s.UsageSummary(ctx, UsageFilter{TenantID: acme.ID, Since: t0.Add(time.Minute)}); len(sum) != 1 || sum[0].Requests != 2 {
		t.Errorf("filtered UsageSummary = %+v", sum)
	}
}

// TestNotifications checks that changing tenants, deployments or keys notifies
// listeners on ChangesChannel.
func TestNotifications(t *testing.T) {
	s, dsn := openStore(t)
	ctx := t.Context()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "LISTEN "+ChangesChannel); err != nil {
		t.Fatal(err)
	}
	expect := func(table string) {
		t.Helper()
		wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		n, err := conn.WaitForNotification(wctx)
		if err != nil {
			t.Fatalf("waiting for a %s notification: %v", table, err)
		}
		if n.Channel != ChangesChannel || n.Payload != table {
			t.Errorf("notification %q on %q, want %q on %q", n.Payload, n.Channel, table, ChangesChannel)
		}
	}

	tenant, _ := s.EnsureTenant(ctx, "acme")
	expect("tenants") // keys carry their tenant's state (tenants.go)
	art := putArtifact(t, s, strings.Repeat("1", 64))
	d := DefaultDeployment()
	d.TenantID, d.Name, d.ArtifactSHA256 = tenant.ID, "stories", art.SHA256
	if _, err := s.PutDeployment(ctx, d); err != nil {
		t.Fatal(err)
	}
	expect("deployments")
	key, _, err := s.CreateKey(ctx, tenant.ID, "k", RoleUser)
	if err != nil {
		t.Fatal(err)
	}
	expect("api_keys")
	if err := s.RevokeKey(ctx, tenant.ID, key.ID); err != nil {
		t.Fatal(err)
	}
	expect("api_keys")
	if err := s.DeleteDeployment(ctx, tenant.ID, "stories"); err != nil {
		t.Fatal(err)
	}
	expect("deployments")
}

// TestInvalidInput: Postgres refusing a value (a NUL byte, invalid UTF-8)
// is told apart from an outage, so the activator can answer 400 for what
// slips past its checks; a missing row is not such an error.
func TestInvalidInput(t *testing.T) {
	s, _ := openStore(t)
	ctx := t.Context()
	for _, name := range []string{"a\x00b", "\xff\xfe"} {
		_, err := s.GetDeployment(ctx, "t", name)
		if err == nil || !InvalidInput(err) {
			t.Errorf("GetDeployment(%q): %v; want an error InvalidInput recognises", name, err)
		}
	}
	if _, err := s.GetDeployment(ctx, "t", "missing"); InvalidInput(err) {
		t.Errorf("a missing deployment is InvalidInput: %v", err)
	}
	// Limits past their columns are refused before any SQL, naming the
	// field.
	for _, l := range []Limits{{RequestsPerMinute: 1 << 40}, {TokensPerMinute: -1}, {BudgetUSD: ptr(1e308)}, {Deployments: []string{"a\x00"}}} {
		var fe *FieldError
		if err := l.Validate(); !errors.As(err, &fe) {
			t.Errorf("Limits%+v.Validate() = %v; want a FieldError", l, err)
		}
	}
}
