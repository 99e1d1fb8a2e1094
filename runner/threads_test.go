package runner

import (
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/infer-run/infer/internal/ggufgen"
	"github.com/infer-run/infer/internal/testenv"
)

func TestThreadCandidates(t *testing.T) {
	tests := []struct {
		cpus int
		want []int
	}{
		{1, []int{1}},
		{2, []int{1, 2}},
		{4, []int{1, 2, 3, 4}},
		{6, []int{1, 2, 3, 4, 6}},
		{16, []int{1, 2, 3, 4, 8, 16}},
		{96, []int{1, 2, 3, 4, 8, 16, 32, 64}},
	}
	for _, tc := range tests {
		if got := threadCandidates(tc.cpus); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("threadCandidates(%d) = %v, want %v", tc.cpus, got, tc.want)
		}
	}
}

// TestThreadsMeasuredOnceAndReused: the first load times the thread counts
// and records the winner; the next load reads it instead of measuring.
// thresholdModel writes a random-weight model just over smallModel, the
// smallest size whose thread count is measured.
func thresholdModel(t *testing.T) string {
	t.Helper()
	c := ggufgen.Config{Vocab: 16000, Embd: 512, Layers: 6, Heads: 8, KVHeads: 8, FFN: 1024, Context: 256, Seed: 1, Name: "threshold"}
	if c.Parameters() < smallModel {
		t.Fatalf("model of %d parameters is under smallModel", c.Parameters())
	}
	path := filepath.Join(t.TempDir(), "threshold.gguf")
	if err := ggufgen.WriteFile(path, c); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestThreadsNotMeasuredForSmallModels(t *testing.T) {
	dir := t.TempDir()
	e, err := LoadEngine(slog.New(slog.DiscardHandler), EngineConfig{ModelPath: testenv.ModelPath(t), Parallel: 1, Context: 128, CacheDir: dir}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if files, _ := filepath.Glob(filepath.Join(dir, "threads-*")); len(files) != 0 || e.cfg.Threads != 1 {
		t.Errorf("stories260K: threads %d, records %v; want 1 thread and nothing measured", e.cfg.Threads, files)
	}
}

func TestThreadsMeasuredOnceAndReused(t *testing.T) {
	dir := t.TempDir()
	cfg := EngineConfig{ModelPath: thresholdModel(t), Parallel: 1, Context: 128, CacheDir: dir}
	e, err := LoadEngine(slog.New(slog.DiscardHandler), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	e.Close()
	files, _ := filepath.Glob(filepath.Join(dir, "threads-*"))
	if len(files) != 1 {
		t.Fatalf("cache holds %v, want one threads record", files)
	}
	n, ok := cachedThreads(files[0])
	if !ok || n != e.cfg.Threads {
		t.Fatalf("recorded %d (ok %v), engine used %d", n, ok, e.cfg.Threads)
	}
	// A recorded value the measurement would never pick proves reuse.
	if err := os.WriteFile(files[0], []byte("7\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	e, err = LoadEngine(slog.New(slog.DiscardHandler), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if e.cfg.Threads != 7 {
		t.Errorf("second load used %d threads, want the recorded 7", e.cfg.Threads)
	}
	if e.measureThreads != "" {
		t.Error("second load still meant to measure")
	}
	// An explicit --threads wins over the record.
	cfg.Threads = 1
	e2, err := LoadEngine(slog.New(slog.DiscardHandler), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer e2.Close()
	if e2.cfg.Threads != 1 {
		t.Errorf("explicit threads 1 became %d", e2.cfg.Threads)
	}
}
