// Package gguf describes a model from its GGUF header: the facts the
// registry records at upload and the runner needs before loading. It is
// cgo-free (Ollama's pure-Go GGUF decoder, not llama.cpp), so every
// process can use it.
package gguf

import (
	"fmt"
	"math"
	"os"
	"slices"

	"github.com/ollama/ollama/fs/ggml"
)

// ModelInfo is what a GGUF header says about the model.
type ModelInfo struct {
	Architecture   string `json:"architecture"`
	ParameterCount int64  `json:"parameter_count"`
	// Quantization is the file type, such as "Q4_K_M" or "F16".
	Quantization string `json:"quantization"`
	// ContextLength is the trained context length; 0 if the file does not say.
	ContextLength int `json:"context_length"`
	// ChatTemplate is the Jinja chat template (tokenizer.chat_template),
	// empty for base models.
	ChatTemplate string `json:"chat_template"`
	// Pooling is how the model pools token vectors into one embedding
	// (<arch>.pooling_type: "none", "mean", "cls", "last", "rank"), ""
	// when the file does not say. A file that says is an embedding (or
	// reranking) model, as Ollama and llama.cpp take it.
	Pooling string `json:"pooling,omitempty"`
}

// poolingNames are llama.cpp's llama_pooling_type values, by number.
var poolingNames = [...]string{"none", "mean", "cls", "last", "rank"}

// encoderArchitectures are llama.cpp architectures with no causal LM head:
// they make embeddings only, whatever their file says of pooling.
var encoderArchitectures = [...]string{"bert", "jina-bert-v2", "nomic-bert", "nomic-bert-moe", "t5encoder"}

// PoolingType is llama.cpp's llama_pooling_type number of a Pooling
// name, -1 for "" or one it does not know.
func PoolingType(name string) int {
	return slices.Index(poolingNames[:], name)
}

// EmbeddingOnly reports whether a model of this architecture and pooling
// (ModelInfo's) makes embeddings and no text: one that declares a pooling
// type, as Ollama and llama.cpp take it, or an encoder.
func EmbeddingOnly(architecture, pooling string) bool {
	return pooling != "" && pooling != "none" || slices.Contains(encoderArchitectures[:], architecture)
}

// EmbeddingOnly reports whether the model makes embeddings and no text.
func (m ModelInfo) EmbeddingOnly() bool { return EmbeddingOnly(m.Architecture, m.Pooling) }

// pooling reads <arch>.pooling_type, which writers store as a uint32 or
// an int32.
func pooling(kv ggml.KV) string {
	var n int64 = -1
	switch v := kv[kv.Architecture()+".pooling_type"].(type) {
	case uint32:
		n = int64(v)
	case int32:
		n = int64(v)
	case nil:
		return ""
	}
	if n < 0 || n >= int64(len(poolingNames)) {
		return "unknown"
	}
	return poolingNames[n]
}

// Describe reads a decoded header.
func Describe(f *ggml.GGML) ModelInfo {
	kv := f.KV()
	tensors := f.Tensors().Items()
	info := ModelInfo{
		Architecture:   kv.String("general.architecture"),
		ParameterCount: int64(min(kv.ParameterCount(), math.MaxInt64)),
		Quantization:   quantization(kv, tensors),
		ContextLength:  int(kv.ContextLength()),
		ChatTemplate:   kv.ChatTemplate(),
		Pooling:        pooling(kv),
	}
	if info.ParameterCount == 0 {
		// Decode fills general.parameter_count in from the tensors today;
		// this keeps the count right should it stop doing so.
		var n uint64
		for _, t := range tensors {
			n += t.Elements()
		}
		info.ParameterCount = int64(min(n, math.MaxInt64))
	}
	return info
}

// ReadFile reads a GGUF file's header (not its tensors). It trusts the
// file: the registry checked it at upload (registry.Inspect).
func ReadFile(path string) (ModelInfo, error) {
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
	return Describe(g), nil
}

// quantization names the file type, falling back to the tensor type that
// holds the most weights when the header does not say.
func quantization(kv ggml.KV, tensors []*ggml.Tensor) string {
	if ft := kv.FileType(); ft != ggml.FileTypeUnknown && ft.String() != "unknown" {
		return ft.String()
	}
	// FileType treats 0 as absent, but 0 is "all F32".
	if v, ok := kv["general.file_type"].(uint32); ok && v == 0 {
		return ggml.FileTypeF32.String()
	}
	byType := map[uint32]uint64{}
	for _, t := range tensors {
		byType[t.Kind] += t.Elements()
	}
	best, most := uint32(0), uint64(0)
	for kind, n := range byType {
		if n > most || (n == most && kind < best) {
			best, most = kind, n
		}
	}
	if most == 0 {
		return "unknown"
	}
	return ggml.TensorType(best).String()
}
