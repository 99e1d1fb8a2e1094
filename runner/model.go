package runner

import (
	"fmt"
	"os"

	"github.com/ollama/ollama/fs/ggml"
)

// ModelInfo is what the runner needs from a GGUF header before loading.
type ModelInfo struct {
	Architecture   string
	ParameterCount uint64
	ContextLength  int
	ChatTemplate   string
}

// ReadModelInfo reads a GGUF file's header (not its tensors).
func ReadModelInfo(path string) (ModelInfo, error) {
	f, err := os.Open(path)
	if err != nil {
		return ModelInfo{}, fmt.Errorf("opening model: %w", err)
	}
	defer f.Close()
	// Arrays (the vocabulary) are not needed here; 0 skips collecting them.
	g, err := ggml.Decode(f, 0)
	if err != nil {
		return ModelInfo{}, fmt.Errorf("reading GGUF header of %s: %w", path, err)
	}
	kv := g.KV()
	info := ModelInfo{
		Architecture:   kv.Architecture(),
		ParameterCount: kv.ParameterCount(),
		ContextLength:  int(kv.ContextLength()),
		ChatTemplate:   kv.ChatTemplate(),
	}
	if info.ParameterCount == 0 {
		for _, t := range g.Tensors().Items() {
			info.ParameterCount += t.Elements()
		}
	}
	return info, nil
}
