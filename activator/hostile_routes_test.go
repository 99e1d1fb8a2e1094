package activator_test

import (
	"encoding/json"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
)

// leaks are what an error body must never hold: encoding/json's and
// Postgres' words, Go package or type names, server paths.
var leaks = []string{"Go struct", "json:", "unmarshal", "struct field", "registry.", "activator.", "deploymentSpec",
	"pgx", "SQLSTATE", "invalid byte sequence", "out of range for type", os.TempDir() + "/"}

// TestHostileInputsEveryRoute sends each route of the OpenAPI document
// values Postgres cannot hold (a NUL byte, invalid UTF-8, numbers past a
// column's range) and JSON of the wrong types, and wants a 400 naming the
// parameter, in OpenAI's shape, with none of the leaks: before they were
// checked, these answered 503 registry_unavailable ("the registry is
// down") or quoted encoding/json. Routes that take no input are listed as
// such; a new route needs one or the other.
func TestHostileInputsEveryRoute(t *testing.T) {
	h := newHarness(t)
	h.deploy("target", map[string]any{})
	sha := h.art.SHA256
	chat := func(model string) string {
		return `{"model":"` + model + `","messages":[{"role":"user","content":"hi"}],"max_tokens":1}`
	}
	noInput := map[string]bool{
		"GET /healthz": true, "GET /openapi.json": true, "GET /v1/models": true,
		"GET /v1/deployments": true, "GET /v1/keys": true, "GET /v1/me": true,
		"GET /v1/tenants": true, "GET /v1/artifacts": true,
	}
	cases := []struct {
		op, path, body string
		status         int
		param          string // "" for null
	}{
		{"GET /v1/models/{name}", "/v1/models/a%00b", "", 400, "name"},
		{"GET /v1/models/{name}", "/v1/models/%FF%FE", "", 400, "name"},
		{"GET /v1/deployments/{name}", "/v1/deployments/a%00b", "", 400, "name"},
		{"GET /v1/deployments/{name}", "/v1/deployments/%C3%28", "", 400, "name"},
		{"DELETE /v1/deployments/{name}", "/v1/deployments/a%00b", "", 400, "name"},
		{"GET /v1/deployments/{name}/logs", "/v1/deployments/a%00b/logs", "", 400, "name"},
		{"GET /v1/deployments/{name}/logs", "/v1/deployments/target/logs?tail=%00", "", 400, "tail"},
		{"GET /v1/deployments/{name}/logs", "/v1/deployments/target/logs?tail=99999999999999999999", "", 400, "tail"},
		{"GET /v1/deployments/{name}/logs", "/v1/deployments/target/logs?since=%FF", "", 400, "since"},
		{"GET /v1/deployments/{name}/logs", "/v1/deployments/target/logs?since=9999999999h", "", 400, "since"},
		{"GET /v1/deployments/{name}/logs", "/v1/deployments/target/logs?runner=%00", "", 400, "runner"},
		{"GET /v1/deployments/{name}/logs", "/v1/deployments/target/logs?follow=%00", "", 400, "follow"},
		{"PUT /v1/deployments/{name}", "/v1/deployments/a%00b", `{"artifact":"` + sha + `"}`, 400, "name"},
		{"PUT /v1/deployments/{name}", "/v1/deployments/target", `{"artifact":"a\u0000b"}`, 400, "artifact"},
		{"PUT /v1/deployments/{name}", "/v1/deployments/fresh", `{"artifact":"` + strings.Repeat("f", 63) + "\xff" + `"}`, 400, "artifact"},
		{"PUT /v1/deployments/{name}", "/v1/deployments/target", `{"min_runners":1e40}`, 400, "min_runners"},
		{"PUT /v1/deployments/{name}", "/v1/deployments/target", `{"min_runners":"2"}`, 400, "min_runners"},
		{"PUT /v1/deployments/{name}", "/v1/deployments/target", `{"max_runners":1099511627776}`, 400, "max_runners"},
		{"PUT /v1/deployments/{name}", "/v1/deployments/target", `{"queue_limit":-1099511627776}`, 400, "queue_limit"},
		{"PUT /v1/deployments/{name}", "/v1/deployments/target", `{"context_length":1099511627776}`, 400, "context_length"},
		{"PUT /v1/deployments/{name}", "/v1/deployments/target", `{"prices":{"prompt_per_mtok":1e308}}`, 400, "prices.prompt_per_mtok"},
		{"PUT /v1/deployments/{name}", "/v1/deployments/target", `{"prices":{"runner_second":1e400}}`, 400, "prices.runner_second"},
		{"PUT /v1/deployments/{name}", "/v1/deployments/target", `{"prices":"free"}`, 400, "prices"},
		{"PUT /v1/deployments/{name}", "/v1/deployments/target", `{"idle_timeout":1e308}`, 400, ""},
		{"PUT /v1/deployments/{name}", "/v1/deployments/target", `{"queue_timeout":"9999999999h"}`, 400, ""},
		{"PUT /v1/deployments/{name}", "/v1/deployments/target", `{"resources":{"gpus":1099511627776}}`, 400, "resources.gpus"},
		{"PUT /v1/deployments/{name}", "/v1/deployments/target", `{"resources":{"node_selector":{"a":"b\u0000"}}}`, 400, "resources.node_selector"},
		{"PUT /v1/deployments/{name}", "/v1/deployments/target", `{"chat_template":"a\u0000"}`, 400, "chat_template"},
		{"PUT /v1/deployments/{name}", "/v1/deployments/target", `[1,2]`, 400, ""},
		{"PUT /v1/deployments", "/v1/deployments", `{"deployments":[{"name":"a\u0000b","artifact":"` + sha + `"}]}`, 400, "deployments"},
		{"PUT /v1/deployments", "/v1/deployments", `{"deployments":[{"name":"target","min_runners":1e40}]}`, 400, "deployments"},
		{"PUT /v1/deployments", "/v1/deployments", `{"deployments":[{"name":7}]}`, 400, "deployments"},
		{"PUT /v1/deployments", "/v1/deployments", `{"deployments":[{"name":"target","chat_template":"a\u0000"}]}`, 400, "deployments"},
		{"PUT /v1/deployments", "/v1/deployments", `{"deployments":"target"}`, 400, "deployments"},
		{"PUT /v1/deployments", "/v1/deployments", `[1,2]`, 400, ""},
		{"PUT /v1/deployments/{name}", "/v1/deployments/target", `{"min_runners":`, 400, ""},

		{"POST /v1/keys", "/v1/keys", `{"requests_per_minute":1099511627776}`, 400, "requests_per_minute"},
		{"POST /v1/keys", "/v1/keys", `{"tokens_per_minute":2147483648}`, 400, "tokens_per_minute"},
		{"POST /v1/keys", "/v1/keys", `{"requests_per_minute":1e400}`, 400, "requests_per_minute"},
		{"POST /v1/keys", "/v1/keys", `{"requests_per_minute":"many"}`, 400, "requests_per_minute"},
		{"POST /v1/keys", "/v1/keys", `{"budget_usd":1e308}`, 400, "budget_usd"},
		{"POST /v1/keys", "/v1/keys", `{"budget_usd":100000000000}`, 400, "budget_usd"},
		{"POST /v1/keys", "/v1/keys", `{"deployments":["a\u0000b"]}`, 400, "deployments"},
		{"POST /v1/keys", "/v1/keys", `{"deployments":["` + "\xff" + `"]}`, 400, "deployments"},
		{"POST /v1/keys", "/v1/keys", `{"deployments":"target"}`, 400, "deployments"},
		{"POST /v1/keys", "/v1/keys", `{"name":"a\u0000"}`, 400, "name"},
		{"POST /v1/keys", "/v1/keys", `{"name":"x","share":-1}`, 400, "share"},
		{"POST /v1/keys", "/v1/keys", `{"name":"x","share":1099511627776}`, 400, "share"},
		{"PATCH /v1/keys/{id}", "/v1/keys/key_%00", `{"share":2}`, 400, "id"},
		{"PATCH /v1/keys/{id}", "/v1/keys/key_x", `{"share":1e400}`, 400, "share"},
		{"PATCH /v1/keys/{id}", "/v1/keys/key_x", `{"share":"many"}`, 400, "share"},
		{"PATCH /v1/keys/{id}", "/v1/keys/key_x", `{"share":null}`, 400, "share"},
		{"PATCH /v1/keys/{id}", "/v1/keys/key_x", `{"role":"admin"}`, 400, "role"},
		{"PATCH /v1/keys/{id}", "/v1/keys/key_x", `[1]`, 400, ""},
		{"DELETE /v1/keys/{id}", "/v1/keys/key_%00", "", 400, "id"},
		{"DELETE /v1/keys/{id}", "/v1/keys/%FF", "", 400, "id"},

		{"GET /v1/usage", "/v1/usage?deployment=a%00b", "", 400, "deployment"},
		{"GET /v1/usage", "/v1/usage?key=%FF", "", 400, "key"},
		{"GET /v1/usage", "/v1/usage?group_by=key&key=key_%00", "", 400, "key"},
		{"GET /v1/usage", "/v1/usage?group_by=deployment&deployment=%C3%28", "", 400, "deployment"},
		{"GET /v1/usage", "/v1/usage?since=%00", "", 400, "since"},

		{"POST /v1/chat/completions", "/v1/chat/completions", chat(`a\u0000b`), 400, "model"},
		{"POST /v1/chat/completions", "/v1/chat/completions", chat(`\u001b[31m`), 400, "model"},
		{"POST /v1/completions", "/v1/completions", `{"model":"a\u0000","prompt":"x"}`, 400, "model"},
		{"POST /v1/completions", "/v1/completions", `{"model":"target","prompt":"x","max_tokens":"many"}`, 400, "max_tokens"},
		{"POST /v1/completions", "/v1/completions", `{"model":"target","prompt":"x","temperature":1e400}`, 400, "temperature"},
		{"POST /v1/embeddings", "/v1/embeddings", `{"model":"a\u0000","input":"x"}`, 400, "model"},
		{"POST /v1/embeddings", "/v1/embeddings", `{"model":"target","input":"x","dimensions":"many"}`, 400, "dimensions"},
		{"POST /v1/embeddings", "/v1/embeddings", `{"model":"target","input":"x","dimensions":1e400}`, 400, "dimensions"},
		{"POST /v1/embeddings", "/v1/embeddings", `{"model":"target","input":[1e400]}`, 400, "input"},
		{"POST /v1/chat/completions", "/v1/chat/completions", `{"model":"target","messages":{"role":"user"}}`, 400, "messages"},
		{"POST /v1/async/chat/completions", "/v1/async/chat/completions", chat(`a\u0000b`), 400, "model"},
		{"POST /v1/async/completions", "/v1/async/completions", `{"model":"a\u0000","prompt":"x"}`, 400, "model"},
		{"GET /v1/async/{id}", "/v1/async/a%00b", "", 404, "id"},
		{"POST /v1/artifacts", "/v1/artifacts", "GGUF\x00\x00\x00\x00not really", 400, "file"},
		{"GET /v1/artifacts/{sha}", "/v1/artifacts/a%00b", "", 400, "sha"},
		{"DELETE /v1/artifacts/{sha}", "/v1/artifacts/" + strings.Repeat("f", 63) + "%FF", "", 400, "sha"},

		{"POST /v1/tenants", "/v1/tenants", `{"name":"a\u0000b"}`, 400, "name"},
		{"POST /v1/tenants", "/v1/tenants", `{"name":"ok","quotas":{"max_runners":1e400}}`, 400, "quotas.max_runners"},
		{"POST /v1/tenants", "/v1/tenants", `{"name":"ok","quotas":{"max_artifact_bytes":-1}}`, 400, "max_artifact_bytes"},
		{"POST /v1/tenants", "/v1/tenants", `{"name":"ok","quotas":{"monthly_budget_usd":1e308}}`, 400, "monthly_budget_usd"},
		{"GET /v1/tenants/{id}", "/v1/tenants/a%00b", "", 400, "id"},
		{"PATCH /v1/tenants/{id}", "/v1/tenants/%FF", `{"quotas":{}}`, 400, "id"},
		{"PATCH /v1/tenants/{id}", "/v1/tenants/" + h.tenant, `{"quotas":{"tokens_per_minute":"many"}}`, 400, "quotas.tokens_per_minute"},
		{"DELETE /v1/tenants/{id}", "/v1/tenants/a%00b", "", 400, "id"},
		{"POST /v1/tenants/{id}/suspend", "/v1/tenants/a%00b/suspend", "", 400, "id"},
		{"POST /v1/tenants/{id}/resume", "/v1/tenants/%C3%28/resume", "", 400, "id"},
		{"GET /v1/tenants/{id}/invoice", "/v1/tenants/a%00b/invoice", "", 400, "id"},
		{"GET /v1/tenants/{id}/invoice", "/v1/tenants/" + h.tenant + "/invoice?month=%00", "", 400, "month"},
	}

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
		for method := range item.Operations() {
			op := method + " " + path
			covered := noInput[op]
			for _, c := range cases {
				covered = covered || c.op == op
			}
			if !covered {
				t.Errorf("%s has no hostile input in TestHostileInputsEveryRoute (nor is it listed as taking none)", op)
			}
		}
	}

	for _, c := range cases {
		method, _, _ := strings.Cut(c.op, " ")
		name := method + " " + c.path + " " + c.body
		if len(name) > 120 {
			name = name[:120]
		}
		req, err := http.NewRequest(method, h.url+c.path, strings.NewReader(c.body))
		if err != nil {
			t.Fatal(err)
		}
		if c.op != "POST /v1/artifacts" {
			req.Header.Set("Content-Type", "application/json")
		}
		resp := h.send(adminKey, req)
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var e apiErr
		if err := json.Unmarshal(b, &e); err != nil || resp.StatusCode != c.status || e.Error.Type != "invalid_request_error" || e.Error.Message == "" {
			t.Errorf("%q: %d %s; want %d in OpenAI's shape", name, resp.StatusCode, b, c.status)
			continue
		}
		if got := deref(e.Error.Param); got != c.param {
			t.Errorf("%q: param %q, want %q (%s)", name, got, c.param, b)
		}
		for _, l := range leaks {
			if strings.Contains(string(b), l) {
				t.Errorf("%q: the error holds %q: %s", name, l, b)
			}
		}
	}
}
