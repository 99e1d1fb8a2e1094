package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/infer-run/infer/internal/testenv"
)

// Scaling tests run `infer dev` with real runner processes, NATS,
// Postgres and MinIO. Bounds on time are generous: the machine is shared.

const scaleBody = `{"model":"stories","messages":[{"role":"user","content":"Once upon a time"}],"max_tokens":%d,"temperature":0}`

// complete sends one non-streaming request and reports whether it was
// answered.
func (p *platform) complete(maxTokens int) error {
	resp, err := p.post("/v1/chat/completions", p.key, fmt.Sprintf(scaleBody, maxTokens))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || !strings.Contains(string(b), `"choices"`) {
		return fmt.Errorf("status %d: %s", resp.StatusCode, b)
	}
	return nil
}

// watchRunners samples the runner count until stop is closed and returns
// the largest seen.
func (p *platform) watchRunners(deployment string, stop <-chan struct{}) <-chan int {
	out := make(chan int, 1)
	go func() {
		most := 0
		for {
			most = max(most, len(p.runnerPIDs(deployment)))
			select {
			case <-stop:
				out <- most
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()
	return out
}

// TestScaleBurst scripts 0 → 1 → max → 0: one request cold-starts one
// runner, a burst scales out to max_runners and never beyond, every
// request is answered, and the runners go after the idle timeout.
func TestScaleBurst(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test")
	}
	p := startPlatform(t)
	const maxRunners = 3
	p.deployStories("--idle-timeout", "3s",
		"--parallel", "1", "--max-runners", fmt.Sprint(maxRunners))

	// 0 → 1.
	if err := p.complete(16); err != nil {
		t.Fatal(err)
	}
	if n := len(p.runnerPIDs("stories")); n != 1 {
		t.Fatalf("%d runners after one request, want 1", n)
	}

	// 1 → max: more work than one runner clears in a tick.
	stop := make(chan struct{})
	most := p.watchRunners("stories", stop)
	var wg sync.WaitGroup
	var failed atomic.Int32
	for range 48 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := p.complete(200); err != nil {
				failed.Add(1)
				t.Errorf("request in the burst: %v", err)
			}
		}()
	}
	wg.Wait()
	close(stop)
	if n := <-most; n < 2 || n > maxRunners {
		t.Errorf("burst ran at most %d runners, want 2..%d", n, maxRunners)
	} else {
		t.Logf("burst scaled to %d runners; %d requests failed", n, failed.Load())
	}

	// max → 0.
	p.waitNoRunners("stories", 60*time.Second)
}

// TestIdleTimeoutHonoured checks a runner stops after the idle timeout:
// not before it, and not much after (a control plane tick, plus slack for
// a loaded machine).
func TestIdleTimeoutHonoured(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test")
	}
	p := startPlatform(t)
	const idle = 4 * time.Second
	p.deployStories("--idle-timeout", idle.String())
	if err := p.complete(16); err != nil {
		t.Fatal(err)
	}
	gone := p.waitNoRunners("stories", idle+30*time.Second) // from the answer until no runner
	// The runner's last request ends just before the answer arrives.
	if gone < idle-250*time.Millisecond {
		t.Errorf("runner stopped %s after its last request, before the %s idle timeout", gone, idle)
	}
	if gone > idle+10*time.Second {
		t.Errorf("runner stopped %s after its last request; idle timeout %s", gone, idle)
	}
	t.Logf("idle timeout %s: runner gone %s after the last answer", idle, gone.Round(time.Millisecond))
}

