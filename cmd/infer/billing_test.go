package main

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/infer-run/infer/internal/testenv"
	"github.com/infer-run/infer/registry"
)

// do sends a request with a key and returns the status, a header and the
// body.
func (p *platform) do(method, path, key, body string) (int, http.Header, []byte) {
	p.t.Helper()
	resp, err := p.request(method, path, key, body)
	if err != nil {
		p.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, b
}

// usageGroups is GET /v1/usage?group_by=….
func (p *platform) usageGroups(key, query string) []usageGroup {
	p.t.Helper()
	code, _, body := p.do(http.MethodGet, "/v1/usage?"+query, key, "")
	if code != 200 {
		p.t.Fatalf("GET /v1/usage?%s: %d %s", query, code, body)
	}
	var out struct{ Data []usageGroup }
	if err := json.Unmarshal(body, &out); err != nil {
		p.t.Fatal(err)
	}
	return out.Data
}

func errCode(body []byte) string {
	var e struct {
		Error struct {
			Code string `json:"code"`
		} `json:"error"`
	}
	json.Unmarshal(body, &e)
	return e.Error.Code
}

// TestBilling checks usage, cost, key limits, tenant isolation and metrics
// against a real platform: usage totals equal what clients were told,
// streaming and not; cost is exact at the deployment's prices; runner time
// is billed; limits refuse the next request with the right error; another
// tenant's key sees nothing on any route.
func TestBilling(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test builds the binary and starts MinIO")
	}
	p := startPlatform(t)
	model := testenv.ModelPath(t)
	const pp, cp, rs = 2.5, 10.0, 0.001
	out, err := p.cli("deploy", "priced", "--weights", model, "--idle-timeout", "2s",
		"--price-prompt", fmt.Sprint(pp), "--price-completion", fmt.Sprint(cp), "--price-runner-second", fmt.Sprint(rs))
	if err != nil {
		t.Fatalf("infer deploy: %v\n%s", err, out)
	}
	if out, err := p.cli("deploy", "other", "--weights", model); err != nil {
		t.Fatalf("infer deploy: %v\n%s", err, out)
	}

	// Three plain and three streamed requests; add up what clients hear.
	var prompt, completion int
	for i := range 6 {
		stream := i%2 == 1
		body := fmt.Sprintf(`{"model":"priced","messages":[{"role":"user","content":"Once upon a time %d"}],"max_tokens":%d,"stream":%v,"stream_options":{"include_usage":true}}`, i, 10+i, stream)
		if !stream {
			body = fmt.Sprintf(`{"model":"priced","messages":[{"role":"user","content":"Once upon a time %d"}],"max_tokens":%d}`, i, 10+i)
		}
		resp, err := p.post("/v1/chat/completions", p.key, body)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != 200 {
			b, _ := io.ReadAll(resp.Body)
			t.Fatalf("request %d: %d %s", i, resp.StatusCode, b)
		}
		if stream {
			chunks, _ := readSSE(t, resp.Body)
			last := chunks[len(chunks)-1]
			if last.Usage == nil {
				t.Fatalf("stream %d has no usage chunk", i)
			}
			prompt += last.Usage.PromptTokens
			completion += last.Usage.CompletionTokens
		} else {
			var c struct {
				Usage struct {
					PromptTokens     int `json:"prompt_tokens"`
					CompletionTokens int `json:"completion_tokens"`
				} `json:"usage"`
			}
			if err := json.NewDecoder(resp.Body).Decode(&c); err != nil {
				t.Fatal(err)
			}
			prompt += c.Usage.PromptTokens
			completion += c.Usage.CompletionTokens
		}
		resp.Body.Close()
	}
	// And an embeddings request: billed as its prompt tokens.
	code, _, eb := p.do(http.MethodPost, "/v1/embeddings", p.key, `{"model":"priced","input":["Once upon a time","The end"]}`)
	var emb struct {
		Usage struct {
			PromptTokens int `json:"prompt_tokens"`
		} `json:"usage"`
	}
	if code != 200 || json.Unmarshal(eb, &emb) != nil || emb.Usage.PromptTokens == 0 {
		t.Fatalf("embeddings: %d %s", code, eb)
	}
	prompt += emb.Usage.PromptTokens
	const requests = 7
	if prompt == 0 || completion == 0 {
		t.Fatalf("clients were told %d prompt and %d completion tokens", prompt, completion)
	}
	wantCost := (float64(prompt)*pp + float64(completion)*cp) / 1e6

	// The runner goes idle and stops; its lifetime is billed too.
	p.waitNoRunners("priced", 60*time.Second)
	var g usageGroup
	deadline := time.Now().Add(60 * time.Second)
	for {
		groups := p.usageGroups(p.key, "group_by=deployment&deployment=priced")
		if len(groups) == 1 {
			g = groups[0]
		}
		if g.Requests == requests && g.RunnerSeconds > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("usage by deployment never showed %d requests and runner time: %+v", requests, groups)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if g.Group != "priced" || g.PromptTokens != int64(prompt) || g.CompletionTokens != int64(completion) || g.ColdStarts < 1 {
		t.Errorf("usage %+v; clients were told %d prompt and %d completion tokens", g, prompt, completion)
	}
	if math.Abs(g.RequestCostUSD-wantCost) > 1e-12 {
		t.Errorf("request cost %.9f, want %.9f", g.RequestCostUSD, wantCost)
	}
	if math.Abs(g.RunnerCostUSD-g.RunnerSeconds*rs) > 1e-9 || math.Abs(g.CostUSD-g.RequestCostUSD-g.RunnerCostUSD) > 1e-12 {
		t.Errorf("runner cost %.9f for %.3f s at %v/s; total %.9f", g.RunnerCostUSD, g.RunnerSeconds, rs, g.CostUSD)
	}
	// The runner lived at least through its 2 s idle timeout.
	if g.RunnerSeconds < 2 {
		t.Errorf("runner seconds %.3f, want at least the idle timeout", g.RunnerSeconds)
	}

	// infer usage exports the same totals as CSV.
	out, err = p.cli("usage", "--group-by", "deployment", "--csv")
	if err != nil {
		t.Fatalf("infer usage --csv: %v\n%s", err, out)
	}
	rows, err := csv.NewReader(strings.NewReader(out)).ReadAll()
	if err != nil || len(rows) < 2 || rows[0][0] != "deployment" {
		t.Fatalf("infer usage --csv: %v\n%s", err, out)
	}
	for _, r := range rows[1:] {
		if r[0] == "priced" {
			if r[1] != strconv.Itoa(requests) || r[2] != strconv.Itoa(prompt) || r[3] != strconv.Itoa(completion) {
				t.Errorf("CSV row %v", r)
			}
			if c, _ := strconv.ParseFloat(r[6], 64); math.Abs(c-wantCost) > 1e-6 {
				t.Errorf("CSV request cost %s, want %.6f", r[6], wantCost)
			}
		}
	}

	createKey := func(args ...string) (id, secret string) {
		t.Helper()
		out, err := p.cli(append([]string{"keys", "create", "--json"}, args...)...)
		if err != nil {
			t.Fatalf("infer keys create %v: %v\n%s", args, err, out)
		}
		var k struct{ ID, Key string }
		if err := json.Unmarshal([]byte(out), &k); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		return k.ID, k.Key
	}
	chat := func(key, model string) (int, http.Header, []byte) {
		return p.do(http.MethodPost, "/v1/chat/completions", key,
			`{"model":"`+model+`","messages":[{"role":"user","content":"Once upon a time"}],"max_tokens":8}`)
	}

	t.Run("deployments", func(t *testing.T) {
		// A misspelt deployment would make a key that can call nothing.
		if out, err := p.cli("keys", "create", "typo", "--deployments", "pricd"); err == nil || !strings.Contains(out, "pricd") {
			t.Errorf("key for a deployment that does not exist: %v\n%s", err, out)
		}
		_, key := createKey("only-priced", "--deployments", "priced")
		waitKey(t, p, key)
		_, _, body := p.do(http.MethodGet, "/v1/models", key, "")
		if !strings.Contains(string(body), `"priced"`) || strings.Contains(string(body), `"other"`) {
			t.Errorf("/v1/models for a key restricted to priced: %s", body)
		}
		if code, _, body := chat(key, "other"); code != 403 || errCode(body) != "permission_denied" {
			t.Errorf("calling a forbidden deployment: %d %s", code, body)
		}
		if code, _, body := p.do(http.MethodGet, "/v1/models/other", key, ""); code != 403 {
			t.Errorf("GET /v1/models/other: %d %s", code, body)
		}
		if code, _, body := chat(key, "priced"); code != 200 {
			t.Errorf("calling an allowed deployment: %d %s", code, body)
		}
	})
	t.Run("requests per minute", func(t *testing.T) {
		_, key := createKey("rpm", "--rpm", "2")
		waitKey(t, p, key)
		for i := range 2 {
			if code, _, body := chat(key, "priced"); code != 200 {
				t.Fatalf("request %d: %d %s", i, code, body)
			}
		}
		code, h, body := chat(key, "priced")
		if code != 429 || errCode(body) != "rate_limit_exceeded" || h.Get("Retry-After") == "" {
			t.Errorf("third request in a minute: %d, Retry-After %q, %s", code, h.Get("Retry-After"), body)
		}
	})
	t.Run("tokens per minute", func(t *testing.T) {
		_, key := createKey("tpm", "--tpm", "5")
		waitKey(t, p, key)
		if code, _, body := chat(key, "priced"); code != 200 {
			t.Fatalf("first request: %d %s", code, body)
		}
		code, h, body := chat(key, "priced")
		if code != 429 || errCode(body) != "rate_limit_exceeded" || h.Get("Retry-After") == "" {
			t.Errorf("request after spending the tokens: %d, Retry-After %q, %s", code, h.Get("Retry-After"), body)
		}
	})
	t.Run("budget", func(t *testing.T) {
		// A request holds its maximum cost before it runs: chat's prompt
		// bound (16 + 4 bytes, 64 per message, 256 for the template) at
		// $2.50 plus 8 tokens at $10 is $0.00093, so a $0.000001 budget
		// refuses it at once, and a $0.001 one admits it once: it costs
		// about $0.0001, and the next one's $0.00093 no longer fits.
		_, tiny := createKey("budget-tiny", "--budget", "0.000001")
		waitKey(t, p, tiny)
		if code, _, body := chat(tiny, "priced"); code != 429 || errCode(body) != "insufficient_quota" {
			t.Errorf("request whose maximum cost exceeds the budget: %d %s", code, body)
		}
		_, key := createKey("budget", "--budget", "0.001")
		waitKey(t, p, key)
		if code, _, body := chat(key, "priced"); code != 200 {
			t.Fatalf("first request: %d %s", code, body)
		}
		if code, _, body := chat(key, "priced"); code != 429 || errCode(body) != "insufficient_quota" {
			t.Errorf("request over budget: %d %s", code, body)
		}
	})

	t.Run("tenant isolation", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		store, err := registry.Open(ctx, p.dbURL)
		if err != nil {
			t.Fatal(err)
		}
		defer store.Close()
		tenant, err := store.EnsureTenant(ctx, "intruder")
		if err != nil {
			t.Fatal(err)
		}
		_, foreign, err := store.CreateKey(ctx, tenant.ID, "intruder-admin", registry.RoleAdmin)
		if err != nil {
			t.Fatal(err)
		}
		waitKey(t, p, foreign)
		// Our tenant: the one INFER_ADMIN_KEY's key belongs to.
		home, err := store.EnsureTenant(ctx, registry.OperatorTenant)
		if err != nil {
			t.Fatal(err)
		}
		ownKeyID, _ := createKey("victim")
		// An async job of ours, to look for.
		code, _, body := p.do(http.MethodPost, "/v1/async/chat/completions", p.key, `{"model":"priced","messages":[{"role":"user","content":"Hi"}],"max_tokens":4}`)
		if code != 202 {
			t.Fatalf("async: %d %s", code, body)
		}
		var job struct{ ID string }
		json.Unmarshal(body, &job)
		// The digest of our weights, which the intruder may know (it is
		// the public file's sha256) but never uploaded.
		code, _, body = p.do(http.MethodGet, "/v1/deployments/priced", p.key, "")
		var priced struct {
			Artifact string `json:"artifact_sha256"`
		}
		if json.Unmarshal(body, &priced); code != 200 || priced.Artifact == "" {
			t.Fatalf("GET /v1/deployments/priced: %d %s", code, body)
		}

		// What must never appear in a foreign tenant's response.
		secret := regexp.MustCompile(`priced|other|` + regexp.QuoteMeta(ownKeyID) + `|` + regexp.QuoteMeta(job.ID) + `|only-priced|victim`)
		routes := []struct {
			method, path, body string
			want               []int // acceptable statuses
		}{
			{"GET", "/v1/models", "", []int{200}},
			{"GET", "/v1/models/priced", "", []int{404}},
			{"POST", "/v1/chat/completions", `{"model":"priced","messages":[{"role":"user","content":"Hi"}]}`, []int{404}},
			{"POST", "/v1/completions", `{"model":"priced","prompt":"Hi"}`, []int{404}},
			{"POST", "/v1/embeddings", `{"model":"priced","input":"Hi"}`, []int{404}},
			{"POST", "/v1/async/chat/completions", `{"model":"priced","messages":[{"role":"user","content":"Hi"}]}`, []int{404}},
			{"POST", "/v1/async/completions", `{"model":"priced","prompt":"Hi"}`, []int{404}},
			{"GET", "/v1/async/" + job.ID, "", []int{404}},
			{"GET", "/v1/deployments", "", []int{200}},
			{"GET", "/v1/deployments/priced", "", []int{404}},
			{"PUT", "/v1/deployments/priced", `{"min_runners":0}`, []int{400, 403, 404, 409}},
			{"DELETE", "/v1/deployments/priced", "", []int{404}},
			{"GET", "/v1/deployments/priced/logs?follow=true", "", []int{404}},
			{"GET", "/v1/usage", "", []int{200}},
			{"GET", "/v1/usage?deployment=priced", "", []int{200}},
			{"GET", "/v1/usage?group_by=deployment", "", []int{200}},
			{"GET", "/v1/usage?group_by=key", "", []int{200}},
			{"GET", "/v1/usage?group_by=day&key=" + ownKeyID, "", []int{200}},
			{"GET", "/v1/keys", "", []int{200}},
			{"GET", "/v1/me", "", []int{200}},
			{"DELETE", "/v1/keys/" + ownKeyID, "", []int{404}},
			{"PATCH", "/v1/keys/" + ownKeyID, `{"share":5}`, []int{404}},
			// Many at once: the names are the intruder's own, so "priced"
			// would be a new deployment of its own, which needs weights.
			{"PUT", "/v1/deployments", `{"deployments":[{"name":"priced","min_runners":0}]}`, []int{400}},
			// A key for our deployment, minted by the other tenant.
			{"POST", "/v1/keys", `{"name":"steal","deployments":["priced"]}`, []int{400}},
			// A deployment of its own running our weights, by digest.
			{"PUT", "/v1/deployments/stolen", `{"artifact":"` + priced.Artifact + `"}`, []int{400}},
			// Uploads are the tenant's own: a broken one is refused.
			{"POST", "/v1/artifacts", "not a GGUF file", []int{400}},
			// Weights: the intruder's own list, never ours by digest.
			{"GET", "/v1/artifacts", "", []int{200}},
			{"GET", "/v1/artifacts/" + priced.Artifact, "", []int{404}},
			{"DELETE", "/v1/artifacts/" + priced.Artifact, "", []int{404}},
			// Tenants are the operator's (tenant default's admin keys): a
			// tenant admin may read only its own, and never ours.
			{"GET", "/v1/tenants", "", []int{403}},
			{"POST", "/v1/tenants", `{"name":"sneaky"}`, []int{403}},
			{"GET", "/v1/tenants/" + home.ID, "", []int{403, 404}},
			{"PATCH", "/v1/tenants/" + home.ID, `{"quotas":{"max_runners":1}}`, []int{403, 404}},
			{"DELETE", "/v1/tenants/" + home.ID, "", []int{403, 404}},
			{"POST", "/v1/tenants/" + home.ID + "/suspend", "", []int{403, 404}},
			{"POST", "/v1/tenants/" + home.ID + "/resume", "", []int{403, 404}},
			{"GET", "/v1/tenants/" + home.ID + "/invoice?month=2026-12", "", []int{403, 404}},
			// Every tenant's deployment names are in the metrics, which
			// the API port does not serve.
			{"GET", "/metrics", "", []int{404}},
		}
		// Every route of the API is tried: the list is checked against
		// the API reference the server serves, which the activator's
		// TestOpenAPIMatchesRoutes keeps equal to its router's routes.
		for _, route := range apiRoutes(t, p) {
			if route == "GET /healthz" || route == "GET /openapi.json" {
				continue // public by design: no tenant data
			}
			method, tmpl, _ := strings.Cut(route, " ")
			// Each {param} matches one path segment.
			quoted := regexp.QuoteMeta(regexp.MustCompile(`\{[^}]+\}`).ReplaceAllString(tmpl, "\x00"))
			pattern := regexp.MustCompile("^" + strings.ReplaceAll(quoted, "\x00", "[^/]+") + "$")
			tried := false
			for _, r := range routes {
				path, _, _ := strings.Cut(r.path, "?")
				tried = tried || (r.method == method && pattern.MatchString(path))
			}
			if !tried {
				t.Errorf("%s is not tried with another tenant's key", route)
			}
		}
		for _, r := range routes {
			code, _, body := p.do(r.method, r.path, foreign, r.body)
			ok := false
			for _, w := range r.want {
				ok = ok || code == w
			}
			if !ok {
				t.Errorf("%s %s with another tenant's key: %d %s, want one of %v", r.method, r.path, code, body, r.want)
			}
			// Error messages may repeat the name the caller sent; data
			// must not leak.
			if code == 200 && secret.Match(body) {
				t.Errorf("%s %s with another tenant's key leaks data: %s", r.method, r.path, body)
			}
		}
		// The foreign digest was refused as the artifact field, as a
		// digest nobody uploaded is.
		code, _, body = p.do(http.MethodPut, "/v1/deployments/stolen", foreign, `{"artifact":"`+priced.Artifact+`"}`)
		var e struct{ Error struct{ Param *string } }
		if json.Unmarshal(body, &e); code != 400 || e.Error.Param == nil || *e.Error.Param != "artifact" {
			t.Errorf("deploying another tenant's artifact: %d %s; want 400 param artifact", code, body)
		}
		if code, _, body := p.do(http.MethodGet, "/v1/deployments/stolen", foreign, ""); code != 404 {
			t.Errorf("the intruder's deployment exists: %d %s", code, body)
		}
		// The deployment and our key survived the attempts.
		if code, _, body := p.do(http.MethodGet, "/v1/deployments/priced", p.key, ""); code != 200 {
			t.Errorf("priced after the intruder: %d %s", code, body)
		}
		if code, _, body := p.do(http.MethodGet, "/v1/keys", p.key, ""); code != 200 || !strings.Contains(string(body), ownKeyID) {
			t.Errorf("our keys after the intruder: %d %s", code, body)
		}
	})

	t.Run("metrics", func(t *testing.T) {
		before := scrape(t, p)
		if code, _, body := chat(p.key, "priced"); code != 200 {
			t.Fatalf("%d %s", code, body)
		}
		after := scrape(t, p)
		for _, m := range []string{
			`infer_requests_total{deployment="priced",status="ok"}`,
			`infer_prompt_tokens_total{deployment="priced"}`,
			`infer_generation_tokens_total{deployment="priced"}`,
			`infer_time_to_first_token_seconds_count{deployment="priced"}`,
			`infer_e2e_request_latency_seconds_count{deployment="priced"}`,
			`infer_request_queue_time_seconds_count{deployment="priced"}`,
			`infer_time_per_output_token_seconds_count{deployment="priced"}`,
			`infer_requests_queued_total{deployment="priced"}`,
		} {
			if after[m] <= before[m] {
				t.Errorf("%s did not move with a request: %v → %v", m, before[m], after[m])
			}
		}
		for _, m := range []string{
			`infer_requests_total{deployment="priced",status="rate_limit_exceeded"}`,
			`infer_requests_total{deployment="priced",status="insufficient_quota"}`,
			`infer_requests_total{deployment="other",status="permission_denied"}`,
		} {
			if after[m] < 1 {
				t.Errorf("%s = %v, want refusals counted", m, after[m])
			}
		}
		for _, m := range []string{`infer_num_requests_waiting{deployment="priced"}`, `infer_num_requests_running{deployment="priced"}`} {
			if v, ok := after[m]; !ok || v != 0 {
				t.Errorf("%s = %v (present %v), want 0 when idle", m, v, ok)
			}
		}
		if _, ok := after[`infer_runners{deployment="priced",phase="ready"}`]; !ok {
			t.Error("no infer_runners gauge for priced")
		}
	})
}

