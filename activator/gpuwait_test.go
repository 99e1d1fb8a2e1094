package activator_test

import (
	"encoding/json"
	"net/http"
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

	s := h.stream(t, "/v1/completions", `{"model":"gpu","prompt":"Once","max_tokens":5,"stream":true}`)
	publish := func(runner string, p wire.Phase, detail string) {
		t.Helper()
		hb, _ := json.Marshal(wire.Heartbeat{RunnerID: runner, Deployment: "gpu", DeploymentID: dep, Phase: p, Detail: detail, StartedAt: time.Now(), Sent: time.Now()})
		if err := h.nc.Publish(wire.HeartbeatSubject(dep, runner), hb); err != nil {
			t.Fatal(err)
		}
	}

	s.expect(": starting runner")
	why := "waiting for a GPU: the runner needs 1 GPU(s) with 3.2 GiB free each; free now: GPU 0 1.0 GiB"
	publish("waiting-"+dep, wire.PhaseWaiting, why)
	s.expect(": " + why)
	// A runner on its way says more than the driver's last word.
	publish("r1", wire.PhaseStarting, "")
	publish("waiting-"+dep, wire.PhaseWaiting, why)
	s.expect(": starting runner")

	// The deployment's view shows where each runner runs, as it said.
	gpu := wire.Device{Name: "CUDA0", Kind: "gpu", Description: "NVIDIA H200", TotalBytes: 141 << 30, FreeBytes: 120 << 30}
	hb, _ := json.Marshal(wire.Heartbeat{RunnerID: "r1", Deployment: "gpu", DeploymentID: dep, Phase: wire.PhaseLoading,
		StartedAt: time.Now(), Sent: time.Now(), Devices: []wire.Device{{Name: "CPU", Kind: "cpu"}, gpu}, GPULayers: 17})
	if err := h.nc.Publish(wire.HeartbeatSubject(dep, "r1"), hb); err != nil {
		t.Fatal(err)
	}
	s.expect(": loading model")
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
