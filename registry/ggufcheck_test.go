package registry

import (
	"bytes"
	"errors"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/infer-run/infer/internal/ggufgen"
	"github.com/infer-run/infer/internal/testenv"
)

// hostileModel writes ggufgen.Small with the given lies, as a well-formed
// GGUF file: it passes the header check and lies only about the model.
func hostileModel(t testing.TB, kv map[string]any, shapes map[string][]uint64) []byte {
	t.Helper()
	c := ggufgen.Small
	c.F32 = true
	c.KV, c.Shapes = kv, shapes
	var b bytes.Buffer
	if err := ggufgen.Write(&b, c); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// hostileModels are files llama.cpp would crash on, or fail to load, and
// that the header check alone accepted. Small is 64 wide, 2 layers, 4
// heads, 512 tokens.
func hostileModels(t testing.TB) []badInput {
	nan := float32(math.NaN())
	kv := func(k string, v any) []byte { return hostileModel(t, map[string]any{k: v}, nil) }
	shape := func(name string, s ...uint64) []byte { return hostileModel(t, nil, map[string][]uint64{name: s}) }
	return []badInput{
		{"NaN rms epsilon", kv("llama.attention.layer_norm_rms_epsilon", nan), "llama.attention.layer_norm_rms_epsilon is NaN"},
		{"infinite rms epsilon", kv("llama.attention.layer_norm_rms_epsilon", float32(math.Inf(1))), "layer_norm_rms_epsilon is +Inf"},
		{"negative rms epsilon", kv("llama.attention.layer_norm_rms_epsilon", float32(-1e-5)), "layer_norm_rms_epsilon is -1e-05"},
		{"zero rms epsilon", kv("llama.attention.layer_norm_rms_epsilon", float32(0)), "layer_norm_rms_epsilon is 0"},
		{"NaN layer norm epsilon", kv("llama.attention.layer_norm_epsilon", nan), "layer_norm_epsilon is NaN"},
		{"NaN rope base", kv("llama.rope.freq_base", nan), "llama.rope.freq_base is NaN; hyperparameters must be finite"},
		{"infinite rope scale", kv("llama.rope.scaling.factor", float32(math.Inf(-1))), "llama.rope.scaling.factor is -Inf"},
		{"zero heads", kv("llama.attention.head_count", uint32(0)), "llama.attention.head_count is 0"},
		{"absurd heads", kv("llama.attention.head_count", uint32(1<<30)), "head_count is 1073741824"},
		{"zero kv heads", kv("llama.attention.head_count_kv", uint32(0)), "head_count_kv is 0"},
		{"heads not a multiple of kv heads", kv("llama.attention.head_count_kv", uint32(3)), "multiple of the key-value heads"},
		{"embedding not divisible by heads", hostileModel(t, map[string]any{"llama.attention.head_count": uint32(3), "llama.attention.head_count_kv": uint32(3)}, nil), "not divisible by its 3 attention heads"},
		{"absurd per-layer heads", kv("llama.attention.head_count", []int32{4, -1}), "gives layer 1 -1 heads"},
		{"zero context", kv("llama.context_length", uint32(0)), "llama.context_length is 0"},
		{"absurd context", kv("llama.context_length", uint64(1)<<40), "llama.context_length is 1099511627776"},
		{"zero embedding", kv("llama.embedding_length", uint32(0)), "llama.embedding_length is 0"},
		{"absurd block count", kv("llama.block_count", uint32(100000)), "llama.block_count is 100000"},
		{"fractional block count", kv("llama.block_count", float32(1.5)), "whole number"},
		{"more experts used than exist", hostileModel(t, map[string]any{"llama.expert_count": uint32(4), "llama.expert_used_count": uint32(8)}, nil), "uses 8 of its 4 experts"},
		{"unknown architecture", hostileModel(t, map[string]any{"general.architecture": "llama9000"}, nil), `architecture "llama9000" is not one`},
		{"token_embd rows are not the vocabulary", shape("token_embd.weight", 64, 500), `"token_embd.weight" has 500 rows but the vocabulary (tokenizer.ggml.tokens) has 512 tokens`},
		{"token_embd width is not the embedding", shape("token_embd.weight", 32, 512), `"token_embd.weight" is 32 wide but the model's embedding length is 64`},
		{"norm width is not the embedding", shape("blk.1.attn_norm.weight", 32), `"blk.1.attn_norm.weight" is 32 wide`},
		{"output norm width", shape("output_norm.weight", 128), `"output_norm.weight" is 128 wide`},
		{"attention input width", shape("blk.0.attn_q.weight", 32, 64), `"blk.0.attn_q.weight" is 32 wide`},
		{"ffn output rows", shape("blk.0.ffn_down.weight", 128, 32), `"blk.0.ffn_down.weight" has 32 rows`},
		{"tensors past the block count", kv("llama.block_count", uint32(1)), `"blk.1.`},
		{"a block without tensors", kv("llama.block_count", uint32(3)), "no tensors for layer 2"},
		{"empty vocabulary", kv("tokenizer.ggml.tokens", []string{}), "vocabulary (tokenizer.ggml.tokens) is empty"},
	}
}

func TestInspectRefusesHostileModels(t *testing.T) {
	for _, tc := range hostileModels(t) {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := Inspect(bytes.NewReader(tc.data))
			if !errors.Is(err, ErrInvalidWeights) {
				t.Fatalf("err = %v, want ErrInvalidWeights", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %q, want it to mention %q", err, tc.want)
			}
		})
	}
}

