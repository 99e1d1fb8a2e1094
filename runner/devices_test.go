package runner

import (
	"os"
	"strconv"
	"strings"
	"testing"
)

// TestDevicesReportsTheCPU checks the real ggml device list of this (CPU)
// build: a CPU device whose memory is the host's.
func TestDevicesReportsTheCPU(t *testing.T) {
	devs := Devices()
	memTotal := hostMemTotal(t)
	var cpu bool
	for _, d := range devs {
		t.Logf("%+v", d)
		if d.Kind != "cpu" {
			continue
		}
		cpu = true
		if d.Name == "" || d.Description == "" {
			t.Errorf("CPU device without a name: %+v", d)
		}
		// ggml reports the host's physical memory for the CPU.
		if d.TotalBytes < memTotal*9/10 || d.TotalBytes > memTotal*11/10 {
			t.Errorf("CPU total %d bytes, host has %d", d.TotalBytes, memTotal)
		}
		if d.FreeBytes <= 0 || d.FreeBytes > d.TotalBytes {
			t.Errorf("CPU free %d of %d bytes", d.FreeBytes, d.TotalBytes)
		}
	}
	if !cpu {
		t.Fatalf("no CPU device among %+v", devs)
	}
	if _, gpus := GPUFreeBytes(devs); gpus != 0 {
		t.Logf("%d GPUs here", gpus)
	}
}

func hostMemTotal(t *testing.T) int64 {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		t.Skip("no /proc/meminfo")
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "MemTotal:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	t.Skip("no MemTotal")
	return 0
}
