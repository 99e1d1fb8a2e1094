package activator_test

import (
	"encoding/json"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
)

// TestMe: GET /v1/me tells a key what it is (name, role, limits) and
// never returns a secret; an unknown key gets 401.
func TestMe(t *testing.T) {
	h := newHarness(t)
	h.deploy("open", map[string]any{})
	secret := h.createKey(`{"name":"console-user","deployments":["open"],"requests_per_minute":7,"budget_usd":1.5}`)
	for _, tt := range []struct {
		key, name, role string
		deployments     []string
	}{
		{adminKey, "", "admin", []string{}},
		{secret, "console-user", "user", []string{"open"}},
	} {
		resp := h.doAs(tt.key, http.MethodGet, "/v1/me", "")
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var me struct {
			ID, Name, Role    string
			Deployments       []string
			RequestsPerMinute int      `json:"requests_per_minute"`
			BudgetUSD         *float64 `json:"budget_usd"`
		}
		if resp.StatusCode != 200 || json.Unmarshal(body, &me) != nil {
			t.Fatalf("GET /v1/me: %d %s", resp.StatusCode, body)
		}
		if me.ID == "" || me.Role != tt.role || (tt.name != "" && me.Name != tt.name) || !slices.Equal(me.Deployments, tt.deployments) {
			t.Errorf("GET /v1/me as %s: %s", tt.role, body)
		}
		if strings.Contains(string(body), tt.key) || strings.Contains(string(body), "hash") {
			t.Errorf("GET /v1/me returns the secret or its hash: %s", body)
		}
		if tt.role == "user" && (me.RequestsPerMinute != 7 || me.BudgetUSD == nil || *me.BudgetUSD != 1.5) {
			t.Errorf("GET /v1/me lacks the key's limits: %s", body)
		}
	}
	resp := h.doAs("sk-infer-not-a-key", http.MethodGet, "/v1/me", "")
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("GET /v1/me with an unknown key: %d, want 401", resp.StatusCode)
	}
}
