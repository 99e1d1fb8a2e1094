package runner

import (
	"context"
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/infer-run/infer/internal/testenv"
	"github.com/infer-run/infer/internal/wire"
)

// generateN runs n completions of req and returns their texts.
func generateN(t *testing.T, e *Engine, req Request, n int) ([]string, []*collect) {
	t.Helper()
	cs := make([]*collect, n)
	sinks := make([]Sink, n)
	for i := range cs {
		cs[i] = newCollect()
		sinks[i] = cs[i]
	}
	if _, err := e.SubmitN(context.Background(), req, sinks); err != nil {
		t.Fatal(err)
	}
	texts := make([]string, n)
	for i, c := range cs {
		texts[i] = c.wait(t)
		if c.err != nil {
			t.Fatalf("completion %d: %v", i, c.err)
		}
	}
	return texts, cs
}

// TestEngineNSharesPrompt: n greedy completions in one context decode the
// prompt once (the others copy its KV cells and decode its last token
// each) and write exactly what one completion alone writes: a wrong copy
// (cells missing, at the wrong positions) would change the text.
func TestEngineNSharesPrompt(t *testing.T) {
	const prompt = "Once upon a time, there was a little girl named Lily. She loved to play outside"
	oneContext := "" // what the prompt writes alone with one context
	for _, contexts := range []int{1, 2} {
		// With two contexts and parallel 2 the first context has two
		// sequences, the second one (LoadEngine): three completions
		// must split.
		e := startEngine(t, EngineConfig{ModelPath: testenv.ModelPath(t), Parallel: 4 / contexts, Contexts: contexts, Context: 512})
		for deadline := time.Now().Add(time.Minute); len(e.decodersNow()) < contexts; time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%d contexts never loaded", contexts)
			}
		}
		tokens, err := e.Tokenize(prompt)
		if err != nil {
			t.Fatal(err)
		}
		req := Request{Prompt: prompt, MaxTokens: 30, Sampling: greedy()}
		texts, cs := generateN(t, e, req, 3)
		// One context: the prompt once and its last token twice more.
		// Two contexts of two sequences: two completions share the
		// prompt in one, the third decodes it again in the other.
		got, want := e.PromptTokensDecoded(), int64(len(tokens)+2)
		if contexts == 2 {
			want = int64(2*len(tokens) + 1)
		}
		if got != want {
			t.Errorf("contexts %d: 3 completions decoded %d prompt tokens; the prompt has %d, want %d", contexts, got, len(tokens), want)
		}
		// alone reuses the prompt's cells the completions left: it
		// must also be what one context writes, or cells that are wrong
		// in the same way for every completion would pass.
		alone := generate(t, e, req).wait(t)
		if contexts == 1 {
			oneContext = alone
		} else if alone != oneContext {
			t.Errorf("contexts %d: alone the prompt gives %q; with one context %q", contexts, alone, oneContext)
		}
		for i, text := range texts {
			if text != alone {
				t.Errorf("contexts %d: completion %d wrote %q; alone the prompt gives %q", contexts, i, text, alone)
			}
			if u := cs[i].usage; u.PromptTokens != len(tokens) || u.CompletionTokens != 30 {
				t.Errorf("contexts %d: completion %d usage %+v", contexts, i, u)
			}
		}
		if len(alone) < 20 {
			t.Errorf("contexts %d: greedy text %q is too short to compare", contexts, alone)
		}
	}
}

// TestEngineNBeyondParallel: completions beyond the engine's sequences
// wait for one (SubmitN does not), then decode the prompt themselves.
func TestEngineNBeyondParallel(t *testing.T) {
	e := startEngine(t, EngineConfig{ModelPath: testenv.ModelPath(t), Parallel: 1, Context: 256})
	req := Request{Prompt: "Once upon a time", MaxTokens: 12, Sampling: greedy()}
	texts, _ := generateN(t, e, req, 3)
	alone := generate(t, e, req).wait(t)
	for i, text := range texts {
		if text != alone {
			t.Errorf("completion %d wrote %q; alone %q", i, text, alone)
		}
	}
}

