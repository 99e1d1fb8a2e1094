package activator_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/infer-run/infer/internal/ggufgen"
	"github.com/infer-run/infer/internal/queue"
	"github.com/infer-run/infer/internal/testenv"
	"github.com/infer-run/infer/internal/wire"
	"github.com/infer-run/infer/registry"
	"github.com/infer-run/infer/runner"
)

// createdTenant is POST /v1/tenants' answer.
type createdTenant struct {
	ID       string
	AdminKey string
	AdminID  string
}

// newTenant creates a tenant through the API with the operator's key.
func (h *harness) newTenant(operator, name string) createdTenant {
	h.t.Helper()
	return h.newTenantWith(operator, `{"name":"`+name+`"}`)
}

func (h *harness) newTenantWith(operator, body string) createdTenant {
	h.t.Helper()
	resp := h.doAs(operator, http.MethodPost, "/v1/tenants", body)
	defer resp.Body.Close()
	var out struct {
		Tenant   registry.Tenant `json:"tenant"`
		AdminKey struct {
			ID   string `json:"id"`
			Role string `json:"role"`
			Key  string `json:"key"`
		} `json:"admin_key"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || resp.StatusCode != http.StatusCreated {
		h.t.Fatalf("creating tenant %s: %d %v", body, resp.StatusCode, err)
	}
	if out.AdminKey.Role != registry.RoleAdmin || !strings.HasPrefix(out.AdminKey.Key, "sk-infer-") {
		h.t.Fatalf("tenant %s's first key: %+v", body, out.AdminKey)
	}
	return createdTenant{ID: out.Tenant.ID, AdminKey: out.AdminKey.Key, AdminID: out.AdminKey.ID}
}

// otherWeights is valid GGUF with a digest of its own.
func otherWeights(t testing.TB) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := ggufgen.Write(&buf, ggufgen.Small); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// uploadAs uploads weights with key and returns their digest.
func (h *harness) uploadAs(key string, weights []byte) string {
	h.t.Helper()
	resp := h.upload(key, bytes.NewReader(weights), int64(len(weights)))
	defer resp.Body.Close()
	var a registry.Artifact
	if err := json.NewDecoder(resp.Body).Decode(&a); err != nil || resp.StatusCode != http.StatusCreated {
		h.t.Fatalf("uploading: %d %v", resp.StatusCode, err)
	}
	return a.SHA256
}

// isolationSide is one tenant's things, as another tenant must not see them.
type isolationSide struct {
	tenant             createdTenant
	user, userID       string
	only               string // a deployment name only this tenant has
	sha, depID, jobID  string
	requestID, otherID string
}

// TestTenantIsolation creates two tenants through the API, each with an
// admin and a user key, weights, deployments (one name they share, one
// each alone), an async job and usage, and calls every keyed route of the
// API document as each key of one tenant against the other's things: the
// status never reveals them, and no answer holds any of the other's
// identifiers beyond what the request itself named.
func TestTenantIsolation(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	model, err := os.ReadFile(testenv.ModelPath(t))
	if err != nil {
		t.Fatal(err)
	}
	side := func(name string, weights []byte) *isolationSide {
		s := &isolationSide{tenant: h.newTenant(adminKey, name), only: name + "-only"}
		s.userID, s.user = h.newKey(s.tenant.AdminKey, `{"name":"`+name+`-user"}`)
		s.sha = h.uploadAs(s.tenant.AdminKey, weights)
		for _, d := range []string{s.only, "same"} {
			resp := h.doAs(s.tenant.AdminKey, http.MethodPut, "/v1/deployments/"+d, `{"artifact":"`+s.sha+`"}`)
			if resp.StatusCode != http.StatusOK {
				b, _ := io.ReadAll(resp.Body)
				t.Fatalf("%s deploys %s: %d %s", name, d, resp.StatusCode, b)
			}
			resp.Body.Close()
		}
		dep, err := h.store.GetDeployment(ctx, s.tenant.ID, s.only)
		if err != nil {
			t.Fatal(err)
		}
		s.depID = dep.ID
		// A log line of its deployment, naming its request: the other
		// tenant must not read it, not even through its own "same".
		js, err := jetstream.New(h.nc)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := queue.EnsureLogs(ctx, js, 1); err != nil {
			t.Fatal(err)
		}
		line, _ := json.Marshal(wire.LogLine{Time: time.Now(), Level: "INFO", Msg: "handled req-" + name})
		if err := h.nc.Publish(wire.LogSubject(dep.ID, "r1"), line); err != nil {
			t.Fatal(err)
		}
		code, _, job := call(t, h.url, s.user, http.MethodPost, "/v1/async/completions", `{"model":"`+s.only+`","prompt":"a","max_tokens":1}`)
		if code != http.StatusAccepted {
			t.Fatalf("%s submits a job: %d %v", name, code, job)
		}
		s.jobID = job["id"].(string)
		s.requestID = "req-" + name
		if _, err := h.store.RecordUsage(ctx, registry.UsageRecord{RequestID: s.requestID, Deployment: s.only, DeploymentID: dep.ID,
			TenantID: s.tenant.ID, KeyID: s.userID, PromptTokens: 3, Status: "ok", CreatedAt: time.Date(2026, 12, 3, 0, 0, 0, 0, time.UTC)}); err != nil {
			t.Fatal(err)
		}
		return s
	}
	sides := []*isolationSide{side("acme", model), side("globex", otherWeights(t))}

	type route struct {
		op, path, body string
		admin, user    int // the status each key of the other tenant gets
	}
	routes := func(o *isolationSide) []route {
		return []route{
			{"GET /v1/models", "/v1/models", "", 200, 200},
			{"GET /v1/models/{name}", "/v1/models/" + o.only, "", 404, 404},
			{"POST /v1/chat/completions", "/v1/chat/completions", `{"model":"` + o.only + `","messages":[{"role":"user","content":"hi"}]}`, 404, 404},
			{"POST /v1/completions", "/v1/completions", `{"model":"` + o.only + `","prompt":"a"}`, 404, 404},
			{"POST /v1/embeddings", "/v1/embeddings", `{"model":"` + o.only + `","input":"a"}`, 404, 404},
			{"POST /v1/async/chat/completions", "/v1/async/chat/completions", `{"model":"` + o.only + `","messages":[{"role":"user","content":"hi"}]}`, 404, 404},
			{"POST /v1/async/completions", "/v1/async/completions", `{"model":"` + o.only + `","prompt":"a"}`, 404, 404},
			{"GET /v1/async/{id}", "/v1/async/" + o.jobID, "", 404, 404},
			{"GET /v1/deployments", "/v1/deployments", "", 200, 200},
			{"GET /v1/deployments/{name}", "/v1/deployments/" + o.only, "", 404, 404},
			{"GET /v1/deployments/{name}", "/v1/deployments/same", "", 200, 200}, // its own "same"
			{"PUT /v1/deployments/{name}", "/v1/deployments/" + o.only + "?dry_run=true", `{"artifact":"` + o.sha + `"}`, 400, 403},
			{"PUT /v1/deployments/{name}", "/v1/deployments/" + o.only, `{"max_runners":2}`, 400, 403},
			{"PUT /v1/deployments", "/v1/deployments", `{"deployments":[{"name":"` + o.only + `","max_runners":2}]}`, 400, 403},
			{"PUT /v1/deployments", "/v1/deployments", `{"deployments":[{"name":"mine","artifact":"` + o.sha + `"}]}`, 400, 403},
			{"DELETE /v1/deployments/{name}", "/v1/deployments/" + o.only, "", 404, 403},
			{"GET /v1/deployments/{name}/logs", "/v1/deployments/" + o.only + "/logs", "", 404, 403},
			{"GET /v1/deployments/{name}/logs", "/v1/deployments/same/logs", "", 200, 403}, // its own "same"
			{"GET /v1/usage", "/v1/usage", "", 200, 200},
			{"GET /v1/usage", "/v1/usage?group_by=deployment", "", 200, 200},
			{"GET /v1/usage", "/v1/usage?key=" + o.userID, "", 200, 403},
			{"GET /v1/keys", "/v1/keys", "", 200, 403},
			{"GET /v1/me", "/v1/me", "", 200, 200}, // its own key only: nothing to name of the other's
			{"POST /v1/keys", "/v1/keys", `{"name":"x","deployments":["` + o.only + `"]}`, 400, 403},
			{"PATCH /v1/keys/{id}", "/v1/keys/" + o.userID, `{"share":2}`, 404, 403},
			{"DELETE /v1/keys/{id}", "/v1/keys/" + o.userID, "", 404, 403},
			{"GET /v1/artifacts", "/v1/artifacts", "", 200, 403},
			{"GET /v1/artifacts/{sha}", "/v1/artifacts/" + o.sha, "", 404, 403},
			{"DELETE /v1/artifacts/{sha}", "/v1/artifacts/" + o.sha, "", 404, 403},
			{"POST /v1/artifacts", "/v1/artifacts", "not gguf", 400, 403},
			{"GET /v1/tenants", "/v1/tenants", "", 403, 403},
			{"POST /v1/tenants", "/v1/tenants", `{"name":"sneaky"}`, 403, 403},
			{"GET /v1/tenants/{id}", "/v1/tenants/" + o.tenant.ID, "", 404, 403},
			{"PATCH /v1/tenants/{id}", "/v1/tenants/" + o.tenant.ID, `{"quotas":{"max_runners":1}}`, 403, 403},
			{"DELETE /v1/tenants/{id}", "/v1/tenants/" + o.tenant.ID, "", 403, 403},
			{"POST /v1/tenants/{id}/suspend", "/v1/tenants/" + o.tenant.ID + "/suspend", "", 403, 403},
			{"POST /v1/tenants/{id}/resume", "/v1/tenants/" + o.tenant.ID + "/resume", "", 403, 403},
			{"GET /v1/tenants/{id}/invoice", "/v1/tenants/" + o.tenant.ID + "/invoice?month=2026-12", "", 404, 403},
			{"GET /v1/tenants/{id}/invoice", "/v1/tenants/" + o.tenant.ID + "/invoice?month=2026-12&format=csv", "", 404, 403},
		}
	}

	// Every operation that takes a key is in the table.
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
	var covered []string
	for _, r := range routes(sides[0]) {
		covered = append(covered, r.op)
	}
	for path, item := range doc.Paths.Map() {
		for method, op := range item.Operations() {
			if op.Extensions["x-infer-access"] == "public" {
				continue
			}
			if name := method + " " + path; !slices.Contains(covered, name) {
				t.Errorf("%s is not in TestTenantIsolation's table: add a row calling it against the other tenant's things", name)
			}
		}
	}

	for i, me := range sides {
		o := sides[1-i]
		// All of the other tenant's identifiers.
		secrets := []string{o.tenant.ID, o.tenant.AdminID, o.tenant.AdminKey, o.user, o.userID, o.only, o.sha, o.depID, o.jobID, o.requestID}
		for _, r := range routes(o) {
			for _, who := range []struct {
				name, key string
				want      int
			}{{"admin", me.tenant.AdminKey, r.admin}, {"user", me.user, r.user}} {
				method, _, _ := strings.Cut(r.op, " ")
				req, _ := http.NewRequest(method, h.url+r.path, strings.NewReader(r.body))
				if r.body != "" && r.op != "POST /v1/artifacts" {
					req.Header.Set("Content-Type", "application/json")
				}
				resp := h.send(who.key, req)
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != who.want {
					t.Errorf("%s's %s: %s %s: %d, want %d (%.200s)", me.only, who.name, method, r.path, resp.StatusCode, who.want, b)
				}
				for _, s := range secrets {
					if strings.Contains(string(b), s) && !strings.Contains(r.path+r.body, s) {
						t.Errorf("%s's %s: %s %s shows the other tenant's %q: %.300s", me.only, who.name, method, r.path, s, b)
					}
				}
			}
		}
	}
	// Both tenants' things are intact.
	for _, s := range sides {
		if _, err := h.store.GetDeployment(ctx, s.tenant.ID, s.only); err != nil {
			t.Errorf("%s: %v", s.only, err)
		}
		if _, err := h.store.GetTenantArtifact(ctx, s.tenant.ID, s.sha); err != nil {
			t.Errorf("%s's weights: %v", s.only, err)
		}
	}
}

// TestSuspendedTenant suspends a tenant through the API: each of its keys
// gets 403 tenant_suspended on every route, and works again once resumed.
func TestSuspendedTenant(t *testing.T) {
	h := newHarness(t)
	ten := h.newTenant(adminKey, "suspended")
	_, user := h.newKey(ten.AdminKey, `{"name":"u"}`)
	for _, suspend := range []string{"suspend", "resume"} {
		resp := h.do(http.MethodPost, "/v1/tenants/"+ten.ID+"/"+suspend, "")
		var got registry.Tenant
		json.NewDecoder(resp.Body).Decode(&got)
		resp.Body.Close()
		if resp.StatusCode != 200 || (got.SuspendedAt != nil) != (suspend == "suspend") {
			t.Fatalf("%s: %d %+v", suspend, resp.StatusCode, got)
		}
		for _, key := range []string{ten.AdminKey, user} {
			for _, r := range []struct{ method, path string }{{"GET", "/v1/models"}, {"GET", "/v1/keys"}, {"GET", "/v1/usage"}, {"GET", "/v1/tenants/" + ten.ID}} {
				code, _, body := call(t, h.url, key, r.method, r.path, "")
				suspended := code == 403 && body["error"].(map[string]any)["code"] == "tenant_suspended"
				if suspended != (suspend == "suspend") {
					t.Errorf("after %s: %s %s: %d %v", suspend, r.method, r.path, code, body)
				}
			}
		}
	}
	// The operator's own tenant cannot be suspended.
	code, _, body := call(t, h.url, adminKey, "POST", "/v1/tenants/"+h.tenant+"/suspend", "")
	if code != http.StatusConflict {
		t.Errorf("suspending the operator's tenant: %d %v", code, body)
	}
}

// countingReader counts what the server read of an upload.
type countingReader struct {
	r io.Reader
	n atomic.Int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// TestTenantQuotas checks the quotas where the work is decided: a new
// deployment past max_deployments is refused (also in a dry run, before
// any upload), an upload past max_artifact_bytes is refused from its
// Content-Length before a byte of it is sent, a chunked one when it
// passes the quota, and requests past the tenant's requests per minute get
// 429 for the tenant, whichever key sends them.
func TestTenantQuotas(t *testing.T) {
	h := newHarness(t)
	model, err := os.ReadFile(testenv.ModelPath(t))
	if err != nil {
		t.Fatal(err)
	}
	ten := h.newTenantWith(adminKey, `{"name":"quota","quotas":{"max_deployments":1,"max_artifact_bytes":`+itoa(len(model)+1000)+`}}`)
	sha := h.uploadAs(ten.AdminKey, model)

	errCode := func(body map[string]any) any {
		e, _ := body["error"].(map[string]any)
		return e["code"]
	}
	// A second set of weights does not fit: refused before it is sent.
	other := otherWeights(t)
	body := &countingReader{r: bytes.NewReader(other)}
	req, _ := http.NewRequest(http.MethodPost, h.url+"/v1/artifacts", body)
	req.ContentLength = int64(len(other))
	req.Header.Set("Expect", "100-continue")
	req.Header.Set("Authorization", "Bearer "+ten.AdminKey)
	client := &http.Client{Transport: &http.Transport{ExpectContinueTimeout: 30 * time.Second}, Timeout: time.Minute}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var out map[string]any
	json.NewDecoder(resp.Body).Decode(&out)
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden || errCode(out) != "quota_exceeded" || body.n.Load() != 0 {
		t.Errorf("upload over the byte quota: %d %v, %d bytes sent; want 403 quota_exceeded with none sent", resp.StatusCode, out, body.n.Load())
	}
	// Chunked, it is cut where it passes the quota and nothing is kept.
	resp = h.upload(ten.AdminKey, bytes.NewReader(other), -1)
	json.NewDecoder(resp.Body).Decode(&out)
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden || errCode(out) != "quota_exceeded" {
		t.Errorf("chunked upload over the byte quota: %d %v", resp.StatusCode, out)
	}

	// Deployments: a dry run checks name, settings and quota before the
	// weights exist.
	for _, c := range []struct {
		path, body string
		want       int
		code       any
	}{
		{"/v1/deployments/one?dry_run=true", `{}`, 200, nil},
		{"/v1/deployments/one?dry_run=true", `{"parallel":0}`, 400, nil},
		{"/v1/deployments/Bad%20Name?dry_run=true", `{}`, 400, nil},
		{"/v1/deployments/one", `{"artifact":"` + sha + `"}`, 200, nil},
		{"/v1/deployments/two?dry_run=true", `{}`, 403, "quota_exceeded"},
		{"/v1/deployments/two", `{"artifact":"` + sha + `"}`, 403, "quota_exceeded"},
		{"/v1/deployments/one", `{"max_runners":2}`, 200, nil}, // changing one is no new one
	} {
		code, _, out := call(t, h.url, ten.AdminKey, http.MethodPut, c.path, c.body)
		if code != c.want || (c.code != nil && errCode(out) != c.code) {
			t.Errorf("PUT %s %s: %d %v, want %d %v", c.path, c.body, code, out, c.want, c.code)
		}
	}
	deps, _ := h.store.ListDeployments(context.Background(), ten.ID)
	if len(deps) != 1 {
		t.Errorf("the tenant has %d deployments, want 1 (dry runs save nothing)", len(deps))
	}

	// Requests per minute across the tenant's keys: the harness's own
	// tenant (the operator's), with an instant runner.
	h.deploy("rated", map[string]any{})
	h.startRunnerProcessSpec(runnerProcessSpec{Deployment: "rated", Engine: runner.EngineConfig{Parallel: 2}, Instant: true})
	if code, _, out := call(t, h.url, adminKey, http.MethodPatch, "/v1/tenants/"+h.tenant, `{"quotas":{"requests_per_minute":1}}`); code != 200 {
		t.Fatalf("setting the quota: %d %v", code, out)
	}
	_, user := h.newKey(adminKey, `{"name":"second"}`)
	prompt := `{"model":"rated","prompt":"a","max_tokens":1}`
	if code, _, out := call(t, h.url, adminKey, http.MethodPost, "/v1/completions", prompt); code != 200 {
		t.Fatalf("first request: %d %v", code, out)
	}
	code, hdr, out := call(t, h.url, user, http.MethodPost, "/v1/completions", prompt)
	if code != http.StatusTooManyRequests || !strings.Contains(out["error"].(map[string]any)["message"].(string), "tenant") || hdr.Get("Retry-After") == "" {
		t.Errorf("second request of the tenant, another key: %d %v", code, out)
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

// TestArtifactLifecycle lists, checks, deletes and rolls back weights:
// deleting weights a deployment uses is refused naming it, deleting unused
// ones removes the object from the store, and a deployment goes back to
// earlier weights by their digest.
func TestArtifactLifecycle(t *testing.T) {
	h := newHarness(t)
	h.deploy("uses", map[string]any{})
	code, _, out := call(t, h.url, adminKey, http.MethodDelete, "/v1/artifacts/"+h.art.SHA256, "")
	if code != http.StatusConflict || !strings.Contains(out["error"].(map[string]any)["message"].(string), "uses") {
		t.Errorf("deleting weights in use: %d %v", code, out)
	}
	newSHA := h.uploadAs(adminKey, otherWeights(t))
	if code, _, _ := call(t, h.url, adminKey, http.MethodGet, "/v1/artifacts/"+newSHA, ""); code != 200 {
		t.Errorf("GET of held weights: %d", code)
	}
	var list struct {
		Data []registry.TenantArtifact `json:"data"`
	}
	resp := h.do(http.MethodGet, "/v1/artifacts", "")
	json.NewDecoder(resp.Body).Decode(&list)
	resp.Body.Close()
	if len(list.Data) != 2 || list.Data[0].SHA256 != newSHA || len(list.Data[0].Deployments) != 0 ||
		list.Data[1].SHA256 != h.art.SHA256 || !slices.Equal(list.Data[1].Deployments, []string{"uses"}) {
		t.Errorf("artifacts: %+v", list.Data)
	}
	// Move to the new weights, and back (a rollback by digest).
	for _, sha := range []string{newSHA, h.art.SHA256} {
		if code, _, out := call(t, h.url, adminKey, http.MethodPut, "/v1/deployments/uses", `{"artifact":"`+sha+`"}`); code != 200 || out["artifact_sha256"] != sha {
			t.Fatalf("deploying %s: %d %v", sha, code, out)
		}
	}
	a, err := h.store.GetArtifact(context.Background(), newSHA)
	if err != nil {
		t.Fatal(err)
	}
	code, _, out = call(t, h.url, adminKey, http.MethodDelete, "/v1/artifacts/"+newSHA, "")
	if code != 200 || out["object_deleted"] != true {
		t.Errorf("deleting unused weights: %d %v", code, out)
	}
	if _, err := h.blobs.Stat(context.Background(), a.ObjectKey); err == nil {
		t.Errorf("the object %s is still in the store", a.ObjectKey)
	}
	if code, _, _ := call(t, h.url, adminKey, http.MethodGet, "/v1/artifacts/"+newSHA, ""); code != 404 {
		t.Errorf("GET of deleted weights: %d", code)
	}
	if code, _, _ := call(t, h.url, adminKey, http.MethodDelete, "/v1/artifacts/"+newSHA, ""); code != 404 {
		t.Errorf("deleting again: %d", code)
	}
}

// TestRunnerQuotaComment: the tenant (the harness's) has max_runners 1 and
// one runner, on "busy"; a streamed request to its other deployment
// "waiting" queues and its SSE comments say it waits for the tenant's
// runner quota.
func TestRunnerQuotaComment(t *testing.T) {
	h := newHarness(t)
	h.deploy("busy", map[string]any{})
	h.deploy("waiting", map[string]any{})
	h.startRunner("busy", 1, 256)
	if code, _, out := call(t, h.url, adminKey, http.MethodPatch, "/v1/tenants/"+h.tenant, `{"quotas":{"max_runners":1}}`); code != 200 {
		t.Fatalf("setting the quota: %d %v", code, out)
	}
	// The runner's heartbeat reaches the activator.
	deadline := time.Now().Add(30 * time.Second)
	for {
		code, _, out := call(t, h.url, adminKey, http.MethodGet, "/v1/deployments/busy", "")
		if rs, _ := out["runners"].([]any); code == 200 && len(rs) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("busy's runner never showed: %v", out)
		}
		time.Sleep(50 * time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, h.url+"/v1/completions",
		strings.NewReader(`{"model":"waiting","prompt":"a","max_tokens":1,"stream":true}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+adminKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	buf := make([]byte, 4096)
	var got strings.Builder
	for !strings.Contains(got.String(), "max_runners 1") {
		n, err := resp.Body.Read(buf)
		got.Write(buf[:n])
		if err != nil {
			t.Fatalf("the stream never said why it waits (%v):\n%s", err, got.String())
		}
	}
}

// TestArtifactObjectMissing: a record whose object is gone from the blob
// store answers 404 on GET /v1/artifacts/{sha} (so the CLI uploads the
// weights again rather than pointing runners at nothing), and the next
// upload of the same bytes re-points the record at a new object, which
// serves.
func TestArtifactObjectMissing(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	weights := otherWeights(t)
	sha := h.uploadAs(adminKey, weights)
	before, err := h.store.GetArtifact(ctx, sha)
	if err != nil {
		t.Fatal(err)
	}
	if code, _, out := call(t, h.url, adminKey, http.MethodGet, "/v1/artifacts/"+sha, ""); code != http.StatusOK {
		t.Fatalf("GET of stored weights: %d %v", code, out)
	}
	if err := h.blobs.Delete(ctx, before.ObjectKey); err != nil {
		t.Fatal(err)
	}
	code, _, out := call(t, h.url, adminKey, http.MethodGet, "/v1/artifacts/"+sha, "")
	e, _ := out["error"].(map[string]any)
	if code != http.StatusNotFound || e["code"] != "artifact_not_found" || !strings.Contains(e["message"].(string), "missing from the blob store") {
		t.Fatalf("GET of weights whose object is gone: %d %v, want 404 artifact_not_found saying so", code, out)
	}
	// Uploaded again: the same digest, a new object, the record follows.
	if again := h.uploadAs(adminKey, weights); again != sha {
		t.Fatalf("the upload again has digest %s, want %s", again, sha)
	}
	after, err := h.store.GetArtifact(ctx, sha)
	if err != nil {
		t.Fatal(err)
	}
	if after.ObjectKey == before.ObjectKey {
		t.Errorf("the record still points at the deleted object %s", before.ObjectKey)
	}
	if size, err := h.blobs.Stat(ctx, after.ObjectKey); err != nil || size != int64(len(weights)) {
		t.Errorf("the record's object %s: %d bytes, %v; want %d", after.ObjectKey, size, err, len(weights))
	}
	if code, _, out := call(t, h.url, adminKey, http.MethodGet, "/v1/artifacts/"+sha, ""); code != http.StatusOK || out["object_key"] != after.ObjectKey {
		t.Errorf("GET after the upload again: %d %v", code, out)
	}
	// A deployment on it is accepted (cmd/infer's TestTenantsCLI serves one).
	if code, _, out := call(t, h.url, adminKey, http.MethodPut, "/v1/deployments/restored", `{"artifact":"`+sha+`"}`); code != http.StatusOK {
		t.Fatalf("deploying the restored weights: %d %v", code, out)
	}
}
