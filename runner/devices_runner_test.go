package runner

import (
	"strings"
	"testing"
	"time"

	"github.com/infer-run/infer/internal/wire"
)

// TestHeartbeatsReportDevices: a runner's heartbeats name the real ggml
// devices it loaded (here the CPU, with the host's memory) and no layers
// offloaded.
func TestHeartbeatsReportDevices(t *testing.T) {
	beats := watchHeartbeats(t, EngineConfig{Parallel: 1, Context: 256}, nil)
	memTotal := hostMemTotal(t)
	deadline := time.After(60 * time.Second)
	for {
		select {
		case hb := <-beats:
			if hb.Phase == wire.PhaseFailed {
				t.Fatalf("runner failed: %s", hb.Detail)
			}
			if hb.Phase != wire.PhaseReady {
				continue
			}
			if len(hb.Devices) == 0 || hb.Devices[0].Kind != "cpu" || hb.Devices[0].TotalBytes < memTotal/2 {
				t.Fatalf("ready runner reports devices %+v", hb.Devices)
			}
			if hb.GPULayers != 0 {
				t.Errorf("a CPU runner reports %d GPU layers", hb.GPULayers)
			}
			return
		case <-deadline:
			t.Fatal("runner not ready within 60 s")
		}
	}
}

// TestRunnerRefusesWhatDoesNotFit: given a GPU too small for the model (a
// made-up device: there is no GPU on the build machine), the runner's last
// heartbeat is a failure naming the memory needed and free, final (no
// retry), which the activator passes to waiting clients.
func TestRunnerRefusesWhatDoesNotFit(t *testing.T) {
	fake := []wire.Device{
		{Name: "CPU", Kind: "cpu", TotalBytes: 64 << 30, FreeBytes: 64 << 30},
		{Name: "CUDA0", Kind: "gpu", Description: "fake GPU", TotalBytes: GPUReserve + 1<<20, FreeBytes: GPUReserve + 1<<20},
	}
	beats := watchHeartbeats(t, EngineConfig{Parallel: 4, Context: 1024, GPULayers: AutoGPULayers, Devices: fake}, nil)
	deadline := time.After(60 * time.Second)
	for {
		select {
		case hb := <-beats:
			if hb.Phase == wire.PhaseReady {
				t.Fatal("the runner started on a GPU its model does not fit")
			}
			if hb.Phase != wire.PhaseFailed {
				continue
			}
			if !strings.Contains(hb.Detail, "does not fit the GPU") || !strings.Contains(hb.Detail, "513 MiB is free") || hb.Retry {
				t.Errorf("failure %q (retry %v)", hb.Detail, hb.Retry)
			}
			if len(hb.Devices) != 2 || hb.Devices[1].Name != "CUDA0" {
				t.Errorf("devices %+v", hb.Devices)
			}
			return
		case <-deadline:
			t.Fatal("no failure within 60 s")
		}
	}
}
