package runner

import (
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/infer-run/infer/internal/testenv"
	"github.com/infer-run/infer/internal/wire"
)

const gib = int64(1) << 30

// llama8B is Llama 3 8B's shape in F16: 32 blocks of ~436 MiB, a 1 GiB
// token embedding and a 1 GiB output head (its GGUF: 16.1 GB).
func llama8B() ModelShape {
	s := ModelShape{Layers: 32, Embedding: 4096, Heads: 32, KVHeads: 8, HeadDimK: 128, HeadDimV: 128, Vocab: 128256,
		InputBytes: 128256 * 4096 * 2, OutputBytes: 128256*4096*2 + 4096*4}
	for range 32 {
		s.LayerBytes = append(s.LayerBytes, 436<<20)
	}
	return s
}

func TestEstimateMemory(t *testing.T) {
	s := llama8B()
	// One cell over 32 layers: 2 × 8 heads × 128 × 2 bytes × 32 = 128 KiB.
	const cell = 128 << 10
	tests := []struct {
		name      string
		needs     MemNeeds
		kvInitial int64
		kvFull    int64
		weights   int64
	}{
		{"one sequence of 4096", MemNeeds{Parallel: 1, Context: 4096}, 4096 * cell, 4096 * cell, s.WeightBytes()},
		{"16 × 4096, whole pool up front (GPU)", MemNeeds{Parallel: 16, Context: 4096}, 16 * 4096 * cell, 16 * 4096 * cell, s.WeightBytes()},
		{"16 × 4096 from a 256-cell pool (CPU)", MemNeeds{Parallel: 16, Context: 4096, InitialCells: 256}, 256 * cell, 16 * 4096 * cell, s.WeightBytes()},
		{"two contexts load the weights twice", MemNeeds{Parallel: 4, Context: 1024, Contexts: 2, InitialCells: 256}, 512 * cell, 4096 * cell, 2 * s.WeightBytes()},
		{"F32 KV doubles it", MemNeeds{Parallel: 1, Context: 1024, KVElemBytes: 4}, 1024 * 2 * cell, 1024 * 2 * cell, s.WeightBytes()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := EstimateMemory(s, tt.needs)
			if e.KVInitial != tt.kvInitial || e.KVFull != tt.kvFull || e.Weights != tt.weights {
				t.Errorf("got weights %d KV %d/%d, want %d KV %d/%d", e.Weights, e.KVInitial, e.KVFull, tt.weights, tt.kvInitial, tt.kvFull)
			}
			if e.Compute <= 0 || e.Total() != e.Weights+e.KVFull+e.Compute {
				t.Errorf("compute %d, total %d", e.Compute, e.Total())
			}
		})
	}
}

func TestFitLayers(t *testing.T) {
	s := llama8B()
	one := MemNeeds{Parallel: 1, Context: 4096}
	all := GPUBytes(s, one, s.Layers+1)
	tests := []struct {
		name      string
		shape     ModelShape
		needs     MemNeeds
		requested int
		gpus      int
		free      int64
		fallback  bool
		want      int
		fitErr    bool
	}{
		{"no GPU: CPU whatever was asked", s, one, AutoGPULayers, 0, 0, false, 0, false},
		{"no GPU, layers asked: still CPU", s, one, 999, 0, 0, false, 0, false},
		{"0 layers asked on a GPU", s, one, 0, 1, 141 * gib, false, 0, false},
		{"auto on an H200: all 33", s, one, AutoGPULayers, 1, 141 * gib, false, 33, false},
		{"999 means all", s, one, 999, 1, 141 * gib, false, 33, false},
		{"12 asked, 12 fit", s, one, 12, 1, 141 * gib, false, 12, false},
		{"exactly enough", s, one, AutoGPULayers, 1, all + GPUReserve, false, 33, false},
		{"one byte short refuses", s, one, AutoGPULayers, 1, all + GPUReserve - 1, false, 0, true},
		{"8 GiB card refuses without fallback", s, one, AutoGPULayers, 1, 8 * gib, false, 0, true},
		// (8 GiB - 512 MiB reserve - 296 MiB compute) / (436 MiB weights + 16 MiB KV) per layer = 16.
		{"8 GiB card with fallback offloads part", s, one, AutoGPULayers, 1, 8 * gib, true, 16, false},
		{"64 × 4096 KV does not fit 24 GiB", s, MemNeeds{Parallel: 64, Context: 4096}, AutoGPULayers, 1, 24 * gib, false, 0, true},
		{"two GPUs add up", s, MemNeeds{Parallel: 64, Context: 4096}, AutoGPULayers, 2, 2 * 40 * gib, false, 33, false},
		{"nothing fits, fallback: CPU only", s, one, AutoGPULayers, 1, GPUReserve, true, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := FitLayers(tt.shape, tt.needs, tt.requested, tt.gpus, tt.free, tt.fallback)
			var fe *FitError
			if tt.fitErr != errors.As(err, &fe) {
				t.Fatalf("err %v, want a FitError: %v", err, tt.fitErr)
			}
			if got != tt.want {
				t.Errorf("layers %d, want %d", got, tt.want)
			}
			if got > 0 && GPUBytes(tt.shape, tt.needs, got)+GPUReserve > tt.free {
				t.Errorf("%d layers need %d bytes, more than the %d free", got, GPUBytes(tt.shape, tt.needs, got)+GPUReserve, tt.free)
			}
			if fe != nil && !strings.Contains(fe.Error(), "free") {
				t.Errorf("unclear refusal: %v", fe)
			}
		})
	}
}