// The check must not refuse real models: the two test models, ggufgen's
// own, and the per-layer and recurrent forms of head counts real files use.
func TestInspectAcceptsRealModels(t *testing.T) {
	files := map[string][]byte{
		"stories260K":          readModel(t),
		"ggufgen.Small":        hostileModel(t, nil, nil),
		"per-layer heads":      hostileModel(t, map[string]any{"llama.attention.head_count": []int32{4, 0}}, nil),
		"explicit head size":   hostileModel(t, map[string]any{"llama.attention.head_count": uint32(3), "llama.attention.head_count_kv": uint32(1), "llama.attention.key_length": uint32(16)}, nil),
		"grouped-query heads":  hostileModel(t, map[string]any{"llama.attention.head_count_kv": uint32(2)}, nil),
		"no optional metadata": hostileModel(t, map[string]any{"llama.context_length": nil, "llama.attention.layer_norm_rms_epsilon": nil}, nil),
	}
	tiny := filepath.Join(filepath.Dir(testenv.ModelPath(t)), "llama3-tiny.gguf")
	if b, err := os.ReadFile(tiny); err == nil {
		files["llama3-tiny"] = b
	} else {
		t.Logf("skipping llama3-tiny: %v", err)
	}
	for name, b := range files {
		if _, _, err := Inspect(bytes.NewReader(b)); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	// A recurrent model says it has no attention heads.
	m := &headerMeta{nums: map[string]float64{"mamba.attention.head_count": 0, "mamba.embedding_length": 64}}
	if err := checkModel("mamba", m); err != nil {
		t.Errorf("mamba with head_count 0: %v", err)
	}
}

// The architecture list must be llama.cpp's, the one the runner links.
func TestKnownArchitecturesMatchLlamaCpp(t *testing.T) {
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/ollama/ollama").Output()
	if err != nil {
		t.Skipf("finding the ollama module: %v", err)
	}
	src, err := os.ReadFile(filepath.Join(strings.TrimSpace(string(out)), "llama/llama.cpp/src/llama-arch.cpp"))
	if err != nil {
		t.Fatal(err)
	}
	start := bytes.Index(src, []byte("LLM_ARCH_NAMES"))
	end := bytes.Index(src[start:], []byte("};"))
	if start < 0 || end < 0 {
		t.Fatal("LLM_ARCH_NAMES not found in llama-arch.cpp")
	}
	var names []string
	for _, m := range regexp.MustCompile(`\{\s*LLM_ARCH_\w+,\s*"([^"]+)"`).FindAllSubmatch(src[start:start+end], -1) {
		if n := string(m[1]); n != "__missing__" && n != "unknown" && n != "(unknown)" {
			names = append(names, n)
		}
	}
	slices.Sort(names)
	known := slices.Sorted(slices.Values(knownArchitectures))
	if !slices.Equal(names, known) {
		t.Errorf("llama.cpp knows %q\ninfer's list is %q", names, known)
	}
}

// FuzzCheckModel: whatever the hyperparameters, the model check never
// panics, and what it accepts is safe for llama.cpp's graph.
func FuzzCheckModel(f *testing.F) {
	f.Add(1e-5, 64.0, 2.0, 4.0, 4.0, 512.0, 512.0, 64.0)
	f.Add(math.NaN(), 64.0, 2.0, 0.0, 4.0, 0.0, 512.0, 32.0)
	f.Add(1e-6, 4096.0, 32.0, 32.0, 8.0, 131072.0, 128256.0, 4096.0)
	f.Fuzz(func(t *testing.T, eps, embd, blocks, heads, kvHeads, ctx, vocab, width float64) {
		m := &headerMeta{
			nums: map[string]float64{
				"llama.attention.layer_norm_rms_epsilon": eps,
				"llama.embedding_length":                 embd,
				"llama.block_count":                      blocks,
				"llama.attention.head_count":             heads,
				"llama.attention.head_count_kv":          kvHeads,
				"llama.context_length":                   ctx,
			},
			arrays: map[string]arrayMeta{"tokenizer.ggml.tokens": {n: uint64(max(0, min(vocab, 1<<22)))}},
			shapes: map[string][]uint64{"token_embd.weight": {uint64(max(0, min(width, 1<<20))), uint64(max(0, min(vocab, 1<<22)))}, "blk.0.attn_norm.weight": {uint64(max(0, min(width, 1<<20)))}},
		}
		err := checkModel("llama", m)
		if err != nil {
			if !errors.Is(err, ErrInvalidWeights) {
				t.Fatalf("error without ErrInvalidWeights: %v", err)
			}
			return
		}
		switch {
		case !(eps > 0 && eps < 1):
			t.Fatalf("accepted epsilon %v", eps)
		case heads < 1 || kvHeads < 1 || math.Mod(heads, kvHeads) != 0 || math.Mod(embd, heads) != 0:
			t.Fatalf("accepted %v heads, %v kv heads, embedding %v", heads, kvHeads, embd)
		case ctx < 1 || ctx > maxTrainedContext || blocks < 1 || blocks > maxBlocks:
			t.Fatalf("accepted context %v, %v blocks", ctx, blocks)
		case blocks != 1:
			t.Fatalf("accepted %v blocks with tensors for layer 0 only", blocks)
		case uint64(width) != uint64(embd) || vocab < 1:
			t.Fatalf("accepted width %v for embedding %v, vocabulary %v", width, embd, vocab)
		}
	})
}
