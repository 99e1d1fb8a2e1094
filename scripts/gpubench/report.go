package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/infer-run/infer/internal/wire"
	"github.com/infer-run/infer/runner"
)

type gpuInfo struct {
	Name          string `json:"name"`
	Driver        string `json:"driver"`
	MemoryUsedMiB int    `json:"memory_used_mib"`
	MemoryMiB     int    `json:"memory_total_mib"`
}

// queryGPU asks nvidia-smi for the first GPU's name and memory; nil when
// there is no nvidia-smi (the CPU dry run) or it fails.
func queryGPU(ctx context.Context) *gpuInfo {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "nvidia-smi", "--query-gpu=name,driver_version,memory.used,memory.total", "--format=csv,noheader,nounits").Output()
	if err != nil {
		return nil
	}
	line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	f := strings.Split(line, ",")
	if len(f) != 4 {
		return nil
	}
	g := &gpuInfo{Name: strings.TrimSpace(f[0]), Driver: strings.TrimSpace(f[1])}
	g.MemoryUsedMiB, _ = strconv.Atoi(strings.TrimSpace(f[2]))
	g.MemoryMiB, _ = strconv.Atoi(strings.TrimSpace(f[3]))
	return g
}

type report struct {
	Started   string   `json:"started"`
	Seconds   float64  `json:"seconds"`
	Dry       bool     `json:"dry"`
	GPULayers int      `json:"gpu_layers"`
	Tokens    int      `json:"tokens_per_stream"`
	Context   int      `json:"context_per_stream"`
	Bandwidth float64  `json:"bandwidth_bytes_per_s"`
	GPU       *gpuInfo `json:"gpu,omitempty"`
	// Devices are the ggml devices the runner engine loaded, as a
	// runner reports them in its heartbeats.
	Devices []wire.Device `json:"devices"`
	Writes  []writeResult `json:"model_writes"`
	Models  []modelResult `json:"models"`
	Skipped []string      `json:"skipped,omitempty"`
}

func (r report) write(dir string) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "results.json"), append(b, '\n'), 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "results.md"), []byte(r.markdown()), 0o644)
}

func (r report) markdown() string {
	var b strings.Builder
	where := "CPU only (dry run)"
	if !r.Dry {
		where = fmt.Sprintf("GPU layers %d", r.GPULayers)
	}
	if r.GPU != nil {
		where += fmt.Sprintf(", %s (%d MiB, driver %s)", r.GPU.Name, r.GPU.MemoryMiB, r.GPU.Driver)
	}
	fmt.Fprintf(&b, "gpubench %s: %s; %d output tokens per stream, greedy, context %d per stream\n\n", r.Started, where, r.Tokens, r.Context)
	for _, d := range r.Devices {
		fmt.Fprintf(&b, "- device %s\n", deviceLine(d))
	}
	if len(r.Devices) > 0 {
		b.WriteString("\n")
	}

	b.WriteString("| model | params | F16 GB | write s | fetch ms | load ms | context ms | first decode ms | cold total ms | GPU MiB after load |\n")
	b.WriteString("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
	for _, m := range r.Models {
		write := "-"
		for _, w := range r.Writes {
			if w.Name == m.Name && !w.Reused {
				write = fmt.Sprintf("%.1f", w.Seconds)
			}
		}
		fmt.Fprintf(&b, "| %s | %.2fB | %.2f | %s | %.2f | %.0f | %.0f | %.0f | %.0f | %s |\n",
			m.Name, float64(m.Parameters)/1e9, float64(m.WeightBytes)/1e9, write,
			m.Cold.FetchMS, m.Cold.LoadMS, m.Cold.ContextMS, m.Cold.FirstDecodeMS, m.Cold.TotalMS, mib(m.GPULoaded))
	}

	b.WriteString("\n| model | streams | tokens/s | per stream tokens/s | TPOT p50 ms | TPOT p99 ms | TTFT p50 ms | vs 1 stream | 1 stream vs bandwidth bound | GPU MiB after runs |\n")
	b.WriteString("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
	for _, m := range r.Models {
		one := 0.0
		for _, run := range m.Runs {
			if run.Streams == 1 {
				one = run.TokensSec
			}
		}
		for _, run := range m.Runs {
			vs, bound := "-", "-"
			if one > 0 {
				vs = fmt.Sprintf("%.1f×", run.TokensSec/one)
			}
			if run.Streams == 1 && m.BoundTokensSec > 0 {
				bound = fmt.Sprintf("%.0f%% of %.0f", 100*run.TokensSec/m.BoundTokensSec, m.BoundTokensSec)
			}
			fmt.Fprintf(&b, "| %s | %d | %.1f | %.1f | %.2f | %.2f | %.1f | %s | %s | %s |\n",
				m.Name, run.Streams, run.TokensSec, run.PerStreamTokensSec, run.TPOTP50MS, run.TPOTP99MS, run.TTFTP50MS, vs, bound, mib(m.GPUPeak))
		}
	}
	for _, m := range r.Models {
		if p := m.Pair; p != nil {
			fmt.Fprintf(&b, "\nTwo %s engines side by side, one stream each: %.1f and %.1f tokens/s against %.1f alone (worst %.0f%%; target ≥ 80%%); GPU memory with both loaded %s MiB.\n",
				m.Name, p.EachTokensSec[0], p.EachTokensSec[1], p.AloneTokensSec, 100*p.WorstShare, mib(p.GPU))
		}
		for _, w := range m.Warnings {
			fmt.Fprintf(&b, "\n**%s warning**: %s\n", m.Name, w)
		}
		for _, s := range m.Skipped {
			fmt.Fprintf(&b, "\n%s skipped: %s\n", m.Name, s)
		}
	}
	for _, s := range r.Skipped {
		fmt.Fprintf(&b, "\nskipped: %s\n", s)
	}
	return b.String()
}

func mib(g *gpuInfo) string {
	if g == nil {
		return "-"
	}
	return strconv.Itoa(g.MemoryUsedMiB)
}

// deviceLine describes a ggml device: name, kind, model, memory.
func deviceLine(d wire.Device) string {
	return fmt.Sprintf("%s (%s, %s): %s total, %s free", d.Name, d.Kind, d.Description,
		runner.FormatBytes(d.TotalBytes), runner.FormatBytes(d.FreeBytes))
}
