package activator_test

import (
	"encoding/json"
	"io"
	"net/http"
	"testing"
	"time"
)

// TestKeepWarmRoundTrips: keep_warm is set through PUT
// /v1/deployments/{name}, stored in Postgres, shown by GET (in
// nanoseconds, like idle_timeout), kept by a PUT that does not name it,
// turned off with 0, and a negative one is refused naming the field.
func TestKeepWarmRoundTrips(t *testing.T) {
	h := newHarness(t)
	get := func(method, body string) (int, map[string]any) {
		t.Helper()
		resp := h.do(method, "/v1/deployments/warm", body)
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		var out map[string]any
		if err := json.Unmarshal(b, &out); err != nil {
			t.Fatalf("%s: %d %s", method, resp.StatusCode, b)
		}
		return resp.StatusCode, out
	}
	keepWarm := func(m map[string]any) time.Duration {
		v, _ := m["keep_warm"].(float64) // seconds, as idle_timeout
		return time.Duration(v * float64(time.Second))
	}

	h.deploy("warm", map[string]any{"keep_warm": "5m", "idle_timeout": "30s"})
	if _, d := get(http.MethodGet, ""); keepWarm(d) != 5*time.Minute {
		t.Errorf("GET keep_warm = %v (%v), want 5m", keepWarm(d), d["keep_warm"])
	}
	if d, err := h.store.GetDeployment(t.Context(), h.tenant, "warm"); err != nil || d.KeepWarm != 5*time.Minute {
		t.Errorf("stored keep_warm = %v (%v), want 5m", d.KeepWarm, err)
	}
	// A PUT that does not name it keeps it; seconds are accepted too.
	if code, d := get(http.MethodPut, `{"parallel":2}`); code != 200 || keepWarm(d) != 5*time.Minute {
		t.Errorf("PUT without keep_warm: %d keep_warm %v, want 200 and 5m kept", code, keepWarm(d))
	}
	if code, d := get(http.MethodPut, `{"keep_warm":90}`); code != 200 || keepWarm(d) != 90*time.Second {
		t.Errorf("PUT keep_warm 90: %d keep_warm %v, want 200 and 1m30s", code, keepWarm(d))
	}
	if code, d := get(http.MethodPut, `{"keep_warm":"0s"}`); code != 200 || keepWarm(d) != 0 {
		t.Errorf("PUT keep_warm 0s: %d keep_warm %v, want 200 and off", code, keepWarm(d))
	}
	code, d := get(http.MethodPut, `{"keep_warm":"-1m"}`)
	e, _ := d["error"].(map[string]any)
	if code != 400 || e == nil || e["param"] != "keep_warm" {
		t.Errorf("PUT keep_warm -1m: %d %v, want 400 naming keep_warm", code, d)
	}
}
