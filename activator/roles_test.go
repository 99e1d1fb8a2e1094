package activator_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"

	"github.com/infer-run/infer/internal/testenv"
	"github.com/infer-run/infer/registry"
	"github.com/infer-run/infer/runner"
)

// Who calls, in TestRoleTable.
const (
	asAdmin   = "admin"   // the tenant's admin key
	asLimited = "limited" // a user key limited to the deployment "open"
	asUser    = "user"    // a user key without limits
	asOther   = "other"   // another tenant's admin key
	asRevoked = "revoked" // a revoked admin key of the tenant
	asNone    = "none"    // no key
)

var callers = []string{asAdmin, asLimited, asUser, asOther, asRevoked, asNone}

// roleCase is one request and the status each caller gets.
type roleCase struct {
	op   string // the OpenAPI operation: "GET /v1/models/{name}"
	path string // the request's path, with its parameters
	body string
	// pathFor, when set, builds the path for one caller (a DELETE needs
	// something of its own to delete for each).
	pathFor func(caller string) string
	want    map[string]int
}

// statuses spells a want map in callers' order.
func statuses(admin, limited, user, other, revoked, none int) map[string]int {
	return map[string]int{asAdmin: admin, asLimited: limited, asUser: user, asOther: other, asRevoked: revoked, asNone: none}
}

