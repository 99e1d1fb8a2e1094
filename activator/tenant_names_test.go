package activator_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/infer-run/infer/internal/wire"
	"github.com/infer-run/infer/registry"
	"github.com/infer-run/infer/runner"
)

// otherTenant makes another tenant with an admin key, owning the harness's
// weights (as if it had uploaded the same bytes).
func (h *harness) otherTenant(name string) (tenantID, key string) {
	h.t.Helper()
	ctx := context.Background()
	tenant, err := h.store.EnsureTenant(ctx, name)
	if err != nil {
		h.t.Fatal(err)
	}
	_, key, err = h.store.CreateKey(ctx, tenant.ID, name+"-admin", registry.RoleAdmin)
	if err != nil {
		h.t.Fatal(err)
	}
	if err := h.store.AddArtifactOwner(ctx, tenant.ID, h.art.SHA256); err != nil {
		h.t.Fatal(err)
	}
	return tenant.ID, key
}

// deployAs creates a deployment with key and returns its ID.
func (h *harness) deployAs(key, name string) string {
	h.t.Helper()
	resp := h.doAs(key, http.MethodPut, "/v1/deployments/"+name, `{"artifact":"`+h.art.SHA256+`","parallel":1}`)
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var d struct{ ID string }
	if resp.StatusCode != 200 || json.Unmarshal(b, &d) != nil || d.ID == "" {
		h.t.Fatalf("PUT /v1/deployments/%s: %d %s", name, resp.StatusCode, b)
	}
	return d.ID
}

// runnerOf starts a runner with a known ID for a deployment (by ID) and
// returns a channel closed when it has stopped by itself.
func (h *harness) runnerOf(id, name, depID string) <-chan struct{} {
	h.t.Helper()
	r, err := runner.New(runner.Config{ID: id, DeploymentID: depID, Deployment: name,
		Artifact: runner.Artifact{SHA256: h.art.SHA256, ObjectKey: h.art.ObjectKey, Size: h.art.Size},
		Cache:    &runner.Cache{Dir: h.t.TempDir(), Blobs: h.blobs}, Engine: runner.EngineConfig{Parallel: 1, Context: 256}},
		h.nc, slog.Default())
	if err != nil {
		h.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Run(ctx, nil); close(done) }()
	h.t.Cleanup(func() { cancel(); <-done })
	return done
}

// usageByID collects the usage records runners publish for deployments,
// by deployment ID, with the subject each came on.
func (h *harness) usageByID(ids ...string) <-chan usageOn {
	h.t.Helper()
	out := make(chan usageOn, 64)
	for _, id := range ids {
		sub, err := h.nc.Subscribe(wire.UsageSubject(id), func(m *nats.Msg) {
			var rec wire.UsageRecord
			if json.Unmarshal(m.Data, &rec) == nil {
				out <- usageOn{id, rec}
			}
		})
		if err != nil {
			h.t.Fatal(err)
		}
		h.t.Cleanup(func() { sub.Unsubscribe() })
	}
	return out
}

type usageOn struct {
	deploymentID string
	rec          wire.UsageRecord
}

func complete(h *harness, key, model string) (int, string) {
	h.t.Helper()
	resp := h.doAs(key, http.MethodPost, "/v1/completions", fmt.Sprintf(`{"model":%q,"prompt":"Once upon a time","max_tokens":4}`, model))
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp.StatusCode, string(b)
}

func nextUsage(t *testing.T, usage <-chan usageOn) usageOn {
	t.Helper()
	select {
	case u := <-usage:
		return u
	case <-time.After(30 * time.Second):
		t.Fatal("no usage record")
		return usageOn{}
	}
}