// TestKilledRunnerReplaced kills the only runner while requests wait; the
// control plane starts another and the waiting requests are answered.
func TestKilledRunnerReplaced(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test")
	}
	p := startPlatform(t)
	p.deployStories("--idle-timeout", "30s",
		"--parallel", "1", "--max-runners", "1")
	if err := p.complete(16); err != nil {
		t.Fatal(err)
	}
	pids := p.runnerPIDs("stories")
	if len(pids) != 1 {
		t.Fatalf("runners %v, want one", pids)
	}
	// Work queues behind the one slot; then the runner dies.
	var wg sync.WaitGroup
	var failed atomic.Int32
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := p.complete(200); err != nil {
				failed.Add(1)
				t.Logf("request: %v", err)
			}
		}()
	}
	time.Sleep(100 * time.Millisecond)
	if err := exec.Command("kill", "-KILL", pids[0]).Run(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		now := p.runnerPIDs("stories")
		if len(now) == 1 && now[0] != pids[0] {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no replacement runner within 60s (runners %v)", now)
		}
		time.Sleep(100 * time.Millisecond)
	}
	wg.Wait()
	// The one request the dead runner was generating may fail (it is
	// redelivered only if nothing was sent yet); the queued ones may not.
	if n := failed.Load(); n > 1 {
		t.Errorf("%d requests failed; only the one on the killed runner may", n)
	}
	if err := p.complete(16); err != nil {
		t.Errorf("request after the replacement: %v", err)
	}
}

// TestRedeployWithoutDowntime redeploys new weights while requests run:
// none fails, new runners serve the new artifact, the old ones drain and
// exit, and `infer ls` shows which artifact each runner serves.
func TestRedeployWithoutDowntime(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test")
	}
	p := startPlatform(t)
	model := testenv.ModelPath(t)
	// Different bytes, same model: llama.cpp ignores bytes after the last
	// tensor.
	b, err := os.ReadFile(model)
	if err != nil {
		t.Fatal(err)
	}
	v2 := filepath.Join(t.TempDir(), "stories-v2.gguf")
	if err := os.WriteFile(v2, append(b, make([]byte, 64)...), 0o644); err != nil {
		t.Fatal(err)
	}
	deploy := func(weights string) string {
		t.Helper()
		out, err := p.cli("deploy", "stories", "--weights", weights, "--idle-timeout", "30s", "--parallel", "2", "--max-runners", "2")
		if err != nil {
			t.Fatalf("infer deploy: %v\n%s", err, out)
		}
		return out
	}
	deploy(model)
	if err := p.complete(16); err != nil {
		t.Fatal(err)
	}
	oldPIDs := p.runnerPIDs("stories")
	oldSHA := lsRunners(t, p)[0].Artifact

	var sent, failed atomic.Int32
	stop := clientLoops(2, func(int) {
		sent.Add(1)
		if err := p.complete(64); err != nil {
			failed.Add(1)
			t.Errorf("request during the redeploy: %v", err)
		}
	})
	time.Sleep(500 * time.Millisecond)
	deploy(v2)

	// Old runners drain and exit; new ones serve the new artifact.
	deadline := time.Now().Add(60 * time.Second)
	var runners []lsRunner
	for {
		runners = lsRunners(t, p)
		oldLeft := slices.ContainsFunc(p.runnerPIDs("stories"), func(pid string) bool { return slices.Contains(oldPIDs, pid) })
		if !oldLeft && len(runners) > 0 && !slices.ContainsFunc(runners, func(r lsRunner) bool { return r.Artifact == oldSHA }) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("old runners still there 60s after the redeploy: %+v", runners)
		}
		time.Sleep(200 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond) // a few requests on the new runners
	stop()
	t.Logf("%d requests during the redeploy, %d failed; runners now %+v", sent.Load(), failed.Load(), runners)

	out, err := p.cli("ls")
	if err != nil || !strings.Contains(out, "runner "+runners[0].RunnerID) || !strings.Contains(out, short(runners[0].Artifact)) {
		t.Errorf("infer ls does not show the runner and its artifact: %v\n%s", err, out)
	}
}

type lsRunner struct {
	RunnerID string `json:"runner_id"`
	Phase    string `json:"phase"`
	Artifact string `json:"artifact"`
}

// lsRunners reads the runners of deployment stories with `infer ls --json`.
func lsRunners(t *testing.T, p *platform) []lsRunner {
	t.Helper()
	out, err := p.cli("ls", "--json")
	if err != nil {
		t.Fatalf("infer ls --json: %v\n%s", err, out)
	}
	var deps []struct {
		Name    string     `json:"name"`
		Runners []lsRunner `json:"runners"`
	}
	if err := json.Unmarshal([]byte(out), &deps); err != nil {
		t.Fatalf("infer ls --json: %v\n%s", err, out)
	}
	for _, d := range deps {
		if d.Name == "stories" {
			return d.Runners
		}
	}
	return nil
}
