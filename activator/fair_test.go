package activator_test

import (
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/infer-run/infer/runner"
)

// fairWaiting reads the fair-sharing gate's gauge for a deployment.
func (h *harness) fairWaiting(deployment string) float64 {
	h.t.Helper()
	mfs, err := h.metrics.Gather()
	if err != nil {
		h.t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "infer_activator_fair_waiting" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "deployment" && l.GetValue() == deployment {
					return m.GetGauge().GetValue()
				}
			}
		}
	}
	return 0
}

// TestFairSharing is the scenario: while a deployment is at zero,
// key A sends 200 requests, then key B sends 5. Once a runner is up, B's
// requests start within the first few slots, not after A's 200. (The
// deployment runs one request at a time, so the order requests finish in
// is the order they started in.)
func TestFairSharing(t *testing.T) {
	h := newHarness(t)
	h.deploy("fair", map[string]any{"parallel": 1, "max_runners": 1})
	_, keyA := h.newKey(adminKey, `{"name":"burst"}`)
	_, keyB := h.newKey(adminKey, `{"name":"small"}`)

	var mu sync.Mutex
	var order []string
	var wg sync.WaitGroup
	client := &http.Client{Timeout: 2 * time.Minute}
	send := func(who, key string) {
		defer wg.Done()
		req, _ := http.NewRequest(http.MethodPost, h.url+"/v1/completions", strings.NewReader(`{"model":"fair","prompt":"a","max_tokens":1}`))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer "+key)
		resp, err := client.Do(req)
		if err != nil {
			t.Errorf("%s: %v", who, err)
			return
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Errorf("%s: %d", who, resp.StatusCode)
		}
		mu.Lock()
		order = append(order, who)
		mu.Unlock()
	}
	waitGauge := func(want float64) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for h.fairWaiting("fair") != want {
			if time.Now().After(deadline) {
				t.Fatalf("%v requests wait in the gate, want %v", h.fairWaiting("fair"), want)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	for range 200 {
		wg.Add(1)
		go send("A", keyA)
	}
	waitGauge(199) // one is in the queue: the deployment runs one at a time
	for range 5 {
		wg.Add(1)
		go send("B", keyB)
	}
	waitGauge(204)
	h.startRunnerProcessSpec(runnerProcessSpec{Deployment: "fair", Engine: runner.EngineConfig{Parallel: 1}, Instant: true})
	wg.Wait()
	last := 0
	for i, who := range order {
		if who == "B" {
			last = i + 1
		}
	}
	t.Logf("B's 5 requests were done by slot %d of %d", last, len(order))
	// A's first request was queued before B arrived; then the two keys
	// alternate: B's fifth is the 10th or 11th to start.
	if len(order) != 205 || last > 12 {
		t.Errorf("B's last request started in slot %d of %d, want within the first 12: %v", last, len(order), order[:min(len(order), 20)])
	}
}