// TestSameNameTwoTenants: deployment names are per tenant. Two tenants
// each deploy "foo" (the second used to get 409 name_taken, which told it
// the name was another tenant's); each one's requests are served by its
// own deployment's runner and recorded for its own tenant and deployment.
// A third tenant sees "foo" exactly as it sees a name nobody has.
func TestSameNameTwoTenants(t *testing.T) {
	h := newHarness(t)
	tenantB, keyB := h.otherTenant("tenant-b")
	_, keyC := h.otherTenant("tenant-c")
	h.deploy("foo", map[string]any{"parallel": 1})
	idA := h.depID("foo")
	idB := h.deployAs(keyB, "foo")
	if idA == idB {
		t.Fatalf("both tenants' foo have ID %s", idA)
	}
	usage := h.usageByID(idA, idB)
	h.runnerOf("runner-a", "foo", idA)
	h.runnerOf("runner-b", "foo", idB)

	for _, tc := range []struct{ key, tenant, depID, runner string }{
		{adminKey, h.tenant, idA, "runner-a"},
		{keyB, tenantB, idB, "runner-b"},
	} {
		if code, body := complete(h, tc.key, "foo"); code != 200 {
			t.Fatalf("request of tenant %s: %d %s", tc.tenant, code, body)
		}
		u := nextUsage(t, usage)
		if u.deploymentID != tc.depID || u.rec.DeploymentID != tc.depID || u.rec.TenantID != tc.tenant || u.rec.RunnerID != tc.runner {
			t.Errorf("tenant %s's request recorded on %s as %+v; want deployment %s, runner %s", tc.tenant, u.deploymentID, u.rec, tc.depID, tc.runner)
		}
	}

	// Another tenant's name is a free name: same status, same error.
	for _, path := range []string{"/v1/deployments/%s", "/v1/models/%s"} {
		get := func(name string) (int, string) {
			resp := h.doAs(keyC, http.MethodGet, fmt.Sprintf(path, name), "")
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			return resp.StatusCode, strings.ReplaceAll(string(b), name, "NAME")
		}
		takenCode, taken := get("foo")
		freeCode, free := get("bar")
		if takenCode != 404 || takenCode != freeCode || taken != free {
			t.Errorf("GET %s as a third tenant: another's name %d %s, a free one %d %s", path, takenCode, taken, freeCode, free)
		}
	}
	if code, body := complete(h, keyC, "foo"); code != 404 {
		t.Errorf("a third tenant calling foo: %d %s, want 404", code, body)
	}
}

// TestRecycledName: tenant A has a warm runner on "foo" and deletes foo;
// tenant B then deploys "foo". B's request is served by B's runner: A's
// runner (which used to take it, and have its time billed to B) never
// sees it, and stops by itself once its queue is gone.
func TestRecycledName(t *testing.T) {
	h := newHarness(t)
	tenantB, keyB := h.otherTenant("tenant-b")
	h.deploy("foo", map[string]any{"parallel": 1})
	idA := h.depID("foo")
	doneA := h.runnerOf("runner-a", "foo", idA)
	usage := h.usageByID(idA)
	if code, body := complete(h, adminKey, "foo"); code != 200 {
		t.Fatalf("A's request: %d %s", code, body)
	}
	if u := nextUsage(t, usage); u.rec.RunnerID != "runner-a" {
		t.Fatalf("A's request served by %s", u.rec.RunnerID)
	}

	resp := h.do(http.MethodDelete, "/v1/deployments/foo", "")
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("deleting foo: %d", resp.StatusCode)
	}
	idB := h.deployAs(keyB, "foo")
	if idB == idA {
		t.Fatalf("the recreated foo reuses ID %s", idA)
	}
	usage = h.usageByID(idA, idB)

	// B's request waits in B's queue while only A's runner is up.
	type answer struct {
		code int
		body string
	}
	answered := make(chan answer, 1)
	go func() {
		code, body := complete(h, keyB, "foo")
		answered <- answer{code, body}
	}()
	select {
	case <-doneA:
	case <-time.After(10 * time.Second):
		t.Error("A's runner still runs 10 s after its deployment was deleted")
	}
	select {
	case a := <-answered:
		t.Fatalf("B's request answered with no runner of B's up: %d %s", a.code, a.body)
	case u := <-usage:
		t.Fatalf("B's request recorded with no runner of B's up: %+v", u.rec)
	case <-time.After(time.Second):
	}
	h.runnerOf("runner-b", "foo", idB)
	a := <-answered
	if a.code != 200 {
		t.Fatalf("B's request: %d %s", a.code, a.body)
	}
	u := nextUsage(t, usage)
	if u.deploymentID != idB || u.rec.RunnerID != "runner-b" || u.rec.TenantID != tenantB {
		t.Errorf("B's request recorded on %s as %+v; want deployment %s, runner-b, tenant %s", u.deploymentID, u.rec, idB, tenantB)
	}
}
