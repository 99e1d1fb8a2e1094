package runner

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/infer-run/infer/internal/ggufgen"
	"github.com/infer-run/infer/internal/testenv"
)

// pooledModel is a random-weight llama that declares mean pooling: an
// embedding model as far as its metadata goes.
func pooledModel(t *testing.T) string {
	t.Helper()
	c := ggufgen.Small
	c.Name = "ggufgen-small-embed"
	c.KV = map[string]any{"llama.pooling_type": uint32(1)}
	path := filepath.Join(t.TempDir(), "embed.gguf")
	if err := ggufgen.WriteFile(path, c); err != nil {
		t.Fatal(err)
	}
	return path
}

func embedAll(t *testing.T, e *Engine, inputs [][]int, dims int) ([][]float32, error) {
	t.Helper()
	out := make([][]float32, len(inputs))
	err := e.Embed(context.Background(), inputs, dims, func(i int, vec []byte) {
		if out[i] != nil {
			t.Errorf("input %d delivered twice", i)
		}
		v := make([]float32, len(vec)/4)
		for j := range v {
			v[j] = math.Float32frombits(binary.LittleEndian.Uint32(vec[4*j:]))
		}
		out[i] = v
	})
	return out, err
}

func norm(v []float32) float64 {
	var s float64
	for _, x := range v {
		s += float64(x) * float64(x)
	}
	return math.Sqrt(s)
}

func maxDiff(a, b []float32) float64 {
	d := 0.0
	for i := range a {
		d = max(d, math.Abs(float64(a[i]-b[i])))
	}
	return d
}

// TestEmbed runs both poolings: the model's own (mean, declared in the
// GGUF) and the last token of a decoder LLM that declares none.
func TestEmbed(t *testing.T) {
	for _, tc := range []struct {
		name    string
		path    string
		embOnly bool
	}{
		{"mean pooling from the GGUF", pooledModel(t), true},
		{"last token of stories260K", testenv.ModelPath(t), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := startEngine(t, EngineConfig{ModelPath: tc.path, Parallel: 2, Context: 64})
			if got := e.EmbeddingOnly(); got != tc.embOnly {
				t.Fatalf("EmbeddingOnly = %v, want %v", got, tc.embOnly)
			}
			texts := []string{"Once upon a time", "the cat sat on the mat", "a", "Once upon a time"}
			inputs, err := e.EmbedTokenize(texts)
			if err != nil {
				t.Fatal(err)
			}
			batch, err := embedAll(t, e, inputs, 0)
			if err != nil {
				t.Fatal(err)
			}
			dim := e.model.NEmbd()
			for i, v := range batch {
				if len(v) != dim {
					t.Fatalf("input %d: %d dimensions, want %d", i, len(v), dim)
				}
				if n := norm(v); math.Abs(n-1) > 1e-5 {
					t.Errorf("input %d: norm %v, want 1", i, n)
				}
			}
			if d := maxDiff(batch[0], batch[3]); d > 1e-6 {
				t.Errorf("the same input in one batch differs by %g", d)
			}
			if d := maxDiff(batch[0], batch[1]); d < 1e-3 {
				t.Errorf("different inputs give the same vector (max difference %g)", d)
			}
			// Each alone equals its vector in the batch, and again the same.
			for i := range inputs {
				alone, err := embedAll(t, e, inputs[i:i+1], 0)
				if err != nil {
					t.Fatal(err)
				}
				if d := maxDiff(alone[0], batch[i]); d > 1e-4 {
					t.Errorf("input %d alone differs from the batch by %g", i, d)
				}
			}
			// More inputs than one decode takes.
			many := make([][]int, embedSeqs+3)
			for i := range many {
				many[i] = inputs[i%len(inputs)]
			}
			got, err := embedAll(t, e, many, 0)
			if err != nil {
				t.Fatal(err)
			}
			for i := range many {
				if d := maxDiff(got[i], batch[i%len(inputs)]); d > 1e-4 {
					t.Errorf("input %d of %d differs by %g", i, len(many), d)
				}
			}
			// dimensions: the first d, normalised again.
			short, err := embedAll(t, e, inputs[:1], 8)
			if err != nil {
				t.Fatal(err)
			}
			if len(short[0]) != 8 || math.Abs(norm(short[0])-1) > 1e-5 {
				t.Fatalf("dimensions 8: %d values of norm %v", len(short[0]), norm(short[0]))
			}
			scale := norm(batch[0][:8])
			for j, x := range short[0] {
				if math.Abs(float64(x)-float64(batch[0][j])/scale) > 1e-5 {
					t.Fatalf("dimensions 8: value %d is %v, want %v", j, x, float64(batch[0][j])/scale)
				}
			}
			if _, err := embedAll(t, e, inputs[:1], dim+1); !errors.Is(err, ErrDimensions) {
				t.Errorf("dimensions %d: %v, want ErrDimensions", dim+1, err)
			}
			long := make([]int, 65)
			for i := range long {
				long[i] = inputs[1][i%len(inputs[1])]
			}
			if _, err := embedAll(t, e, [][]int{inputs[0], long}, 0); !errors.Is(err, ErrInputLength) {
				t.Errorf("an input of 65 tokens in a context of 64: %v, want ErrInputLength", err)
			}
			if _, err := embedAll(t, e, [][]int{{e.model.NumVocab()}}, 0); !errors.Is(err, ErrBadToken) {
				t.Errorf("a token past the vocabulary: %v, want ErrBadToken", err)
			}
			// An input of exactly the context fits.
			if _, err := embedAll(t, e, [][]int{long[:64]}, 0); err != nil {
				t.Errorf("an input of 64 tokens in a context of 64: %v", err)
			}
		})
	}
}

