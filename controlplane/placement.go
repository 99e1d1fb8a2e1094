package controlplane

import (
	"fmt"
	"slices"
	"strings"
)

// GPUClaim is GPU memory a runner of ours was placed with: the bytes it
// is expected to use on each of its GPUs.
type GPUClaim struct {
	Runner string
	UUIDs  []string
	Bytes  int64 // per GPU
}

// NoCapacityError says that no GPU has room for a runner now: the start
// waits (the control plane tries again at its next tick) until runners
// stop and free some.
type NoCapacityError struct {
	Want  int   // GPUs asked for
	Need  int64 // bytes on each
	Free  []int64
	Names []string
}

func (e *NoCapacityError) Error() string {
	free := make([]string, len(e.Free))
	for i, f := range e.Free {
		free[i] = fmt.Sprintf("%s %s", e.Names[i], gib(f))
	}
	return fmt.Sprintf("waiting for a GPU: the runner needs %d GPU(s) with %s free each; free now: %s", e.Want, gib(e.Need), strings.Join(free, ", "))
}

// TooFewGPUsError says the host has fewer GPUs than a deployment asks for
// its runners: waiting cannot help.
type TooFewGPUsError struct{ Want, Have int }

func (e *TooFewGPUsError) Error() string {
	if e.Have == 0 {
		return fmt.Sprintf("the deployment asks for %d GPU(s) per runner (--gpus) and this host has none (nvidia-smi lists no GPU); deploy with --gpus 0 to run on the CPU", e.Want)
	}
	return fmt.Sprintf("the deployment asks for %d GPUs per runner (--gpus) and this host has %d", e.Want, e.Have)
}

func gib(b int64) string { return fmt.Sprintf("%.1f GiB", float64(b)/(1<<30)) }

// PlaceGPUs picks `want` GPUs for a runner needing `need` bytes in all
// (split evenly over them, as llama.cpp splits layers), given the host's
// GPUs and what our runners already claim. A GPU's free memory is its
// total less the larger of what it reports used and what our runners
// claim on it: the report covers our loaded runners and everyone else's
// use, the claims cover ours still loading; taking the larger never counts
// one of ours twice. Among the GPUs with room it takes the fullest (best
// fit), so small deployments pack onto one GPU and a large one still finds
// an empty GPU; ties go to the lower index. want 0 places nothing.
func PlaceGPUs(gpus []GPU, claims []GPUClaim, want int, need int64) ([]GPU, error) {
	if want <= 0 {
		return nil, nil
	}
	if want > len(gpus) {
		return nil, &TooFewGPUsError{Want: want, Have: len(gpus)}
	}
	per := (need + int64(want) - 1) / int64(want)
	claimed := map[string]int64{}
	for _, c := range claims {
		for _, u := range c.UUIDs {
			claimed[u] += c.Bytes
		}
	}
	type cand struct {
		gpu  GPU
		free int64
	}
	var fit []cand
	e := &NoCapacityError{Want: want, Need: per}
	for _, g := range gpus {
		free := g.TotalBytes - max(g.UsedBytes, claimed[g.UUID])
		e.Free, e.Names = append(e.Free, free), append(e.Names, fmt.Sprintf("GPU %d", g.Index))
		if free >= per {
			fit = append(fit, cand{g, free})
		}
	}
	if len(fit) < want {
		return nil, e
	}
	slices.SortStableFunc(fit, func(a, b cand) int {
		if a.free != b.free {
			if a.free < b.free {
				return -1
			}
			return 1
		}
		return a.gpu.Index - b.gpu.Index
	})
	out := make([]GPU, want)
	for i := range out {
		out[i] = fit[i].gpu
	}
	slices.SortFunc(out, func(a, b GPU) int { return a.Index - b.Index })
	return out, nil
}

// VisibleDevices is CUDA_VISIBLE_DEVICES for a runner placed on gpus: by
// UUID, which stays the same when the driver renumbers; empty hides every
// GPU (a CPU runner).
func VisibleDevices(gpus []GPU) string {
	ids := make([]string, len(gpus))
	for i, g := range gpus {
		ids[i] = g.UUID
		if ids[i] == "" {
			ids[i] = fmt.Sprint(g.Index)
		}
	}
	return strings.Join(ids, ",")
}

// RunnerGPUBytes is what placement plans for one runner of a spec before
// its weights are read: the artifact (a GGUF is its weights within a few
// MiB), an eighth more for the KV cache (Llama 3 8B F16, 16.1 GB: 2 GB is
// 4 × 4096 tokens at 128 KiB each, the default parallel at the default
// context cap), and 1 GiB for the compute buffer (~0.3 GiB at 8B,
// runner/memest.go) and the runtime's reserve (runner.GPUReserve: 512 MiB
// for the CUDA context and cuBLAS). The runner then checks its exact
// estimate (KV for its parallel × context from the GGUF's shape) against
// the GPU's real free memory and refuses clearly if packing left too
// little, rather than failing inside CUDA.
func RunnerGPUBytes(spec RunnerSpec) int64 {
	return spec.Size + spec.Size/8 + 1<<30
}
