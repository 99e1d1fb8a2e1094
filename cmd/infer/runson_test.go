package main

import (
	"testing"

	"github.com/infer-run/infer/internal/wire"
)

func TestRunsOn(t *testing.T) {
	cpu := wire.Device{Name: "CPU", Kind: "cpu", Description: "AMD EPYC"}
	// Made-up GPUs: no GPU on the build machine.
	h200 := func(n string) wire.Device { return wire.Device{Name: n, Kind: "gpu", Description: "NVIDIA H200"} }
	tests := []struct {
		name   string
		devs   []wire.Device
		layers int
		want   string
	}{
		{"nothing reported yet", nil, 0, ""},
		{"CPU build", []wire.Device{cpu}, 0, "CPU"},
		{"GPU given, nothing offloaded", []wire.Device{cpu, h200("CUDA0")}, 0, "CPU"},
		{"one GPU", []wire.Device{cpu, h200("CUDA0")}, 33, "GPU NVIDIA H200 (33 layers)"},
		{"two GPUs", []wire.Device{cpu, h200("CUDA0"), h200("CUDA1")}, 81, "GPU 2× NVIDIA H200 (81 layers)"},
		{"a GPU without a description", []wire.Device{{Name: "CUDA0", Kind: "gpu"}}, 5, "GPU CUDA0 (5 layers)"},
	}
	for _, tt := range tests {
		if got := runsOn(tt.devs, tt.layers); got != tt.want {
			t.Errorf("%s: %q, want %q", tt.name, got, tt.want)
		}
	}
}
