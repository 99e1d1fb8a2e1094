package main

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/infer-run/infer/internal/testenv"
	"github.com/infer-run/infer/registry"
)

// TestRecycledNameAcrossTenants is issue 19's scenario on a real platform:
// tenant A has a warm runner on "stories" and runs `infer rm stories`;
// tenant B deploys its own "stories". A's runner stops by itself at once
// with a line or two of log (it used to log 1,331-5,175 "job batch ended
// with an error: nats: no responders" warnings in the second before the
// control plane stopped it), B's request is served by a runner of B's
// deployment, and A's runner-seconds are stored for A's tenant and
// deployment, B's request for B's.
func TestRecycledNameAcrossTenants(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and starts the platform")
	}
	p := startPlatform(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	store, err := registry.Open(ctx, p.dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()

	// A: the platform's admin key. A warm runner on stories.
	p.deployStories()
	p.mustPost("A's request", "/v1/completions", `{"model":"stories","prompt":"Once upon a time","max_tokens":4}`)
	type dep struct {
		ID       string `json:"id"`
		TenantID string `json:"tenant_id"`
		Artifact string `json:"artifact_sha256"`
		Runners  []struct {
			ID string `json:"runner_id"`
		} `json:"runners"`
	}
	var a dep
	code, _, body := p.do(http.MethodGet, "/v1/deployments/stories", p.key, "")
	if json.Unmarshal(body, &a); code != 200 || len(a.Runners) != 1 {
		t.Fatalf("A's stories has runners %+v, want one", a.Runners)
	}
	runnerA := a.Runners[0].ID
	logs, _ := filepath.Glob(filepath.Join(p.home, "logs", "runner-stories-"+runnerA+".log"))
	if len(logs) != 1 {
		t.Fatalf("no log file of runner %s", runnerA)
	}
	logOf := func() string { b, _ := os.ReadFile(logs[0]); return string(b) }
	before := strings.Count(logOf(), "\n")

	// B: another tenant with its own copy of the weights.
	tenantB, err := store.EnsureTenant(ctx, "tenant-b")
	if err != nil {
		t.Fatal(err)
	}
	_, keyB, err := store.CreateKey(ctx, tenantB.ID, "b-admin", registry.RoleAdmin)
	if err != nil {
		t.Fatal(err)
	}
	waitKey(t, p, keyB)
	f, err := os.Open(testenv.ModelPath(t))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	req, _ := http.NewRequest(http.MethodPost, p.url+"/v1/artifacts", f)
	req.Header.Set("Authorization", "Bearer "+keyB)
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != 201 {
		t.Fatalf("B's upload: %v %v", resp, err)
	}
	resp.Body.Close()

	if out, err := p.cli("rm", "stories"); err != nil {
		t.Fatalf("infer rm stories: %v\n%s", err, out)
	}
	code, _, body = p.do(http.MethodPut, "/v1/deployments/stories", keyB, `{"artifact":"`+a.Artifact+`"}`)
	var b dep
	if json.Unmarshal(body, &b); code != 200 || b.ID == "" || b.ID == a.ID || b.TenantID != tenantB.ID {
		t.Fatalf("B's PUT stories: %d %s (A's ID %s)", code, body, a.ID)
	}
	if code, _, body := p.do(http.MethodPost, "/v1/completions", keyB, `{"model":"stories","prompt":"Once upon a time","max_tokens":4}`); code != 200 {
		t.Fatalf("B's request: %d %s", code, body)
	}
	waited := p.waitNoRunnerID(runnerA, 30*time.Second)
	after := strings.Split(logOf(), "\n")[before:]
	warnings := 0
	for _, l := range after {
		if strings.Contains(l, "level=WARN") || strings.Contains(l, "level=ERROR") {
			warnings++
		}
	}
	t.Logf("A's runner exited %v after B's request; %d log lines after infer rm, %d warnings:\n%s", waited, len(after)-1, warnings,
		strings.Join(after[:min(len(after), 8)], "\n"))
	if warnings > 0 || len(after) > 8 {
		t.Errorf("A's runner logged %d lines (%d warnings) after infer rm, want a few and no warnings:\n%s",
			len(after)-1, warnings, strings.Join(after[:min(len(after), 20)], "\n"))
	}

	// Usage in Postgres: B's request for B; A's runner's lifetime for A.
	deadline := time.Now().Add(60 * time.Second)
	for {
		var reqTenant, reqDep, reqRunner, runTenant, runDep string
		errReq := store.Pool().QueryRow(ctx, `SELECT tenant_id, deployment_id, runner_id FROM usage
			WHERE tenant_id <> $1 ORDER BY created_at DESC LIMIT 1`, a.TenantID).Scan(&reqTenant, &reqDep, &reqRunner)
		errRun := store.Pool().QueryRow(ctx, `SELECT tenant_id, deployment_id FROM runner_usage WHERE runner_id = $1`,
			runnerA).Scan(&runTenant, &runDep)
		if errReq == nil && errRun == nil {
			if reqTenant != tenantB.ID || reqDep != b.ID || reqRunner == runnerA {
				t.Errorf("B's request stored for tenant %s, deployment %s, runner %s; want %s, %s, not A's runner",
					reqTenant, reqDep, reqRunner, tenantB.ID, b.ID)
			}
			if runTenant != a.TenantID || runDep != a.ID {
				t.Errorf("A's runner's lifetime stored for tenant %s, deployment %s; want A's %s, %s", runTenant, runDep, a.TenantID, a.ID)
			}
			var bRunnerSeconds int
			store.Pool().QueryRow(ctx, `SELECT count(*) FROM runner_usage WHERE tenant_id = $1 AND runner_id = $2`, tenantB.ID, runnerA).Scan(&bRunnerSeconds)
			if bRunnerSeconds != 0 {
				t.Errorf("A's runner billed to B")
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("usage not stored a minute later: B's request %v, A's runner %v", errReq, errRun)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// waitNoRunnerID waits until the runner process with this ID has exited.
func (p *platform) waitNoRunnerID(id string, timeout time.Duration) time.Duration {
	p.t.Helper()
	start := time.Now()
	for {
		found := false
		entries, _ := os.ReadDir("/proc")
		for _, e := range entries {
			b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
			if err == nil && strings.HasPrefix(string(b), p.bin+"\x00runner\x00") && strings.Contains(string(b), "\x00--id\x00"+id+"\x00") {
				found = true
			}
		}
		if !found {
			return time.Since(start)
		}
		if time.Since(start) > timeout {
			p.t.Fatalf("runner %s still running after %s", id, timeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
