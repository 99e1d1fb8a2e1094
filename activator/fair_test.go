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
	// Two are in the queue (the gate's window: twice the one request the
	// deployment runs at a time), the rest wait in the gate.
	waitGauge(198)
	for range 5 {
		wg.Add(1)
		go send("B", keyB)
	}
	waitGauge(203)
	h.startRunnerProcessSpec(runnerProcessSpec{Deployment: "fair", Engine: runner.EngineConfig{Parallel: 1}, Instant: true})
	wg.Wait()
	last := 0
	for i, who := range order {
		if who == "B" {
			last = i + 1
		}
	}
	t.Logf("B's 5 requests were done by slot %d of %d", last, len(order))
	// A's first two requests were queued before B arrived; then the keys
	// alternate (A A B A B A B A B A B): B's fifth gets the 11th place. The
	// order requests finish in trails the order of places by up to the
	// window (the instant runner answers a queued job while it sends the
	// last one's reply), and a loaded machine shuffles a little more: 20 of
	// 205 still says B's requests did not wait behind A's 200 (without the
	// gate they are the last five).
	if len(order) != 205 || last > 20 {
		t.Errorf("B's last request started in slot %d of %d, want within the first 20: %v", last, len(order), order[:min(len(order), 20)])
	}
}

// TestKeyShare: a key's share is set when it is created and changed in
// place by PATCH /v1/keys/{id}; nothing else of a key changes there.
func TestKeyShare(t *testing.T) {
	h := newHarness(t)
	id, _ := h.newKey(adminKey, `{"name":"heavy","share":3}`)
	share := func() any {
		_, _, out := call(t, h.url, adminKey, http.MethodGet, "/v1/keys", "")
		for _, k := range out["data"].([]any) {
			if k := k.(map[string]any); k["id"] == id {
				return k["share"]
			}
		}
		return nil
	}
	if got := share(); got != 3.0 {
		t.Errorf("created with share 3: listed with %v", got)
	}
	for _, c := range []struct {
		body  string
		want  int
		param string
	}{
		{`{"share":5}`, 200, ""},
		{`{"share":0}`, 400, "share"},
		{`{"share":1001}`, 400, "share"},
		{`{"share":2.5}`, 400, "share"},
		{`{}`, 400, "share"},
		{`{"share":2,"budget_usd":1}`, 400, "budget_usd"},
	} {
		code, _, out := call(t, h.url, adminKey, http.MethodPatch, "/v1/keys/"+id, c.body)
		e, _ := out["error"].(map[string]any)
		if code != c.want || (c.param != "" && e["param"] != c.param) {
			t.Errorf("PATCH %s: %d %v, want %d param %q", c.body, code, out, c.want, c.param)
		}
	}
	if got := share(); got != 5.0 {
		t.Errorf("after PATCH share 5 (and refused changes): share %v", got)
	}
	if code, _, out := call(t, h.url, adminKey, http.MethodPatch, "/v1/keys/key_nosuchkey", `{"share":2}`); code != http.StatusNotFound {
		t.Errorf("PATCH of a missing key: %d %v", code, out)
	}
	if code, _, out := call(t, h.url, adminKey, http.MethodPost, "/v1/keys", `{"name":"x","share":-1}`); code != http.StatusBadRequest {
		t.Errorf("creating a key with share -1: %d %v", code, out)
	}
}