// TestEngineNSeeds: with a seed and temperature 1 the completions differ
// from each other, the first is what n=1 with that seed writes, and the
// same request writes the same completions again.
func TestEngineNSeeds(t *testing.T) {
	e := startEngine(t, EngineConfig{ModelPath: testenv.ModelPath(t), Parallel: 4, Contexts: 1, Context: 512})
	seed, one := int64(42), float32(1)
	req := Request{Prompt: "Once upon a time", MaxTokens: 25, Sampling: wire.Sampling{Seed: &seed, Temperature: &one}}
	first, _ := generateN(t, e, req, 3)
	again, _ := generateN(t, e, req, 3)
	for i := range first {
		if first[i] != again[i] {
			t.Errorf("completion %d: %q, then %q with the same seed", i, first[i], again[i])
		}
		for j := range i {
			if first[i] == first[j] {
				t.Errorf("completions %d and %d are the same with a seed: %q", j, i, first[i])
			}
		}
	}
	if alone := generate(t, e, req).wait(t); alone != first[0] {
		t.Errorf("n=1 with the seed wrote %q; completion 0 of n=3 %q", alone, first[0])
	}
}

// TestEngineNFollowerCache: a completion that copied its leader's prompt
// cells leaves its slot remembering exactly what those cells hold, so a
// later prompt reusing the slot gets what a fresh engine gives. The
// later prompt is the first prompt but its last token, then the
// follower's text: had the slot recorded the copied tokens only (not the
// last one it decoded itself), every token after them would be recorded
// a position early, this prompt would match it whole and reuse cells
// holding other tokens (measured: first logprob -0.73, fresh -0.40).
func TestEngineNFollowerCache(t *testing.T) {
	const prompt = "Once upon a time, there was a little girl named Lily. She loved to play outside"
	model := testenv.ModelPath(t)
	e := startEngine(t, EngineConfig{ModelPath: model, Parallel: 2, Contexts: 1, Context: 512})
	texts, _ := generateN(t, e, Request{Prompt: prompt, MaxTokens: 30, Sampling: greedy()}, 2)
	pt, err := e.Tokenize(prompt)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, tok := range pt[1 : len(pt)-1] { // no BOS, no last token
		b.WriteString(e.model.TokenToPiece(tok))
	}
	later := strings.TrimPrefix(b.String(), " ") + texts[1]
	lt, err := e.Tokenize(later)
	if err != nil {
		t.Fatal(err)
	}
	n := len(pt) - 1
	if len(lt) <= n+1 || !slices.Equal(lt[:n], pt[:n]) || lt[n] == pt[n] {
		t.Fatalf("the later prompt %q does not tokenize as the prompt's first %d tokens and then others: %v, prompt %v", later, n, lt, pt)
	}
	run := func(e *Engine) (string, []wire.TokenLogprob) {
		c := &lpCollect{collect: newCollect()}
		if _, err := e.Submit(context.Background(), Request{Prompt: later, MaxTokens: 20, Sampling: greedy(), Logprobs: true}, c); err != nil {
			t.Fatal(err)
		}
		text := c.wait(t)
		if c.err != nil {
			t.Fatal(c.err)
		}
		return text, c.lps
	}
	got, gotLps := run(e)
	fresh := startEngine(t, EngineConfig{ModelPath: model, Parallel: 1, Contexts: 1, Context: 512})
	want, wantLps := run(fresh)
	if got != want {
		t.Errorf("after n=2 the later prompt wrote %q; a fresh engine %q", got, want)
	}
	for i := range min(len(gotLps), len(wantLps)) {
		// Cells computed in other batches differ in rounding only.
		if d := math.Abs(float64(gotLps[i].Logprob - wantLps[i].Logprob)); d > 1e-3 {
			t.Errorf("token %d: logprob %v after n=2, %v on a fresh engine", i, gotLps[i].Logprob, wantLps[i].Logprob)
		}
	}
}
