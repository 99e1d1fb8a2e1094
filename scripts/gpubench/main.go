// Command gpubench measures the runner engine on a GPU without the rest of
// the platform: no Postgres, no NATS, no activator. It writes random-weight
// F16 llama models with internal/ggufgen (~1B and ~8B parameters), loads
// each through runner.LoadEngine with every layer offloaded, and measures
// the cold start per phase, tokens/s at 1, 16 and 64 concurrent streams,
// the time per output token, and the GPU memory in use. Results go to
// results.json and results.md in -out.
//
// It is what scripts/gpu-check.sh runs on a device machine, where there is
// no Go toolchain: it is built here (make gpu-bundle) and carried over.
// -dry runs the same flow on the CPU with a tiny model, to prove it here.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/infer-run/infer/runner"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "gpubench:", err)
		os.Exit(1)
	}
}

type options struct {
	out       string
	models    string
	sizes     []string
	streams   []int
	tokens    int
	gpuLayers int
	context   int
	pair      bool
	writeOnly bool
	budget    time.Duration
	bandwidth float64
	dry       bool
	verbose   bool
}

func parseFlags(args []string) (options, error) {
	var o options
	fs := flag.NewFlagSet("gpubench", flag.ContinueOnError)
	fs.StringVar(&o.out, "out", "", "directory for results.json and results.md (required unless -write-only)")
	fs.StringVar(&o.models, "models", filepath.Join(os.TempDir(), "gpubench-models"), "where the generated models are written (reused when present)")
	sizes := fs.String("sizes", "1b,8b", "models to measure, in order: "+strings.Join(presetNames(), ", "))
	streams := fs.String("streams", "1,16,64", "concurrent streams to measure, comma separated")
	fs.IntVar(&o.tokens, "tokens", 128, "output tokens per stream")
	fs.IntVar(&o.gpuLayers, "gpu-layers", 999, "layers to offload (999: all; 0: CPU only)")
	fs.IntVar(&o.context, "context", 512, "context tokens per stream")
	fs.BoolVar(&o.pair, "pair", true, "also run two engines of the first model side by side at one stream each (GPU sharing)")
	fs.BoolVar(&o.writeOnly, "write-only", false, "only write the models, then exit (to overlap writing with the CUDA build)")
	fs.DurationVar(&o.budget, "budget", 0, "stop starting new measurements after this long (0: no limit); skipped ones are reported")
	fs.Float64Var(&o.bandwidth, "bandwidth", 4.8e12, "GPU memory bandwidth in bytes/s, for the one-stream bound (H200: 4.8e12)")
	fs.BoolVar(&o.dry, "dry", false, "CPU dry run: tiny model, no offload, streams 1,4, 16 tokens")
	fs.BoolVar(&o.verbose, "v", false, "log the engine's own messages")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if o.dry {
		*sizes, *streams, o.tokens, o.gpuLayers = "tiny", "1,4", 16, 0
	}
	o.sizes = strings.Split(*sizes, ",")
	for _, s := range o.sizes {
		if _, ok := presets[s]; !ok {
			return o, fmt.Errorf("unknown size %q: %s", s, strings.Join(presetNames(), ", "))
		}
	}
	for _, s := range strings.Split(*streams, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			return o, fmt.Errorf("streams: %q is not a positive number", s)
		}
		o.streams = append(o.streams, n)
	}
	if o.out == "" && !o.writeOnly {
		return o, fmt.Errorf("-out is required")
	}
	if o.tokens < 2 || o.context < o.tokens+64 {
		return o, fmt.Errorf("tokens %d, context %d: need at least 2 tokens and context ≥ tokens + 64 for the prompt", o.tokens, o.context)
	}
	return o, nil
}

func run(args []string) error {
	o, err := parseFlags(args)
	if err != nil {
		return err
	}
	start := time.Now()
	level := slog.LevelWarn
	if o.verbose {
		level = slog.LevelInfo
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	slog.SetDefault(log) // ggml's own log goes through the default logger

	paths := make(map[string]string)
	var writes []writeResult
	for _, name := range o.sizes {
		w, err := writeModel(o.models, name)
		if err != nil {
			return err
		}
		if w.Reused {
			fmt.Fprintf(os.Stderr, "gpubench: model %s: %s, %.2f GB, already there\n", name, w.Path, float64(w.Bytes)/1e9)
		} else {
			fmt.Fprintf(os.Stderr, "gpubench: model %s: %s, %.2f GB, written in %.1f s (%.0f MB/s)\n",
				name, w.Path, float64(w.Bytes)/1e9, w.Seconds, w.MBps)
		}
		writes = append(writes, w)
		paths[name] = w.Path
	}
	if o.writeOnly {
		return nil
	}
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return fmt.Errorf("creating %s: %w", o.out, err)
	}
	rep := report{
		Started:   start.UTC().Format(time.RFC3339),
		GPULayers: o.gpuLayers,
		Tokens:    o.tokens,
		Context:   o.context,
		Dry:       o.dry,
		Bandwidth: o.bandwidth,
		GPU:       queryGPU(context.Background()),
		Devices:   runner.Devices(),
		Writes:    writes,
	}
	for _, d := range rep.Devices {
		fmt.Fprintf(os.Stderr, "gpubench: device %s\n", deviceLine(d))
	}
	for i, name := range o.sizes {
		if o.budget > 0 && time.Since(start) > o.budget {
			rep.Skipped = append(rep.Skipped, fmt.Sprintf("%s: time budget %s spent", name, o.budget))
			continue
		}
		m, err := measureModel(log, o, name, paths[name], i == 0 && o.pair, start)
		if err != nil {
			// One model failing (out of memory, say) still leaves the
			// others' numbers worth having.
			rep.Skipped = append(rep.Skipped, fmt.Sprintf("%s: %v", name, err))
			fmt.Fprintf(os.Stderr, "gpubench: %s failed: %v\n", name, err)
			continue
		}
		rep.Models = append(rep.Models, m)
		// Write after every model, so a later one that hangs past the
		// device's time limit does not take the finished numbers with it.
		if err := rep.write(o.out); err != nil {
			return err
		}
	}
	rep.Seconds = time.Since(start).Seconds()
	if err := rep.write(o.out); err != nil {
		return err
	}
	os.Stdout.WriteString(rep.markdown())
	if len(rep.Models) == 0 {
		return fmt.Errorf("no model was measured: %s", strings.Join(rep.Skipped, "; "))
	}
	return nil
}
