package activator_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/infer-run/infer/activator"
	"github.com/infer-run/infer/registry"
)

// TestBudgetHoldsUnderConcurrency: ten requests at once, on two
// activators, on a key whose budget fits two and a half of them. Before
// budgets were held, every one was admitted (spend was only checked
// against what had finished) and the key spent four times its budget;
// now each request holds its maximum cost before it is queued, so what is
// spent stays within the budget plus one request's maximum cost.
func TestBudgetHoldsUnderConcurrency(t *testing.T) {
	h := newHarness(t)
	// Only completion tokens are priced, so a request's maximum cost
	// (max_tokens of them) is close to what it costs: 16 tokens at
	// $1000 per million, $0.016.
	const maxTokens, price = 16, 1000.0
	const maxCost = maxTokens * price / 1e6
	const budget = 2.5 * maxCost
	h.deploy("budget", map[string]any{"parallel": 4, "context_length": 512,
		"prices": map[string]any{"completion_per_mtok": price}})
	h.startRunner("budget", 4, 512)
	// Usage records are stored as the control plane stores them, which
	// ends their holds and counts them as spend.
	usage := h.usageRecords("budget")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		for {
			select {
			case rec := <-usage:
				h.store.RecordUsage(ctx, registry.UsageRecord{RequestID: rec.RequestID, Deployment: rec.Deployment, KeyID: rec.KeyID,
					TenantID: rec.TenantID, PromptTokens: rec.PromptTokens, CompletionTokens: rec.CompletionTokens, Status: rec.Status,
					PromptPricePerMTok: rec.Prices.PromptPerMTok, CompletionPricePerMTok: rec.Prices.CompletionPerMTok})
			case <-ctx.Done():
				return
			}
		}
	}()
	key := h.createKey(fmt.Sprintf(`{"name":"small-budget","budget_usd":%v}`, budget))
	second, _ := h.addActivator()

	var wg sync.WaitGroup
	var mu sync.Mutex
	codes := map[int]int{}
	var spent float64
	for i := range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			url := h.url
			if i%2 == 1 {
				url = second
			}
			body := fmt.Sprintf(`{"model":"budget","prompt":"Once upon a time %d","max_tokens":%d,"temperature":0}`, i, maxTokens)
			req, _ := http.NewRequest(http.MethodPost, url+"/v1/completions", strings.NewReader(body))
			req.Header.Set("Content-Type", "application/json")
			resp := h.send(key, req)
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			mu.Lock()
			defer mu.Unlock()
			codes[resp.StatusCode]++
			switch resp.StatusCode {
			case http.StatusOK:
				var r struct {
					Usage struct {
						CompletionTokens int `json:"completion_tokens"`
					} `json:"usage"`
				}
				json.Unmarshal(b, &r)
				spent += float64(r.Usage.CompletionTokens) * price / 1e6
			case http.StatusTooManyRequests:
				if !strings.Contains(string(b), `"insufficient_quota"`) || !strings.Contains(string(b), "held by requests in flight") {
					t.Errorf("refused request: %s", b)
				}
			default:
				t.Errorf("request %d: %d %s", i, resp.StatusCode, b)
			}
		}()
	}
	wg.Wait()
	t.Logf("answers by status: %v; spent $%.3f of a $%.3f budget (a request may cost $%.3f)", codes, spent, budget, maxCost)
	if codes[http.StatusOK] == 0 {
		t.Error("no request was admitted")
	}
	if spent > budget+maxCost {
		t.Errorf("spent $%.3f on a $%.3f budget: more than one request's maximum cost ($%.3f) over", spent, budget, maxCost)
	}
}

