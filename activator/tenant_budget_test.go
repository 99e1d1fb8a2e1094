package activator_test

import (
	"context"
	"log/slog"
	"math/big"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/infer-run/infer/internal/testenv"
	"github.com/infer-run/infer/registry"
)

// TestTenantMonthlyBudget: a tenant whose usage this month has reached its
// monthly budget is refused on every activator (each with its own
// registry.Cache, as deployed) within a spend refresh; raising the budget
// lets it through again within a notification; and the month-to-date
// spend it is checked against is the exact (numeric) sum of the month's
// usage and runner records, as the invoice totals them.
func TestTenantMonthlyBudget(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	var urls []string
	for range 2 {
		cache := registry.NewCache(h.store, slog.Default())
		cctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { cache.Run(cctx); close(done) }()
		t.Cleanup(func() { cancel(); <-done })
		url, _ := h.addActivatorWith(cache)
		urls = append(urls, url)
	}
	model, err := os.ReadFile(testenv.ModelPath(t))
	if err != nil {
		t.Fatal(err)
	}
	ten := h.newTenantWith(adminKey, `{"name":"capped","quotas":{"monthly_budget_usd":0.01}}`)
	sha := h.uploadAs(ten.AdminKey, model)
	if code, _, out := call(t, h.url, ten.AdminKey, http.MethodPut, "/v1/deployments/capped", `{"artifact":"`+sha+`"}`); code != http.StatusOK {
		t.Fatalf("deploying: %d %v", code, out)
	}
	dep, err := h.store.GetDeployment(ctx, ten.ID, "capped")
	if err != nil {
		t.Fatal(err)
	}
	// An async submission answers 202 once admitted (no runner is needed
	// to see the admission), or the refusal.
	submit := func(url string) (int, map[string]any) {
		code, _, out := call(t, url, ten.AdminKey, http.MethodPost, "/v1/async/completions", `{"model":"capped","prompt":"a","max_tokens":1}`)
		return code, out
	}
	waitFor := func(what string, bound time.Duration, ok func(code int, out map[string]any) bool) {
		t.Helper()
		for i, u := range urls {
			start := time.Now()
			for {
				code, out := submit(u)
				if ok(code, out) {
					t.Logf("activator %d: %s after %v", i, what, time.Since(start).Round(time.Millisecond))
					break
				}
				if time.Since(start) > bound {
					t.Fatalf("activator %d: not %s within %v: %d %v", i, what, bound, code, out)
				}
				time.Sleep(20 * time.Millisecond)
			}
		}
	}
	accepted := func(code int, _ map[string]any) bool { return code == http.StatusAccepted }
	waitFor("admitting the tenant under its budget", 5*time.Second, accepted)

	// Usage this month worth more than the budget, at prices whose costs
	// have all nine decimals, and usage last month that does not count.
	now := time.Now().UTC()
	lastMonth := time.Date(now.Year(), now.Month(), 1, 0, 0, 0, 0, time.UTC).Add(-time.Hour)
	for i, u := range []registry.UsageRecord{
		{PromptTokens: 3333, CompletionTokens: 77, PromptPricePerMTok: 1.234567, CompletionPricePerMTok: 2.000001, CreatedAt: now},
		{PromptTokens: 1, CompletionTokens: 4999, PromptPricePerMTok: 0.000001, CompletionPricePerMTok: 1.111111, CreatedAt: now},
		{PromptTokens: 999, PromptPricePerMTok: 3.333333, CreatedAt: now},
		{PromptTokens: 1_000_000, PromptPricePerMTok: 50, CreatedAt: lastMonth},
	} {
		u.RequestID, u.Deployment, u.DeploymentID, u.TenantID, u.KeyID, u.Status = "budget-"+itoa(i), "capped", dep.ID, ten.ID, ten.AdminID, "ok"
		if _, err := h.store.RecordUsage(ctx, u); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := h.store.RecordRunnerUsage(ctx, registry.RunnerUsage{RunnerID: "budget-runner", Deployment: "capped", DeploymentID: dep.ID,
		TenantID: ten.ID, StartedAt: now.Add(-12345 * time.Millisecond), EndedAt: now, PricePerSecond: 0.000123}); err != nil {
		t.Fatal(err)
	}
	// A redelivered record is not counted twice.
	if _, err := h.store.RecordUsage(ctx, registry.UsageRecord{RequestID: "budget-0", Deployment: "capped", DeploymentID: dep.ID,
		TenantID: ten.ID, PromptTokens: 3333, PromptPricePerMTok: 1.234567, Status: "ok", CreatedAt: now}); err != nil {
		t.Fatal(err)
	}

	// What the records sum to, straight from them.
	from := time.Date(now.Year(), now.Month(), 1, 0, 0, 0, 0, time.UTC)
	var want string
	if err := h.store.Pool().QueryRow(ctx, `
		SELECT ((SELECT coalesce(sum(cost_usd), 0) FROM usage WHERE tenant_id = $1 AND created_at >= $2)
		      + (SELECT coalesce(sum(cost_usd), 0) FROM runner_usage WHERE tenant_id = $1 AND ended_at >= $2))::text`,
		ten.ID, from).Scan(&want); err != nil {
		t.Fatal(err)
	}
	wantRat, _ := new(big.Rat).SetString(want)
	if wantRat.Cmp(big.NewRat(1, 100)) < 0 {
		t.Fatalf("the month's records sum to %s, which does not reach the budget: fix the test's figures", want)
	}
	code, _, got := call(t, h.url, adminKey, http.MethodGet, "/v1/tenants/"+ten.ID, "")
	if code != http.StatusOK {
		t.Fatalf("GET tenant: %d %v", code, got)
	}
	spent, _ := new(big.Rat).SetString(got["month_spent_usd"].(string))
	if spent == nil || spent.Cmp(wantRat) != 0 {
		t.Errorf("month_spent_usd is %v, want exactly %s (the month's records)", got["month_spent_usd"], want)
	}
	code, _, inv := call(t, h.url, adminKey, http.MethodGet, "/v1/tenants/"+ten.ID+"/invoice", "")
	if code != http.StatusOK {
		t.Fatalf("invoice: %d %v", code, inv)
	}
	total, _ := new(big.Rat).SetString(inv["total"].(map[string]any)["cost_usd"].(string))
	if total == nil || total.Cmp(wantRat) != 0 || inv["over_budget"] != true {
		t.Errorf("invoice total %v over_budget %v, want %s and true", inv["total"], inv["over_budget"], want)
	}

	// Refused everywhere within a spend refresh, in OpenAI's shape.
	refused := func(code int, out map[string]any) bool {
		e, _ := out["error"].(map[string]any)
		return code == http.StatusTooManyRequests && e["type"] == "insufficient_quota" && e["code"] == "budget_exceeded" &&
			strings.Contains(e["message"].(string), "monthly budget")
	}
	waitFor("refusing the tenant over its budget", registry.SpendRefresh+3*time.Second, refused)
	// Sync requests too, and another key of the tenant.
	_, user := h.newKey(ten.AdminKey, `{"name":"capped-user"}`)
	for _, u := range urls {
		for deadline := time.Now().Add(5 * time.Second); ; {
			code, _, out := call(t, u, user, http.MethodPost, "/v1/chat/completions", `{"model":"capped","messages":[{"role":"user","content":"hi"}],"max_tokens":1}`)
			if refused(code, out) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("a sync request of the tenant's user key: %d %v, want 429 budget_exceeded", code, out)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	// Another tenant is not affected.
	h.deploy("free", map[string]any{})
	for deadline := time.Now().Add(5 * time.Second); ; { // the deployment reaches the cache by notification
		code, _, out := call(t, urls[0], adminKey, http.MethodPost, "/v1/async/completions", `{"model":"free","prompt":"a","max_tokens":1}`)
		if code == http.StatusAccepted {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("another tenant's request: %d %v", code, out)
		}
		time.Sleep(20 * time.Millisecond)
	}

	// Raising the budget lets it through within a notification.
	if code, _, out := call(t, h.url, adminKey, http.MethodPatch, "/v1/tenants/"+ten.ID, `{"quotas":{"monthly_budget_usd":1}}`); code != http.StatusOK {
		t.Fatalf("raising the budget: %d %v", code, out)
	}
	waitFor("admitting the tenant after its budget was raised", time.Second, accepted)
}