// newKey creates a key through the API with adminSecret and returns its ID
// and secret.
func (h *harness) newKey(adminSecret, body string) (id, secret string) {
	h.t.Helper()
	resp := h.doAs(adminSecret, http.MethodPost, "/v1/keys", body)
	defer resp.Body.Close()
	var k struct {
		ID  string `json:"id"`
		Key string `json:"key"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&k); err != nil || resp.StatusCode != http.StatusCreated {
		h.t.Fatalf("creating key %s: %d %v", body, resp.StatusCode, err)
	}
	return k.ID, k.Key
}

// TestRoleTable calls every route of the OpenAPI document as each kind of
// caller and checks the status each gets. It walks the served document,
// so a route added without a row here fails, and it checks each
// operation's x-infer-access against what the rows show. Then it checks
// what the lists show a limited and a user key: only the deployments they
// may call, only their own usage.
func TestRoleTable(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	const otherAdmin = "sk-infer-other-tenant-admin"
	other, err := h.store.EnsureAdminKey(ctx, "other", otherAdmin)
	if err != nil {
		t.Fatal(err)
	}
	h.deploy("open", map[string]any{})
	h.deploy("closed", map[string]any{})
	// Answers at once, so the completion rows end in 200.
	for _, d := range []string{"open", "closed"} {
		h.startRunnerProcessSpec(runnerProcessSpec{Deployment: d, Engine: runner.EngineConfig{Parallel: 4}, Instant: true})
	}
	limitedID, limited := h.newKey(adminKey, `{"name":"limited","deployments":["open"]}`)
	userID, user := h.newKey(adminKey, `{"name":"user"}`)
	revokedID, revoked := h.newKey(adminKey, `{"name":"revoked","role":"admin"}`)
	if resp := h.do(http.MethodDelete, "/v1/keys/"+revokedID, ""); resp.StatusCode != 200 {
		t.Fatalf("revoking: %d", resp.StatusCode)
	}
	secrets := map[string]string{asAdmin: adminKey, asLimited: limited, asUser: user, asOther: otherAdmin, asRevoked: revoked}

	// An async job the user key submitted.
	code, _, job := call(t, h.url, user, http.MethodPost, "/v1/async/completions", `{"model":"open","prompt":"a","max_tokens":1}`)
	if code != http.StatusAccepted {
		t.Fatalf("submitting an async job: %d %v", code, job)
	}
	jobID := job["id"].(string)

	// Usage: one request of each key of the tenant, one of the other
	// tenant's.
	owner, err := h.store.AuthenticateKey(ctx, adminKey)
	if err != nil {
		t.Fatal(err)
	}
	ownerID := owner.ID
	for i, u := range []struct{ tenant, key, dep string }{
		{owner.TenantID, ownerID, "closed"},
		{owner.TenantID, userID, "open"},
		{owner.TenantID, limitedID, "open"},
		{other.TenantID, other.ID, "theirs"},
	} {
		if _, err := h.store.RecordUsage(ctx, registry.UsageRecord{
			RequestID: fmt.Sprintf("req-%d", i), Deployment: u.dep, DeploymentID: "dep-" + u.dep, TenantID: u.tenant, KeyID: u.key,
			PromptTokens: 1, Status: "ok",
		}); err != nil {
			t.Fatal(err)
		}
	}

	model, err := os.ReadFile(testenv.ModelPath(t))
	if err != nil {
		t.Fatal(err)
	}
	chat := func(m string) string {
		return `{"model":"` + m + `","messages":[{"role":"user","content":"hi"}],"max_tokens":1}`
	}
	prompt := func(m string) string { return `{"model":"` + m + `","prompt":"a","max_tokens":1}` }
	embed := func(m string) string { return `{"model":"` + m + `","input":"a"}` }
	// Each caller deletes its own victim: a deployment and a key that
	// nothing else uses.
	victim := func(c string) string { return "victim-" + c }
	victimKeys := map[string]string{}
	for _, c := range callers {
		h.deploy(victim(c), map[string]any{})
		victimKeys[c], _ = h.newKey(adminKey, `{"name":"victim"}`)
	}

	// Tenants, created through the API by the operator (the admin key of
	// the tenant "default"); each caller deletes a victim of its own.
	victimTenants := map[string]string{}
	for _, c := range callers {
		victimTenants[c] = h.newTenant(adminKey, "victim-tenant-"+c).ID
	}
	suspendee := h.newTenant(adminKey, "suspendee").ID

	const (
		ok, created, accepted             = 200, 201, 202
		forbidden, notFound, unauthorized = 403, 404, 401
		conflict, badRequest              = 409, 400
	)
	cases := []roleCase{
		{op: "GET /healthz", path: "/healthz", want: statuses(ok, ok, ok, ok, ok, ok)},
		{op: "GET /openapi.json", path: "/openapi.json", want: statuses(ok, ok, ok, ok, ok, ok)},

		{op: "POST /v1/chat/completions", path: "/v1/chat/completions", body: chat("open"), want: statuses(ok, ok, ok, notFound, unauthorized, unauthorized)},
		{op: "POST /v1/chat/completions", path: "/v1/chat/completions", body: chat("closed"), want: statuses(ok, forbidden, ok, notFound, unauthorized, unauthorized)},
		{op: "POST /v1/completions", path: "/v1/completions", body: prompt("open"), want: statuses(ok, ok, ok, notFound, unauthorized, unauthorized)},
		{op: "POST /v1/completions", path: "/v1/completions", body: prompt("closed"), want: statuses(ok, forbidden, ok, notFound, unauthorized, unauthorized)},
		{op: "POST /v1/embeddings", path: "/v1/embeddings", body: embed("open"), want: statuses(ok, ok, ok, notFound, unauthorized, unauthorized)},
		{op: "POST /v1/embeddings", path: "/v1/embeddings", body: embed("closed"), want: statuses(ok, forbidden, ok, notFound, unauthorized, unauthorized)},
		{op: "GET /v1/models", path: "/v1/models", want: statuses(ok, ok, ok, ok, unauthorized, unauthorized)},
		{op: "GET /v1/models/{name}", path: "/v1/models/open", want: statuses(ok, ok, ok, notFound, unauthorized, unauthorized)},
		{op: "GET /v1/models/{name}", path: "/v1/models/closed", want: statuses(ok, forbidden, ok, notFound, unauthorized, unauthorized)},

		{op: "POST /v1/async/chat/completions", path: "/v1/async/chat/completions", body: chat("open"), want: statuses(accepted, accepted, accepted, notFound, unauthorized, unauthorized)},
		{op: "POST /v1/async/chat/completions", path: "/v1/async/chat/completions", body: chat("closed"), want: statuses(accepted, forbidden, accepted, notFound, unauthorized, unauthorized)},
		{op: "POST /v1/async/completions", path: "/v1/async/completions", body: prompt("open"), want: statuses(accepted, accepted, accepted, notFound, unauthorized, unauthorized)},
		{op: "POST /v1/async/completions", path: "/v1/async/completions", body: prompt("closed"), want: statuses(accepted, forbidden, accepted, notFound, unauthorized, unauthorized)},
		// The user key's job: its own and the admin's to read.
		{op: "GET /v1/async/{id}", path: "/v1/async/" + jobID, want: statuses(ok, notFound, ok, notFound, unauthorized, unauthorized)},

		{op: "POST /v1/artifacts", path: "/v1/artifacts", body: string(model), want: statuses(created, forbidden, forbidden, created, unauthorized, unauthorized)},

		{op: "GET /v1/deployments", path: "/v1/deployments", want: statuses(ok, ok, ok, ok, unauthorized, unauthorized)},
		{op: "GET /v1/deployments/{name}", path: "/v1/deployments/open", want: statuses(ok, ok, ok, notFound, unauthorized, unauthorized)},
		{op: "GET /v1/deployments/{name}", path: "/v1/deployments/closed", want: statuses(ok, forbidden, ok, notFound, unauthorized, unauthorized)},
		// Another tenant cannot change the deployment: names are per
		// tenant, so the name is free in its own and the PUT would create
		// a deployment of its own, which needs an artifact (400).
		{op: "PUT /v1/deployments/{name}", path: "/v1/deployments/open", body: `{"max_runners":2}`, want: statuses(ok, forbidden, forbidden, badRequest, unauthorized, unauthorized)},
		// Runner logs show every key's requests: admin keys only.
		{op: "GET /v1/deployments/{name}/logs", path: "/v1/deployments/open/logs", want: statuses(ok, forbidden, forbidden, notFound, unauthorized, unauthorized)},
		{op: "GET /v1/deployments/{name}/logs", path: "/v1/deployments/closed/logs?tail=5", want: statuses(ok, forbidden, forbidden, notFound, unauthorized, unauthorized)},
		{op: "PUT /v1/deployments", path: "/v1/deployments", body: `{"deployments":[{"name":"open","max_runners":2}]}`, want: statuses(ok, forbidden, forbidden, badRequest, unauthorized, unauthorized)},
		{op: "DELETE /v1/deployments/{name}", pathFor: func(c string) string { return "/v1/deployments/" + victim(c) },
			want: statuses(ok, forbidden, forbidden, notFound, unauthorized, unauthorized)},

		{op: "GET /v1/usage", path: "/v1/usage", want: statuses(ok, ok, ok, ok, unauthorized, unauthorized)},
		{op: "GET /v1/usage", path: "/v1/usage?group_by=key", want: statuses(ok, ok, ok, ok, unauthorized, unauthorized)},
		{op: "GET /v1/usage", path: "/v1/usage?group_by=deployment", want: statuses(ok, ok, ok, ok, unauthorized, unauthorized)},
		// Another key's usage: the admin's to read; the other tenant's
		// admin reads nothing of it (an empty list).
		{op: "GET /v1/usage", path: "/v1/usage?key=" + ownerID, want: statuses(ok, forbidden, forbidden, ok, unauthorized, unauthorized)},
		{op: "GET /v1/usage", path: "/v1/usage?key=" + userID, want: statuses(ok, forbidden, ok, ok, unauthorized, unauthorized)},

		{op: "GET /v1/me", path: "/v1/me", want: statuses(ok, ok, ok, ok, unauthorized, unauthorized)},
		{op: "GET /v1/keys", path: "/v1/keys", want: statuses(ok, forbidden, forbidden, ok, unauthorized, unauthorized)},
		{op: "POST /v1/keys", path: "/v1/keys", body: `{"name":"new"}`, want: statuses(created, forbidden, forbidden, created, unauthorized, unauthorized)},
		{op: "PATCH /v1/keys/{id}", path: "/v1/keys/" + userID, body: `{"share":2}`, want: statuses(ok, forbidden, forbidden, notFound, unauthorized, unauthorized)},
		{op: "DELETE /v1/keys/{id}", pathFor: func(c string) string { return "/v1/keys/" + victimKeys[c] },
			want: statuses(ok, forbidden, forbidden, notFound, unauthorized, unauthorized)},

		// The operator's routes: the other tenant's admin is a tenant
		// admin, not the operator.
		{op: "POST /v1/tenants", path: "/v1/tenants", body: `{"name":"newcorp"}`, want: statuses(created, forbidden, forbidden, forbidden, unauthorized, unauthorized)},
		{op: "GET /v1/tenants", path: "/v1/tenants", want: statuses(ok, forbidden, forbidden, forbidden, unauthorized, unauthorized)},
		{op: "GET /v1/tenants/{id}", path: "/v1/tenants/" + other.TenantID, want: statuses(ok, forbidden, forbidden, ok, unauthorized, unauthorized)},
		{op: "GET /v1/tenants/{id}", path: "/v1/tenants/" + owner.TenantID, want: statuses(ok, forbidden, forbidden, notFound, unauthorized, unauthorized)},
		{op: "PATCH /v1/tenants/{id}", path: "/v1/tenants/" + other.TenantID, body: `{"quotas":{"max_runners":5}}`, want: statuses(ok, forbidden, forbidden, forbidden, unauthorized, unauthorized)},
		{op: "POST /v1/tenants/{id}/suspend", path: "/v1/tenants/" + suspendee + "/suspend", want: statuses(ok, forbidden, forbidden, forbidden, unauthorized, unauthorized)},
		{op: "POST /v1/tenants/{id}/resume", path: "/v1/tenants/" + suspendee + "/resume", want: statuses(ok, forbidden, forbidden, forbidden, unauthorized, unauthorized)},
		{op: "DELETE /v1/tenants/{id}", pathFor: func(c string) string { return "/v1/tenants/" + victimTenants[c] },
			want: statuses(ok, forbidden, forbidden, forbidden, unauthorized, unauthorized)},
		// An invoice: the operator reads any tenant's, an admin its own.
		{op: "GET /v1/tenants/{id}/invoice", path: "/v1/tenants/" + other.TenantID + "/invoice?month=2026-12", want: statuses(ok, forbidden, forbidden, ok, unauthorized, unauthorized)},
		{op: "GET /v1/tenants/{id}/invoice", path: "/v1/tenants/" + owner.TenantID + "/invoice?format=csv", want: statuses(ok, forbidden, forbidden, notFound, unauthorized, unauthorized)},

		// Artifacts. The other tenant uploaded the same weights in the
		// POST /v1/artifacts row above, so it holds them too; only the
		// owner's deployments use them.
		{op: "GET /v1/artifacts", path: "/v1/artifacts", want: statuses(ok, forbidden, forbidden, ok, unauthorized, unauthorized)},
		{op: "GET /v1/artifacts/{sha}", path: "/v1/artifacts/" + h.art.SHA256, want: statuses(ok, forbidden, forbidden, ok, unauthorized, unauthorized)},
		{op: "GET /v1/artifacts/{sha}", path: "/v1/artifacts/" + strings.Repeat("ab", 32), want: statuses(notFound, forbidden, forbidden, notFound, unauthorized, unauthorized)},
		{op: "DELETE /v1/artifacts/{sha}", path: "/v1/artifacts/" + h.art.SHA256, want: statuses(conflict, forbidden, forbidden, ok, unauthorized, unauthorized)},
	}

	// Every operation of the document has a row, and its x-infer-access
	// agrees with the rows.
	resp, err := http.Get(h.url + "/openapi.json")
	if err != nil {
		t.Fatal(err)
	}
	docBody, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	doc, err := openapi3.NewLoader().LoadFromData(docBody)
	if err != nil {
		t.Fatal(err)
	}
	for path, item := range doc.Paths.Map() {
		for method, op := range item.Operations() {
			name := method + " " + path
			var rows []roleCase
			for _, c := range cases {
				if c.op == name {
					rows = append(rows, c)
				}
			}
			if len(rows) == 0 {
				t.Errorf("%s has no row in TestRoleTable: add one saying what each kind of key gets", name)
				continue
			}
			access, _ := op.Extensions["x-infer-access"].(string)
			for _, r := range rows {
				switch access {
				case "public":
					if r.want[asNone] != ok {
						t.Errorf("%s is public in the document but its row wants %d without a key", name, r.want[asNone])
					}
				case "admin":
					if r.want[asUser] != forbidden || r.want[asNone] != unauthorized {
						t.Errorf("%s is admin-only in the document but its row wants %d for a user key", name, r.want[asUser])
					}
				case "key":
					if r.want[asNone] != unauthorized || r.want[asRevoked] != unauthorized {
						t.Errorf("%s needs a key in the document but its row wants %d without one", name, r.want[asNone])
					}
				case "operator":
					if r.want[asOther] != forbidden || r.want[asUser] != forbidden || r.want[asNone] != unauthorized {
						t.Errorf("%s is the operator's in the document but its row wants %d for another tenant's admin key", name, r.want[asOther])
					}
				default:
					t.Errorf("%s: x-infer-access is %q; want public, key, admin or operator", name, access)
				}
			}
		}
	}

	for _, c := range cases {
		for _, who := range callers {
			path := c.path
			if c.pathFor != nil {
				path = c.pathFor(who)
			}
			method, _, _ := strings.Cut(c.op, " ")
			req, _ := http.NewRequest(method, h.url+path, strings.NewReader(c.body))
			if c.body != "" && c.op != "POST /v1/artifacts" {
				req.Header.Set("Content-Type", "application/json")
			}
			if who != asNone {
				req.Header.Set("Authorization", "Bearer "+secrets[who])
			}
			resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
			if err != nil {
				t.Errorf("%s %s as %s: %v", method, path, who, err)
				continue
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != c.want[who] {
				t.Errorf("%s %s as %s: %d, want %d (%.200s)", method, path, who, resp.StatusCode, c.want[who], b)
			}
			if resp.StatusCode >= 400 && !bytes.Contains(b, []byte(`"error"`)) {
				t.Errorf("%s %s as %s: %d without an error in OpenAI's shape: %.200s", method, path, who, resp.StatusCode, b)
			}
		}
	}

	// What the lists show.
	names := func(key, path, field string) []string {
		t.Helper()
		code, _, body := call(t, h.url, key, http.MethodGet, path, "")
		if code != ok {
			t.Fatalf("GET %s: %d %v", path, code, body)
		}
		var out []string
		for _, d := range body["data"].([]any) {
			out = append(out, fmt.Sprint(d.(map[string]any)[field]))
		}
		slices.Sort(out)
		return out
	}
	allDeps := names(adminKey, "/v1/deployments", "name")
	for _, tt := range []struct {
		key, path, field string
		want             []string
	}{
		{limited, "/v1/deployments", "name", []string{"open"}},
		{limited, "/v1/models", "id", []string{"open"}},
		{user, "/v1/deployments", "name", allDeps},
		{otherAdmin, "/v1/deployments", "name", nil},
		{otherAdmin, "/v1/models", "id", nil},
		// A user key reads its own requests only, however grouped.
		{user, "/v1/usage", "key_id", []string{userID}},
		{limited, "/v1/usage", "key_id", []string{limitedID}},
		{user, "/v1/usage?group_by=key", "group", []string{userID}},
		{limited, "/v1/usage?group_by=deployment", "requests", []string{"1"}},
		{user, "/v1/usage?group_by=day", "requests", []string{"1"}},
		{adminKey, "/v1/usage?group_by=key", "group", sorted(ownerID, userID, limitedID)},
		{otherAdmin, "/v1/usage", "key_id", []string{other.ID}},
	} {
		if got := names(tt.key, tt.path, tt.field); !slices.Equal(got, tt.want) {
			t.Errorf("GET %s as %s: %s %q, want %q", tt.path, map[string]string{limited: "limited", user: "user", otherAdmin: "other", adminKey: "admin"}[tt.key], tt.field, got, tt.want)
		}
	}
}

func sorted(s ...string) []string { slices.Sort(s); return s }

// TestRevokeOwnKey: an admin key revoking itself is refused with a 409
// that says how to do it anyway; with allow_self=true it is revoked and
// answers 401 from then on.
func TestRevokeOwnKey(t *testing.T) {
	h := newHarness(t)
	id, secret := h.newKey(adminKey, `{"name":"self","role":"admin"}`)
	code, _, body := call(t, h.url, secret, http.MethodDelete, "/v1/keys/"+id, "")
	if code != http.StatusConflict || !strings.Contains(fmt.Sprint(body), "allow_self=true") || !strings.Contains(fmt.Sprint(body), "revoking_own_key") {
		t.Fatalf("revoking the calling key: %d %v; want 409 revoking_own_key naming allow_self=true", code, body)
	}
	if code, _, body := call(t, h.url, secret, http.MethodGet, "/v1/keys", ""); code != http.StatusOK {
		t.Fatalf("the key stopped working after a refused revocation: %d %v", code, body)
	}
	if code, _, body := call(t, h.url, secret, http.MethodDelete, "/v1/keys/"+id+"?allow_self=maybe", ""); code != http.StatusBadRequest {
		t.Errorf("allow_self=maybe: %d %v; want 400", code, body)
	}
	if code, _, body := call(t, h.url, secret, http.MethodDelete, "/v1/keys/"+id+"?allow_self=true", ""); code != http.StatusOK {
		t.Fatalf("revoking the calling key with allow_self=true: %d %v", code, body)
	}
	if code, _, _ := call(t, h.url, secret, http.MethodGet, "/v1/keys", ""); code != http.StatusUnauthorized {
		t.Errorf("the revoked key answers %d, want 401", code)
	}
	// Another admin revokes a key without the flag.
	id2, _ := h.newKey(adminKey, `{"name":"other"}`)
	if code, _, body := call(t, h.url, adminKey, http.MethodDelete, "/v1/keys/"+id2, ""); code != http.StatusOK {
		t.Errorf("revoking another key: %d %v", code, body)
	}
}

// TestRevocationReachesEveryActivator: two activators, each with its own
// registry.Cache on the same database, as deployed. A key revoked through
// one stops working on the other within a second (Postgres NOTIFY), not
// at its next restart.
func TestRevocationReachesEveryActivator(t *testing.T) {
	h := newHarness(t)
	var urls []string
	for range 2 {
		cache := registry.NewCache(h.store, slog.Default())
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { cache.Run(ctx); close(done) }()
		t.Cleanup(func() { cancel(); <-done })
		url, _ := h.addActivatorWith(cache)
		urls = append(urls, url)
	}
	id, secret := h.newKey(adminKey, `{"name":"to-revoke"}`)
	// Both caches know the key (a new key reaches them by notification
	// too).
	for i, u := range urls {
		for deadline := time.Now().Add(5 * time.Second); ; {
			code, _, _ := call(t, u, secret, http.MethodGet, "/v1/models", "")
			if code == http.StatusOK {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("activator %d never accepted the new key: %d", i, code)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	if code, _, body := call(t, urls[0], adminKey, http.MethodDelete, "/v1/keys/"+id, ""); code != http.StatusOK {
		t.Fatalf("revoking through activator 0: %d %v", code, body)
	}
	revokedAt := time.Now()
	// Activator 0 wrote through its cache: at once.
	if code, _, _ := call(t, urls[0], secret, http.MethodGet, "/v1/models", ""); code != http.StatusUnauthorized {
		t.Errorf("activator 0 answers %d with the key it revoked, want 401", code)
	}
	// Activator 1 hears of it: the bound is a second.
	for {
		code, _, _ := call(t, urls[1], secret, http.MethodGet, "/v1/models", "")
		if code == http.StatusUnauthorized {
			t.Logf("activator 1 refused the key %v after the revocation", time.Since(revokedAt).Round(time.Millisecond))
			break
		}
		if time.Since(revokedAt) > time.Second {
			t.Fatalf("activator 1 still accepts the key %v after it was revoked (%d)", time.Since(revokedAt), code)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