// TestBudgetHoldReleased: a request that never reached a runner gives its
// hold back: refused by a full queue, or timed out in it. Sync and async
// jobs hold alike.
func TestBudgetHoldReleased(t *testing.T) {
	h := newHarness(t)
	const maxCost = 16 * 1000.0 / 1e6 // max_tokens 16 at $1000 per million
	h.deploy("held", map[string]any{"queue_limit": 1, "queue_timeout": "2s", "context_length": 512,
		"prices": map[string]any{"completion_per_mtok": 1000}})
	key := h.createKey(fmt.Sprintf(`{"name":"holds","budget_usd":%v}`, 2.5*maxCost))
	post := func(path string) (int, string) {
		req, _ := http.NewRequest(http.MethodPost, h.url+path, strings.NewReader(`{"model":"held","prompt":"Once","max_tokens":16}`))
		req.Header.Set("Content-Type", "application/json")
		resp := h.send(key, req)
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp.StatusCode, string(b)
	}
	first := make(chan int, 1)
	go func() { code, _ := post("/v1/completions"); first <- code }()
	h.waitQueued("held", 1)
	// The queue is full: each of these holds, is refused, and gives the
	// hold back, or the third would find the budget held.
	for i := range 3 {
		if code, body := post("/v1/completions"); code != 429 || !strings.Contains(body, `"queue_full"`) {
			t.Fatalf("request %d into a full queue: %d %s", i, code, body)
		}
	}
	if code := <-first; code != 504 {
		t.Fatalf("queued request: %d, want 504", code)
	}
	// The timed-out request gave its hold back too: two async jobs fit
	// (one queued, one refused by the full queue), the third is refused.
	if code, body := post("/v1/async/completions"); code != 202 {
		t.Fatalf("async job after the timeout: %d %s", code, body)
	}
	if code, body := post("/v1/async/completions"); code != 429 || !strings.Contains(body, `"queue_full"`) {
		t.Fatalf("async job into a full queue: %d %s", code, body)
	}
	if code, body := post("/v1/async/completions"); code != 429 || !strings.Contains(body, `"queue_full"`) {
		t.Fatalf("second async job into a full queue: %d %s", code, body)
	}
	// With room in the queue, a queued async job keeps its hold: the
	// budget fits it and one more, not a third.
	h.do(http.MethodPut, "/v1/deployments/held", `{"queue_limit":10}`).Body.Close()
	if code, body := post("/v1/async/completions"); code != 202 {
		t.Fatalf("second async job: %d %s", code, body)
	}
	if code, body := post("/v1/async/completions"); code != 429 || !strings.Contains(body, `"insufficient_quota"`) {
		t.Fatalf("third async job: %d %s", code, body)
	}
}

// TestAsyncBudgetHoldReleasedBySweep: an async job no runner took is
// failed by the sweep (queue_timeout), and its hold is given back then,
// not an hour later.
func TestAsyncBudgetHoldReleasedBySweep(t *testing.T) {
	h := newHarnessWith(t, activator.Config{AsyncSweep: 100 * time.Millisecond, AllowPrivateWebhooks: true})
	const maxCost = 16 * 1000.0 / 1e6
	h.deploy("swept", map[string]any{"queue_timeout": "1s", "context_length": 512,
		"prices": map[string]any{"completion_per_mtok": 1000}})
	key := h.createKey(fmt.Sprintf(`{"name":"swept","budget_usd":%v}`, 1.5*maxCost))
	submit := func() (int, string) {
		req, _ := http.NewRequest(http.MethodPost, h.url+"/v1/async/completions", strings.NewReader(`{"model":"swept","prompt":"Once","max_tokens":16}`))
		req.Header.Set("Content-Type", "application/json")
		resp := h.send(key, req)
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp.StatusCode, string(b)
	}
	code, body := submit()
	if code != 202 {
		t.Fatalf("first job: %d %s", code, body)
	}
	var job struct {
		ID string `json:"id"`
	}
	json.Unmarshal([]byte(body), &job)
	if code, body := submit(); code != 429 || !strings.Contains(body, `"insufficient_quota"`) {
		t.Fatalf("second job while the first holds the budget: %d %s", code, body)
	}
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		resp := h.doAs(key, http.MethodGet, "/v1/async/"+job.ID, "")
		var st struct {
			Status string `json:"status"`
		}
		json.NewDecoder(resp.Body).Decode(&st)
		resp.Body.Close()
		if st.Status == "failed" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("job still %q", st.Status)
		}
	}
	// GET shows the job failed before the sweep stores it; the hold goes
	// when the sweep does.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		code, body := submit()
		if code == 202 {
			break
		}
		if code != 429 || time.Now().After(deadline) {
			t.Fatalf("job after the first was swept: %d %s", code, body)
		}
	}
}
