package runner

import (
	"context"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/infer-run/infer/internal/testenv"
)

func TestInitialCells(t *testing.T) {
	for _, c := range []struct{ max, configured, want int }{
		{16 * 2048, 0, kvInitialCells}, // the default, whatever the settings
		{512, 0, 512},                  // never more than can be used
		{16 * 2048, -1, 16 * 2048},     // all up front
		{16 * 2048, 300, 512},          // aligned
		{16 * 2048, 1 << 20, 16 * 2048},
	} {
		if got := initialCells(c.max, c.configured); got != c.want {
			t.Errorf("initialCells(%d, %d) = %d, want %d", c.max, c.configured, got, c.want)
		}
	}
}

func TestGrowTarget(t *testing.T) {
	for _, c := range []struct{ cells, max, need, want int }{
		{1024, 32768, 0, 0},
		{1024, 32768, 768, 0},        // three quarters: not yet
		{1024, 32768, 769, 2048},     // past it: double
		{1024, 32768, 3000, 4608},    // a long prompt: need and half again
		{1024, 1024, 5000, 0},        // at the most already
		{16384, 32768, 30000, 32768}, // capped
		{256, 512, 200, 512},
	} {
		if got := growTarget(c.cells, c.max, c.need); got != c.want {
			t.Errorf("growTarget(%d, %d, %d) = %d, want %d", c.cells, c.max, c.need, got, c.want)
		}
	}
}

func TestKVNeed(t *testing.T) {
	slots := []slot{
		{cached: make([]int, 10)}, // idle, cached prefix
		{seq: &sequence{prompt: make([]int, 50), prefilled: 20, nPast: 20}},              // prefilling
		{seq: &sequence{prompt: make([]int, 5), prefilled: 5, nPast: 9, decoding: true}}, // decoding
		{},
	}
	used, soon := kvNeed(slots)
	if used != 10+20+9 || soon != 30+kvLookahead {
		t.Errorf("kvNeed = %d, %d; want %d, %d", used, soon, 39, 30+kvLookahead)
	}
}

// TestKVCacheGrows: sequences that outgrow a small pool move into larger
// ones while decoding, and their greedy text is the text they decode in a
// pool allocated whole up front.
func TestKVCacheGrows(t *testing.T) {
	prompts := []string{"Once upon a time", "The cat sat", "Lily wanted to", "One day, a big dog"}
	run := func(initial int) ([]string, int) {
		e := startEngine(t, EngineConfig{ModelPath: testenv.ModelPath(t), Parallel: 4, Context: 512, Contexts: 1, InitialKV: initial})
		cs := make([]*collect, len(prompts))
		for i, p := range prompts {
			cs[i] = generate(t, e, Request{Prompt: p, MaxTokens: 300, Sampling: greedy()})
		}
		out := make([]string, len(prompts))
		for i, c := range cs {
			out[i] = c.wait(t)
			if c.err != nil {
				t.Fatalf("initial %d, prompt %q: %v", initial, prompts[i], c.err)
			}
		}
		return out, e.KVCells()
	}
	full, fullCells := run(-1)
	grown, grownCells := run(256)
	t.Logf("pool: %d cells grown from 256, %d allocated whole; lengths %d %d %d %d", grownCells, fullCells, len(grown[0]), len(grown[1]), len(grown[2]), len(grown[3]))
	if fullCells != 4*512 {
		t.Errorf("whole pool: %d cells, want %d", fullCells, 4*512)
	}
	if grownCells <= 256 {
		t.Errorf("the pool did not grow: %d cells", grownCells)
	}
	for i := range prompts {
		if grown[i] != full[i] {
			t.Errorf("prompt %q: text differs after growing\nwhole pool: %q\ngrown:      %q", prompts[i], full[i], grown[i])
		}
	}
}

// TestKVCacheFollowsWork: a runner set up for 16 sequences of 2,048
// tokens that holds one short request allocates the initial pool, not
// 16 × 2,048 cells.
func TestKVCacheFollowsWork(t *testing.T) {
	e := startEngine(t, EngineConfig{ModelPath: testenv.ModelPath(t), Parallel: 16, Context: 2048, Contexts: 1})
	c := generate(t, e, Request{Prompt: "Once upon a time", MaxTokens: 20, Sampling: greedy()})
	c.wait(t)
	if got := e.KVCells(); got != kvInitialCells {
		t.Errorf("KV cells %d, want %d", got, kvInitialCells)
	}
}

// TestContextLayout guards cContext: the C context read out of a
// *llama.Context must be the one created with the asked-for cells.
func TestContextLayout(t *testing.T) {
	e := startEngine(t, EngineConfig{ModelPath: testenv.ModelPath(t), Parallel: 2, Context: 512, Contexts: 1, InitialKV: 768})
	d := e.decoders[0]
	if got := contextCells(d.lctx); got != 768 {
		t.Fatal(fmt.Sprintf("llama_n_ctx of the context read through cContext = %d, want 768", got))
	}
}

// TestBurstBeforeOtherContexts: a small model spreads its sequences over
// several contexts, created after the first in the background. A burst
// that arrives before they exist is taken by the first context at once,
// not queued for contexts still loading.
func TestBurstBeforeOtherContexts(t *testing.T) {
	e, err := LoadEngine(slog.Default(), EngineConfig{ModelPath: testenv.ModelPath(t), Parallel: 8, Contexts: 4, Context: 256}, nil)
	if err != nil {
		t.Fatal(err)
	}
	cs := make([]*collect, 8)
	accepted := make(chan error, 1)
	go func() {
		// Before Run: only the first context exists.
		for i := range cs {
			cs[i] = newCollect()
			if _, err := e.Submit(context.Background(), Request{Prompt: "Once upon a time", MaxTokens: 8, Sampling: greedy()}, cs[i]); err != nil {
				accepted <- err
				return
			}
		}
		accepted <- nil
	}()
	select {
	case err := <-accepted:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the burst waited for contexts not yet created")
	}
	if n := e.decoders[0].load.Load(); n != 8 {
		t.Errorf("first context carries %d sequences, want all 8", n)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { e.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done; e.Close() })
	for _, c := range cs {
		c.wait(t)
		if c.err != nil || c.usage.CompletionTokens == 0 {
			t.Errorf("err %v, usage %+v", c.err, c.usage)
		}
	}
	// Once every context is up, new work spreads by share again.
	deadline := time.Now().Add(30 * time.Second)
	for len(e.decodersNow()) < 4 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	for range 4 {
		e.pick()
	}
	for i, d := range e.decodersNow() {
		if got := d.load.Load(); got != 1 {
			t.Errorf("context %d carries %d of 4 new sequences, want 1", i, got)
		}
	}
	for _, d := range e.decodersNow() {
		d.load.Store(0) // the picks above submitted nothing
	}
}
