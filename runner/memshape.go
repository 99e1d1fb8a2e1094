package runner

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/infer-run/infer/internal/gguf"
	"github.com/ollama/ollama/fs/ggml"
)

// ReadModelShape reads what the memory estimate needs (memest.go) from a
// GGUF file's header: the hyperparameters and each tensor's size.
func ReadModelShape(path string) (ModelShape, error) {
	f, err := os.Open(path)
	if err != nil {
		return ModelShape{}, fmt.Errorf("opening model: %w", err)
	}
	defer f.Close()
	g, err := ggml.Decode(f, 0)
	if err != nil {
		return ModelShape{}, fmt.Errorf("reading GGUF header of %s: %w", path, err)
	}
	kv := g.KV()
	s := ModelShape{
		Layers:    int(kv.BlockCount()),
		Embedding: int(kv.EmbeddingLength()),
		Heads:     int(kv.HeadCountMax()),
		KVHeads:   int(kv.HeadCountKVMax()),
		HeadDimK:  int(kv.EmbeddingHeadCountK()),
		HeadDimV:  int(kv.EmbeddingHeadCountV()),
	}
	s.LayerBytes = make([]int64, s.Layers)
	for _, t := range g.Tensors().Items() {
		name, size := t.Name, int64(t.Size())
		switch {
		case strings.HasPrefix(name, "blk."):
			rest := strings.TrimPrefix(name, "blk.")
			i, err := strconv.Atoi(rest[:max(0, strings.IndexByte(rest, '.'))])
			if err != nil || i < 0 || i >= s.Layers {
				return ModelShape{}, fmt.Errorf("GGUF tensor %s: block outside the model's %d", name, s.Layers)
			}
			s.LayerBytes[i] += size
		case name == "token_embd.weight":
			s.InputBytes += size
			if len(t.Shape) == 2 {
				s.Vocab = int(t.Shape[1])
			}
		default:
			// output.weight, output_norm.weight, rope factors.
			s.OutputBytes += size
		}
	}
	if !hasTensor(g, "output.weight") {
		// Tied embeddings: llama.cpp loads token_embd a second time as
		// the output head, on the output layer's device.
		s.TiedOutput = true
	}
	return s, nil
}

func hasTensor(g *ggml.GGML, name string) bool {
	for _, t := range g.Tensors().Items() {
		if t.Name == name {
			return true
		}
	}
	return false
}

// placeLayers resolves cfg.GPULayers against the model and the GPUs among
// cfg.Devices (memest.go's FitLayers), logging the estimate it decided on.
func placeLayers(cfg EngineConfig, info gguf.ModelInfo) (int, error) {
	free, gpus := GPUFreeBytes(cfg.Devices)
	if gpus == 0 || cfg.GPULayers == 0 {
		return 0, nil
	}
	shape, err := ReadModelShape(cfg.ModelPath)
	if err != nil {
		return 0, err
	}
	needs := MemNeeds{Parallel: cfg.Parallel, Context: cfg.Context, Contexts: cfg.Contexts, Batch: cfg.BatchSize}
	return FitLayers(shape, needs, cfg.GPULayers, gpus, free, cfg.CPUFallback)
}
