package runner

import (
	"context"
	"errors"
	"path/filepath"
	"slices"
	"testing"

	"github.com/infer-run/infer/internal/ggufgen"
	"github.com/infer-run/infer/internal/testenv"
)

// TestFIMTokens: a random-weight model whose GGUF names FIM tokens gets
// the prefix-suffix-middle layout; the test model, which has none, is
// refused with ErrNoFIM.
func TestFIMTokens(t *testing.T) {
	const pre, suf, mid = 300, 301, 302
	c := ggufgen.Small
	c.KV = map[string]any{
		"tokenizer.ggml.fim_pre_token_id": uint32(pre),
		"tokenizer.ggml.fim_suf_token_id": uint32(suf),
		"tokenizer.ggml.fim_mid_token_id": uint32(mid),
	}
	path := filepath.Join(t.TempDir(), "fim.gguf")
	if err := ggufgen.WriteFile(path, c); err != nil {
		t.Fatal(err)
	}
	e := startEngine(t, EngineConfig{ModelPath: path, Parallel: 1, Context: 256})
	if got, want := vocabSize(e.model), e.model.NumVocab(); got != want {
		t.Fatalf("the C vocabulary says %d tokens, the model %d: llama.Model's layout changed", got, want)
	}
	prefix, suffix := "def add(a, b):\n    return ", "\n\nprint(add(1, 2))\n"
	got, err := e.TokenizeFIM(prefix, suffix)
	if err != nil {
		t.Fatal(err)
	}
	p, _ := e.model.Tokenize(prefix, false, false)
	s, _ := e.model.Tokenize(suffix, false, false)
	var want []int
	if e.model.AddBOSToken() {
		want = append(want, 1) // ggufgen's <s>
	}
	want = append(want, pre)
	want = append(want, p...)
	want = append(want, suf)
	want = append(want, s...)
	want = append(want, mid)
	if !slices.Equal(got, want) {
		t.Errorf("FIM prompt tokens %v; want %v", got, want)
	}
	// And it generates from it.
	c2 := generate(t, e, Request{Prompt: prefix, Suffix: suffix, MaxTokens: 5, Sampling: greedy()})
	c2.wait(t)
	if c2.err != nil || c2.usage.PromptTokens != len(want) {
		t.Errorf("FIM request: %v, usage %+v; want %d prompt tokens", c2.err, c2.usage, len(want))
	}

	stories := loadTestEngine(t, 1, 256)
	if _, err := stories.Submit(context.Background(), Request{Prompt: "Once", Suffix: "The end."}, newCollect()); !errors.Is(err, ErrNoFIM) {
		t.Errorf("suffix on a model without FIM tokens: %v; want ErrNoFIM", err)
	}
	_ = testenv.ModelPath
}
