package main

import (
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// sparePIDs lists this platform's spare runners: `infer runner --standby`.
func (p *platform) sparePIDs() []string {
	pids := p.runnerProcs(func(_ string, args []string) bool { return args[2] == "--standby" })
	slices.Sort(pids)
	return pids
}

func (p *platform) waitSpares(t *testing.T, n int, not []string) []string {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		var fresh []string
		for _, pid := range p.sparePIDs() {
			if !slices.Contains(not, pid) {
				fresh = append(fresh, pid)
			}
		}
		if len(fresh) >= n {
			return fresh
		}
		if time.Now().After(deadline) {
			t.Fatalf("want %d new spare runners, have %v (old %v)", n, fresh, not)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestWarmRunner: with --warm-runners 1 the local driver keeps one runner
// process started and waiting; a cold start hands it the deployment
// instead of starting a process, it serves the request, and another
// spare takes its place.
func TestWarmRunner(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test builds the binary and starts MinIO")
	}
	p := startPlatformWith(t, platformOptions{env: []string{"INFER_WARM_RUNNERS=1"}})
	spare := p.waitSpares(t, 1, nil)
	if len(spare) != 1 {
		t.Fatalf("want one spare, have %v", spare)
	}
	p.deployStories("--idle-timeout", "30s")
	body := p.mustPost("a request at zero", "/v1/chat/completions",
		`{"model":"stories","messages":[{"role":"user","content":"Once upon a time"}],"max_tokens":8}`)
	if !strings.Contains(string(body), `"content"`) {
		t.Fatalf("no completion: %s", body)
	}
	// The runner that served it is the spare: its heartbeat names its PID.
	var d struct {
		Runners []struct {
			PID      int    `json:"pid"`
			RunnerID string `json:"runner_id"`
		} `json:"runners"`
	}
	status, _, b := p.do(http.MethodGet, "/v1/deployments/stories", p.key, "")
	if status != http.StatusOK {
		t.Fatalf("GET deployment: %d %s", status, b)
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatal(err)
	}
	if len(d.Runners) != 1 || strconv.Itoa(d.Runners[0].PID) != spare[0] {
		t.Fatalf("runners %+v; want the one spare, PID %s", d.Runners, spare[0])
	}
	if _, err := os.Stat(filepath.Join(p.home, "logs", "runner-stories-"+d.Runners[0].RunnerID+".log")); err != nil {
		t.Errorf("the spare's log was not renamed to the runner's: %v", err)
	}
	// Another spare replaces it.
	p.waitSpares(t, 1, spare)
}
