package main

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/infer-run/infer/internal/ggufgen"
)

// presets are the model shapes gpubench measures. The big ones follow real
// models' bodies so that a token costs what it costs there.
var presets = map[string]ggufgen.Config{
	// tiny is for -dry: a few million parameters, decodes on any CPU.
	"tiny": ggufgen.Small,
	// 1b is Llama-3.2-1B's body (2048 wide, 16 layers, 32 heads over 8 KV
	// heads, feed-forward 8192, tied embeddings) with a 32000 vocabulary:
	// 1.04B parameters, 2.1 GB in F16.
	"1b": {Vocab: 32000, Embd: 2048, Layers: 16, Heads: 32, KVHeads: 8, FFN: 8192, Context: 4096, Seed: 1, Name: "gpubench-1b", MaxBytes: 4 << 30},
	// 8b is Llama-3-8B's shape, vocabulary and untied output included
	// (4096 wide, 32 layers, 32 heads over 8 KV heads, feed-forward
	// 14336, 128256 tokens): 8.03B parameters, 16.1 GB in F16.
	"8b": {Vocab: 128256, Embd: 4096, Layers: 32, Heads: 32, KVHeads: 8, FFN: 14336, Context: 8192, Seed: 1, Name: "gpubench-8b", Untied: true, MaxBytes: 20 << 30},
}

func presetNames() []string {
	var names []string
	for n := range presets {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

type writeResult struct {
	Name       string  `json:"name"`
	Path       string  `json:"path"`
	Parameters int64   `json:"parameters"`
	Bytes      int64   `json:"bytes"`
	Reused     bool    `json:"reused"`
	Seconds    float64 `json:"write_seconds"`
	MBps       float64 `json:"write_mb_per_s"`
}

// writeModel writes the preset's model into dir unless it is there
// already (ggufgen.Cached names the file by its whole config).
func writeModel(dir, name string) (writeResult, error) {
	cfg := presets[name]
	w := writeResult{Name: name, Parameters: cfg.Parameters()}
	before, _ := filepath.Glob(filepath.Join(dir, cfg.Name+"-*.gguf"))
	start := time.Now()
	path, err := ggufgen.Cached(dir, cfg)
	if err != nil {
		return w, fmt.Errorf("writing the %s model: %w", name, err)
	}
	took := time.Since(start)
	st, err := os.Stat(path)
	if err != nil {
		return w, err
	}
	w.Path, w.Bytes, w.Seconds = path, st.Size(), took.Seconds()
	w.Reused = slices.Contains(before, path)
	if w.Reused {
		w.Seconds = 0
	} else {
		w.MBps = float64(w.Bytes) / 1e6 / took.Seconds()
	}
	return w, nil
}
