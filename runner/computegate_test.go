package runner

import (
	"testing"
	"time"

	"github.com/infer-run/infer/internal/testenv"
)

// TestEngineContextsDecodeTogether: two contexts that decode prompts at
// the same moment each write what the prompt writes in an engine of one
// sequence. Without computeMu, llamafile's process-wide work counter let
// each skip rows of its matrix products (6 of 20 pairs of one prompt
// wrote other text); six prompts, each submitted twice at once, catch it
// in almost every run.
func TestEngineContextsDecodeTogether(t *testing.T) {
	prompts := []string{
		"Once upon a time, there was a little girl named Lily. She loved to play outside",
		"Tom had a red ball. He liked to throw it high in the sky and",
		"The sun was hot and the dog wanted to find some water to drink, so",
		"Mom said it was time for bed, but Ben was not tired. He wanted to",
		"In the big forest lived a wise old owl who knew every tree by name.",
		"Sue found a shiny key under the rug. She asked her brother what it could open,",
	}
	model := testenv.ModelPath(t)
	ref := startEngine(t, EngineConfig{ModelPath: model, Parallel: 1, Contexts: 1, Context: 512})
	want := make([]string, len(prompts))
	for i, p := range prompts {
		want[i] = generate(t, ref, Request{Prompt: p, MaxTokens: 30, Sampling: greedy()}).wait(t)
	}
	e := startEngine(t, EngineConfig{ModelPath: model, Parallel: 2, Contexts: 2, Context: 512})
	for deadline := time.Now().Add(time.Minute); len(e.decodersNow()) < 2; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the second context never loaded")
		}
	}
	for i, p := range prompts {
		// pick puts the two in different contexts (one sequence each).
		req := Request{Prompt: p, MaxTokens: 30, Sampling: greedy()}
		a, b := generate(t, e, req), generate(t, e, req)
		for j, got := range []string{a.wait(t), b.wait(t)} {
			if got != want[i] {
				t.Errorf("prompt %d, request %d of two at once wrote %q; alone it writes %q", i, j, got, want[i])
			}
		}
		if len(want[i]) < 20 {
			t.Errorf("prompt %d: greedy text %q is too short to compare", i, want[i])
		}
	}
}