// BenchmarkEmbed embeds 16 inputs of ~12 tokens, in one call (packed into
// one decode) and one at a time, and reports inputs per second: on
// stories260K (last token) and on the ~95M ggufgen Medium declaring mean
// pooling. On the shared 2-core build machine (load average ~11, so the
// absolute figures are several times slow): stories260K 481 inputs/s
// packed, 1,683 one at a time (a tiny model is bound by attention, and
// packed inputs attend over each other's cells, masked); Medium 2.5
// packed, 1.8 one at a time (the weights dominate, and one pass serves
// every input).
func BenchmarkEmbed(b *testing.B) {
	medium := ggufgen.Medium
	medium.Name = "ggufgen-medium-embed"
	medium.KV = map[string]any{"llama.pooling_type": uint32(1)}
	mediumPath, err := ggufgen.Cached(filepath.Join(os.TempDir(), "infer-bench-models"), medium)
	if err != nil {
		b.Fatal(err)
	}
	for _, m := range []struct{ name, path string }{
		{"stories260K", testenv.ModelPath(b)},
		{"medium-mean", mediumPath},
	} {
		e, err := LoadEngine(slog.New(slog.DiscardHandler), EngineConfig{ModelPath: m.path, Parallel: 1, Context: 512}, nil)
		if err != nil {
			b.Fatal(err)
		}
		texts := make([]string, 16)
		for i := range texts {
			texts[i] = fmt.Sprintf("Once upon a time there was a little cat number %d.", i)
		}
		inputs, err := e.EmbedTokenize(texts)
		if err != nil {
			b.Fatal(err)
		}
		discard := func(int, []byte) {}
		b.Run(m.name+"/batch16", func(b *testing.B) {
			for b.Loop() {
				if err := e.Embed(context.Background(), inputs, 0, discard); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N*len(inputs))/b.Elapsed().Seconds(), "inputs/s")
		})
		b.Run(m.name+"/one-by-one", func(b *testing.B) {
			for b.Loop() {
				for i := range inputs {
					if err := e.Embed(context.Background(), inputs[i:i+1], 0, discard); err != nil {
						b.Fatal(err)
					}
				}
			}
			b.ReportMetric(float64(b.N*len(inputs))/b.Elapsed().Seconds(), "inputs/s")
		})
		e.Close()
	}
}

// TestEmbedRefusesReranker: a model that pools by rank is an embedding
// model (no chat) that makes no embeddings.
func TestEmbedRefusesReranker(t *testing.T) {
	c := ggufgen.Small
	c.Name = "ggufgen-small-rank"
	c.KV = map[string]any{"llama.pooling_type": uint32(4)}
	path := filepath.Join(t.TempDir(), "rank.gguf")
	if err := ggufgen.WriteFile(path, c); err != nil {
		t.Fatal(err)
	}
	e := startEngine(t, EngineConfig{ModelPath: path, Parallel: 1, Context: 64})
	if !e.EmbeddingOnly() {
		t.Fatal("a reranker serves text")
	}
	if _, err := embedAll(t, e, [][]int{{1, 2}}, 0); !errors.Is(err, ErrNotEmbedding) {
		t.Fatalf("embeddings of a reranker: %v, want ErrNotEmbedding", err)
	}
}
