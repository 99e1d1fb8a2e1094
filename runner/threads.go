package runner

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/ollama/ollama/llama"

	"github.com/infer-run/infer/internal/gguf"
)

// threadCandidates are the thread counts worth timing on a host with cpus
// logical CPUs: every count up to four, then powers of two and the total,
// at most eight, so the measurement stays within a few decodes.
func threadCandidates(cpus int) []int {
	var c []int
	for n := 1; n <= cpus && len(c) < 8; {
		c = append(c, n)
		if n < 4 {
			n++
		} else {
			n *= 2
		}
	}
	if c[len(c)-1] != cpus && len(c) < 8 {
		c = append(c, cpus)
	}
	return c
}

// measureThreads times single-token decodes of model with each candidate
// thread count and returns the fastest. Each candidate gets a scratch
// context of a few cells: one warm-up decode, then the best of two timed
// ones. This llama.cpp binding has no way to free a context, so the scratch
// contexts (a few megabytes) stay allocated; it runs once per model and
// host, as the result is cached (see threadsCacheFile).
// timings lists, per candidate, the scratch context's creation time and
// the decode time, for the log.
func measureThreads(model *llama.Model, candidates []int) (best int, took time.Duration, timings []string, err error) {
	start := time.Now()
	batch, err := llama.NewBatch(1, 1, 0)
	if err != nil {
		return 0, 0, nil, fmt.Errorf("allocating batch: %w", err)
	}
	defer batch.Free()
	tok := 1 % model.NumVocab()
	bestTime := time.Duration(1<<63 - 1)
	for _, n := range candidates {
		t0 := time.Now()
		lctx, err := llama.NewContextWithModel(model, llama.NewContextParams(16, 1, 1, n, false, ""))
		if err != nil {
			return 0, 0, nil, fmt.Errorf("creating scratch context with %d threads: %w", n, err)
		}
		created := time.Since(t0)
		t := time.Duration(1<<63 - 1)
		for pos := range 3 {
			batch.Clear()
			batch.Add(tok, nil, pos, true, 0)
			t0 := time.Now()
			if err := decode(lctx, batch); err != nil {
				return 0, 0, nil, fmt.Errorf("decoding with %d threads: %w", n, err)
			}
			if pos > 0 { // the first decode warms caches and pages
				t = min(t, time.Since(t0))
			}
		}
		timings = append(timings, fmt.Sprintf("%d:%v+%v", n, created.Round(time.Microsecond), t.Round(time.Microsecond)))
		if t < bestTime {
			best, bestTime = n, t
		}
	}
	return best, time.Since(start), timings, nil
}

// threadsCacheFile is where the measured thread count for a model on this
// host is kept: keyed by what changes the answer (the model's shape and
// size, the host's CPUs), not by path, so a re-downloaded model reuses it.
func threadsCacheFile(dir string, info gguf.ModelInfo, modelPath string) (string, error) {
	st, err := os.Stat(modelPath)
	if err != nil {
		return "", fmt.Errorf("stat model: %w", err)
	}
	name := fmt.Sprintf("threads-%s-%d-%d-cpu%d", info.Architecture, info.ParameterCount, st.Size(), runtime.NumCPU())
	return filepath.Join(dir, name), nil
}

// cachedThreads reads a thread count recorded by saveThreads.
func cachedThreads(path string) (int, bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, false
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || n <= 0 {
		return 0, false
	}
	return n, true
}

// saveThreads records a measured thread count, atomically so that two
// runners starting together never read half a file.
func saveThreads(path string, n int) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("creating cache dir: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".threads-*")
	if err != nil {
		return fmt.Errorf("recording threads: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := fmt.Fprintf(tmp, "%d\n", n); err != nil {
		tmp.Close()
		return fmt.Errorf("recording threads: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("recording threads: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("recording threads: %w", err)
	}
	return nil
}