// waitKey waits until the activator's cache knows a new key.
func waitKey(t *testing.T, p *platform, key string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		code, _, _ := p.do(http.MethodGet, "/v1/models", key, "")
		if code == 200 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("new key still refused: %d", code)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// scrape reads the activator's /metrics (on --metrics-addr) into series → value.
func scrape(t *testing.T, p *platform) map[string]float64 {
	t.Helper()
	resp, err := http.Get(p.metrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	out := map[string]float64{}
	for _, line := range strings.Split(string(b), "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err == nil {
			out[line[:i]] = v
		}
	}
	return out
}

// apiRoutes lists "METHOD /path/{param}" for every operation of the API
// reference the activator serves at /openapi.json.
func apiRoutes(t *testing.T, p *platform) []string {
	t.Helper()
	code, _, body := p.do(http.MethodGet, "/openapi.json", "", "")
	var doc struct {
		Paths map[string]map[string]json.RawMessage `json:"paths"`
	}
	if err := json.Unmarshal(body, &doc); code != 200 || err != nil || len(doc.Paths) == 0 {
		t.Fatalf("GET /openapi.json: %d %v %.200s", code, err, body)
	}
	var routes []string
	for path, ops := range doc.Paths {
		for method := range ops {
			switch m := strings.ToUpper(method); m {
			case http.MethodGet, http.MethodPost, http.MethodPut, http.MethodDelete, http.MethodPatch:
				routes = append(routes, m+" "+path)
			}
		}
	}
	slices.Sort(routes)
	return routes
}
