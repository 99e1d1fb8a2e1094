package main

import (
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/infer-run/infer/internal/ggufgen"
	"github.com/infer-run/infer/runner"
)

// TestPresetsDecode: every preset's tokenizer and tensor layout (the 8b's
// 128,256-token vocabulary and untied output included) loads in llama.cpp
// and decodes. The device check writes 16 GB before it would find out, so
// each is checked here with its width and depth shrunk.
func TestPresetsDecode(t *testing.T) {
	for _, name := range presetNames() {
		t.Run(name, func(t *testing.T) {
			cfg := presets[name]
			ratio := cfg.Heads / cfg.KVHeads
			cfg.Embd, cfg.Heads, cfg.KVHeads, cfg.FFN, cfg.Layers = 64, 4*ratio, 4, 128, 2
			path := filepath.Join(t.TempDir(), "m.gguf")
			if err := ggufgen.WriteFile(path, cfg); err != nil {
				t.Fatal(err)
			}
			e, err := runner.LoadEngine(slog.New(slog.DiscardHandler), runner.EngineConfig{ModelPath: path, Parallel: 2, Context: 128, Contexts: 1, Threads: 1}, nil)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() { e.Run(ctx); close(done) }()
			defer func() { cancel(); <-done; e.Close() }()
			r := runStreams(e, 2, 4)
			if r.Errors != 0 || r.Tokens == 0 {
				t.Fatalf("2 streams of 4 tokens: %d errors, %d tokens", r.Errors, r.Tokens)
			}
		})
	}
}

// TestDryRun: the CPU dry mode that gpu-check.sh falls back to writes a
// results.json with the cold start and one run per stream count, and the
// Markdown table.
func TestDryRun(t *testing.T) {
	out := t.TempDir()
	if err := run([]string{"-dry", "-out", out, "-models", t.TempDir()}); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(out, "results.json"))
	if err != nil {
		t.Fatal(err)
	}
	var rep report
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatal(err)
	}
	if len(rep.Models) != 1 || rep.Models[0].Name != "tiny" {
		t.Fatalf("models %+v, want tiny", rep.Models)
	}
	m := rep.Models[0]
	if m.Cold.LoadMS <= 0 || m.Cold.FirstDecodeMS <= 0 {
		t.Errorf("cold start %+v: load and first decode must be measured", m.Cold)
	}
	if len(m.Runs) != 2 || m.Runs[0].Streams != 1 || m.Runs[1].Streams != 4 {
		t.Fatalf("runs %+v, want 1 and 4 streams", m.Runs)
	}
	for _, r := range m.Runs {
		if r.Errors != 0 || r.Tokens == 0 || r.TokensSec <= 0 {
			t.Errorf("run %+v: no errors and some tokens expected", r)
		}
	}
	md, err := os.ReadFile(filepath.Join(out, "results.md"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(md), "| tiny | 4 |") {
		t.Errorf("results.md lacks the 4-stream row:\n%s", md)
	}
}

func TestQuantile(t *testing.T) {
	xs := []float64{5, 1, 4, 2, 3}
	for _, c := range []struct{ q, want float64 }{{0.5, 3}, {0.99, 5}, {0, 1}, {1, 5}} {
		if got := quantile(xs, c.q); got != c.want {
			t.Errorf("quantile(%v) = %v, want %v", c.q, got, c.want)
		}
	}
	if got := quantile(nil, 0.5); got != 0 {
		t.Errorf("quantile of nothing = %v, want 0", got)
	}
}
