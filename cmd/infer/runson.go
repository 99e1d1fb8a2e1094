package main

import (
	"fmt"
	"strings"

	"github.com/infer-run/infer/internal/wire"
)

// runsOn says where a runner computes, from the devices it reported: its
// GPUs (by model, counted) with the layers it offloaded, or the CPU. A
// runner that has not reported devices (older, or still starting) shows
// nothing.
func runsOn(devs []wire.Device, gpuLayers int) string {
	var gpus []string
	count := map[string]int{}
	cpu := false
	for _, d := range devs {
		switch d.Kind {
		case "gpu":
			name := d.Description
			if name == "" {
				name = d.Name
			}
			if count[name] == 0 {
				gpus = append(gpus, name)
			}
			count[name]++
		case "cpu":
			cpu = true
		}
	}
	if len(gpus) == 0 || gpuLayers == 0 {
		if cpu {
			return "CPU"
		}
		return ""
	}
	parts := make([]string, len(gpus))
	for i, g := range gpus {
		parts[i] = g
		if count[g] > 1 {
			parts[i] = fmt.Sprintf("%d× %s", count[g], g)
		}
	}
	return fmt.Sprintf("GPU %s (%d layers)", strings.Join(parts, ", "), gpuLayers)
}
