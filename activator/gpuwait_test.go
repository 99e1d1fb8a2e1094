package activator_test

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/infer-run/infer/internal/wire"
)

// TestWaitingForGPUComment: while the local driver finds no GPU with room
// it publishes a "waiting" heartbeat for the runner it could not start
// (cmd/infer waiting.go); a stream waiting on the cold start is told why
// in an SSE comment, and hears "starting runner" once a runner is on its
// way. The driver's and the runner's heartbeats are played by hand.
func TestWaitingForGPUComment(t *testing.T) {
	h := newHarness(t)
	h.deploy("gpu", map[string]any{"parallel": 1})
	dep := h.depID("gpu")

	// The request is still waiting when the test ends: cancel it then,
	// or the server's Close waits for its queue timeout.
	ctx, cancel := context.WithCancel(context.Background())
	lines := make(chan string, 256)
	t.Cleanup(func() {
		cancel()
		for range lines {
		}
	})
	go func() {
		defer close(lines)
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, h.url+"/v1/completions",
			strings.NewReader(`{"model":"gpu","prompt":"Once","max_tokens":5,"stream":true}`))
		req.Header.Set("Authorization", "Bearer "+adminKey)
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			if ctx.Err() == nil {
				t.Error(err)
			}
			return
		}
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			if sc.Text() != "" {
				lines <- sc.Text()
			}
		}
	}()
	expect := func(want string) {
		t.Helper()
		var seen []string
		deadline := time.After(20 * time.Second)
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					t.Fatalf("the stream ended before %q; it had %q", want, seen)
				}
				if l == want {
					return
				}
				seen = append(seen, l)
			case <-deadline:
				t.Fatalf("no %q within 20 s; the stream had %q", want, seen)
			}
		}
	}
	publish := func(runner string, p wire.Phase, detail string) {
		t.Helper()
		hb, _ := json.Marshal(wire.Heartbeat{RunnerID: runner, Deployment: "gpu", DeploymentID: dep, Phase: p, Detail: detail, StartedAt: time.Now(), Sent: time.Now()})
		if err := h.nc.Publish(wire.HeartbeatSubject(dep, runner), hb); err != nil {
			t.Fatal(err)
		}
	}

	expect(": starting runner")
	why := "waiting for a GPU: the runner needs 1 GPU(s) with 3.2 GiB free each; free now: GPU 0 1.0 GiB"
	publish("waiting-"+dep, wire.PhaseWaiting, why)
	expect(": " + why)
	// A runner on its way says more than the driver's last word.
	publish("r1", wire.PhaseStarting, "")
	publish("waiting-"+dep, wire.PhaseWaiting, why)
	expect(": starting runner")

	// The deployment's view shows where each runner runs, as it said.
	gpu := wire.Device{Name: "CUDA0", Kind: "gpu", Description: "NVIDIA H200", TotalBytes: 141 << 30, FreeBytes: 120 << 30}
	hb, _ := json.Marshal(wire.Heartbeat{RunnerID: "r1", Deployment: "gpu", DeploymentID: dep, Phase: wire.PhaseLoading,
		StartedAt: time.Now(), Sent: time.Now(), Devices: []wire.Device{{Name: "CPU", Kind: "cpu"}, gpu}, GPULayers: 17})
	if err := h.nc.Publish(wire.HeartbeatSubject(dep, "r1"), hb); err != nil {
		t.Fatal(err)
	}
	expect(": loading model")
	resp := h.do(http.MethodGet, "/v1/deployments/gpu", "")
	defer resp.Body.Close()
	var view struct {
		Runners []wire.Heartbeat `json:"runners"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&view); err != nil {
		t.Fatal(err)
	}
	for _, r := range view.Runners {
		if r.RunnerID == "r1" {
			if len(r.Devices) != 2 || r.Devices[1] != gpu || r.GPULayers != 17 {
				t.Errorf("runner r1 in the deployment's view: devices %+v, %d GPU layers", r.Devices, r.GPULayers)
			}
			return
		}
	}
	t.Errorf("runner r1 missing from the deployment's view: %+v", view.Runners)
}