func TestGPUBytesGrowsWithLayers(t *testing.T) {
	s := llama8B()
	n := MemNeeds{Parallel: 4, Context: 2048}
	if GPUBytes(s, n, 0) != 0 {
		t.Fatalf("no layer offloaded needs GPU memory")
	}
	prev := int64(0)
	for l := 1; l <= s.Layers+1; l++ {
		b := GPUBytes(s, n, l)
		if b <= prev {
			t.Fatalf("%d layers: %d bytes, not more than %d for one fewer", l, b, prev)
		}
		prev = b
	}
	// All offloaded: every weight but the token embeddings, the whole KV
	// pool and the compute buffer.
	e := EstimateMemory(s, n)
	if want := e.Weights - s.InputBytes + e.KVFull + e.Compute; prev != want {
		t.Errorf("all layers: %d, want %d", prev, want)
	}
}

func TestReadModelShape(t *testing.T) {
	for _, name := range []string{"stories260K.gguf", "llama3-tiny.gguf"} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(filepath.Dir(testenv.ModelPath(t)), name)
			s, err := ReadModelShape(path)
			if err != nil {
				t.Fatal(err)
			}
			if s.Layers == 0 || len(s.LayerBytes) != s.Layers || s.KVHeads == 0 || s.HeadDimK == 0 || s.Vocab == 0 {
				t.Fatalf("shape %+v", s)
			}
			for i, b := range s.LayerBytes {
				if b == 0 {
					t.Errorf("block %d has no weights", i)
				}
			}
			// The tensors are most of the file: the header and
			// vocabulary are the rest.
			st, _ := os.Stat(path)
			w := s.WeightBytes()
			if w < st.Size()/2 || w > st.Size() {
				t.Errorf("weights %d bytes of a %d-byte file", w, st.Size())
			}
			t.Logf("%s: %+v weights %s", name, s, FormatBytes(w))
		})
	}
}

// TestLoadEngineRefusesWhatDoesNotFit gives the engine a made-up GPU (a
// fake device: no GPU runs on the build machine) too small for the model:
// LoadEngine must refuse with the estimate before llama.cpp loads a byte.
func TestLoadEngineRefusesWhatDoesNotFit(t *testing.T) {
	path := filepath.Join(filepath.Dir(testenv.ModelPath(t)), "llama3-tiny.gguf")
	fake := []wire.Device{{Name: "CUDA0", Kind: "gpu", Description: "fake 16 MiB GPU", TotalBytes: GPUReserve + 16<<20, FreeBytes: GPUReserve + 16<<20}}
	_, err := LoadEngine(slog.Default(), EngineConfig{ModelPath: path, Parallel: 1, Context: 256, GPULayers: AutoGPULayers, Devices: fake}, nil)
	var fe *FitError
	if !errors.As(err, &fe) {
		t.Fatalf("err %v, want a FitError", err)
	}
	if fe.Free != fake[0].FreeBytes || fe.Need <= 16<<20 {
		t.Errorf("refusal %+v", fe)
	}
	t.Log(err)
}

func TestFormatBytes(t *testing.T) {
	for b, want := range map[int64]string{0: "0 B", 1023: "1023 B", 1024: "1 KiB", 1536: "1.5 KiB", 512 << 20: "512 MiB", 141 * gib: "141 GiB", 16106127360: "15 GiB"} {
		if got := FormatBytes(b); got != want {
			t.Errorf("FormatBytes(%d) = %q, want %q", b, got, want)
		}
	}
}
