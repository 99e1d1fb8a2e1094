package controlplane

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
)

// GPU is one of the host's GPUs as the local driver places runners on it.
type GPU struct {
	Index int
	UUID  string // "GPU-…": what CUDA_VISIBLE_DEVICES names it by
	Name  string // "NVIDIA H200"
	// TotalBytes and UsedBytes are its memory now, every process's use
	// counted (ours included once they have loaded).
	TotalBytes int64
	UsedBytes  int64
}

// GPUInventory lists the host's GPUs as they are now; none is not an error.
type GPUInventory interface {
	GPUs(ctx context.Context) ([]GPU, error)
}

// NvidiaSMI is the host's GPU inventory as `nvidia-smi` reports it: the
// NVIDIA driver's own tool, present wherever its GPUs are usable, so no
// NVML binding (cgo) is built into infer. No nvidia-smi means no GPUs.
type NvidiaSMI struct {
	// Path is the binary; empty looks for nvidia-smi on $PATH.
	Path string
}

// nvidiaSMIQuery is the query GPUs runs; parseNvidiaSMI reads its output.
var nvidiaSMIQuery = []string{"--query-gpu=index,uuid,name,memory.total,memory.used", "--format=csv,noheader,nounits"}

func (n NvidiaSMI) GPUs(ctx context.Context) ([]GPU, error) {
	path := n.Path
	if path == "" {
		path = "nvidia-smi"
	}
	bin, err := exec.LookPath(path)
	if errors.Is(err, exec.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("finding nvidia-smi: %w", err)
	}
	out, err := exec.CommandContext(ctx, bin, nvidiaSMIQuery...).Output()
	if err != nil {
		return nil, fmt.Errorf("listing GPUs with nvidia-smi: %w", err)
	}
	return parseNvidiaSMI(string(out))
}

// parseNvidiaSMI reads nvidia-smi's CSV, one GPU a line: index, uuid,
// name, memory.total and memory.used in MiB.
func parseNvidiaSMI(out string) ([]GPU, error) {
	var gpus []GPU
	for line := range strings.SplitSeq(strings.TrimSpace(out), "\n") {
		if strings.TrimSpace(line) == "" {
			continue
		}
		f := strings.Split(line, ",")
		if len(f) != 5 {
			return nil, fmt.Errorf("nvidia-smi line %q: want 5 fields", line)
		}
		for i := range f {
			f[i] = strings.TrimSpace(f[i])
		}
		idx, err1 := strconv.Atoi(f[0])
		total, err2 := strconv.ParseInt(f[3], 10, 64)
		used, err3 := strconv.ParseInt(f[4], 10, 64)
		if err := errors.Join(err1, err2, err3); err != nil {
			return nil, fmt.Errorf("nvidia-smi line %q: %w", line, err)
		}
		gpus = append(gpus, GPU{Index: idx, UUID: f[1], Name: f[2], TotalBytes: total << 20, UsedBytes: used << 20})
	}
	return gpus, nil
}
