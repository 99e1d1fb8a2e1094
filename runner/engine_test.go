package runner

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/infer-run/infer/internal/ggufgen"
	"github.com/infer-run/infer/internal/testenv"
	"github.com/infer-run/infer/internal/wire"
)

// collect is a Sink that records one sequence's output.
type collect struct {
	mu     sync.Mutex
	text   strings.Builder
	steps  int
	reason string
	usage  wire.Usage
	err    error
	done   chan struct{}
}

func newCollect() *collect { return &collect{done: make(chan struct{})} }

func (c *collect) Start(int) {}

func (c *collect) Deliver(text []byte) {
	c.mu.Lock()
	c.text.Write(text)
	c.steps++
	c.mu.Unlock()
}

func (c *collect) Finish(reason string, u wire.Usage, err error) {
	c.mu.Lock()
	c.reason, c.usage, c.err = reason, u, err
	c.mu.Unlock()
	close(c.done)
}

func (c *collect) wait(t *testing.T) string {
	t.Helper()
	select {
	case <-c.done:
	case <-time.After(60 * time.Second):
		t.Fatal("sequence did not finish")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.text.String()
}

func loadTestEngine(t *testing.T, parallel, ctxLen int) *Engine {
	t.Helper()
	return startEngine(t, EngineConfig{ModelPath: testenv.ModelPath(t), Parallel: parallel, Context: ctxLen})
}

func startEngine(t *testing.T, cfg EngineConfig) *Engine {
	t.Helper()
	e, err := LoadEngine(slog.Default(), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { e.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done; e.Close() })
	return e
}

func greedy() wire.Sampling {
	zero := float32(0)
	return wire.Sampling{Temperature: &zero}
}

func generate(t *testing.T, e *Engine, req Request) *collect {
	t.Helper()
	c := newCollect()
	if _, err := e.Submit(context.Background(), req, c); err != nil {
		t.Fatal(err)
	}
	return c
}

func TestEngineGreedyStory(t *testing.T) {
	e := loadTestEngine(t, 4, 512)
	c := generate(t, e, Request{Prompt: "Once upon a time", MaxTokens: 40, Sampling: greedy()})
	text := c.wait(t)
	if c.err != nil {
		t.Fatal(c.err)
	}
	if c.reason != "length" || c.usage.CompletionTokens != 40 {
		t.Errorf("reason %q, completion tokens %d; want length after 40", c.reason, c.usage.CompletionTokens)
	}
	// stories260K writes children's stories: a greedy continuation is
	// made of ordinary English words.
	words := strings.Fields(text)
	if len(words) < 10 {
		t.Fatalf("too few words in %q", text)
	}
	common := 0
	for _, w := range words {
		switch strings.Trim(strings.ToLower(w), ".,!\"'") {
		case "the", "a", "was", "she", "he", "to", "and", "her", "his", "they", "there", "little", "girl", "boy", "named":
			common++
		}
	}
	if common < 3 {
		t.Errorf("output does not read like a story: %q", text)
	}
}

// TestEngineSyntheticModel runs a random-weight model from ggufgen, the
// kind the benchmarks use, through the engine: llama.cpp must accept what
// ggufgen writes, tokenizer included.
func TestEngineSyntheticModel(t *testing.T) {
	path := filepath.Join(t.TempDir(), "small.gguf")
	if err := ggufgen.WriteFile(path, ggufgen.Small); err != nil {
		t.Fatal(err)
	}
	for _, contexts := range []int{1, 2} {
		e := startEngine(t, EngineConfig{ModelPath: path, Parallel: 2, Context: 256, Contexts: contexts})
		if got := e.Info().ParameterCount; int64(got) != ggufgen.Small.Parameters() {
			t.Errorf("engine sees %d parameters, want %d", got, ggufgen.Small.Parameters())
		}
		cs := []*collect{
			generate(t, e, Request{Prompt: "Once upon a time", MaxTokens: 16, Sampling: greedy()}),
			generate(t, e, Request{Prompt: "zebra quartz", MaxTokens: 16, Sampling: greedy()}),
		}
		for _, c := range cs {
			c.wait(t)
			// Random weights may pick the end token early, but they must
			// decode at least one token and report it.
			if c.err != nil || c.usage.PromptTokens == 0 || c.usage.CompletionTokens == 0 {
				t.Errorf("contexts=%d: err %v, usage %+v", contexts, c.err, c.usage)
			}
		}
	}
}

func TestEngineConcurrentMatchesAlone(t *testing.T) {
	prompts := []string{"Once upon a time", "The cat sat", "Lily wanted to", "One day, a big dog"}
	alone := make([]string, len(prompts))
	{
		e := loadTestEngine(t, 1, 256)
		for i, p := range prompts {
			alone[i] = generate(t, e, Request{Prompt: p, MaxTokens: 30, Sampling: greedy()}).wait(t)
		}
	}
	e := loadTestEngine(t, 4, 256)
	cs := make([]*collect, len(prompts))
	for i, p := range prompts {
		cs[i] = generate(t, e, Request{Prompt: p, MaxTokens: 30, Sampling: greedy()})
	}
	for i, c := range cs {
		if got := c.wait(t); got != alone[i] {
			t.Errorf("prompt %q: batched output differs\nalone:   %q\nbatched: %q", prompts[i], alone[i], got)
		}
	}
}

// TestEngineSeedReproduces: any seed, -1 and seeds past 32 bits included,
// gives the same sampled text every time, and seeds 2^32 apart differ.
func TestEngineSeedReproduces(t *testing.T) {
	e := loadTestEngine(t, 2, 256)
	temp := float32(1)
	run := func(seed int64) string {
		req := Request{Prompt: "Once upon a time", MaxTokens: 30, Sampling: wire.Sampling{Temperature: &temp, Seed: &seed}}
		return generate(t, e, req).wait(t)
	}
	out := map[int64]string{}
	for _, seed := range []int64{42, -1, 42 + 1<<32, math.MinInt64} {
		a, b := run(seed), run(seed)
		if a != b {
			t.Errorf("seed %d, different output:\n%q\n%q", seed, a, b)
		}
		out[seed] = a
	}
	if out[42] == out[42+1<<32] {
		t.Errorf("seeds 42 and 42+2^32 gave the same text %q", out[42])
	}
}

func TestSamplerSeed(t *testing.T) {
	seeds := []int64{0, 1, -1, 42, 42 + 1<<32, 1 << 32, 0xFFFFFFFF, math.MaxInt64, math.MinInt64,
		1643668601, // mixes to randomSeed
	}
	seen := map[uint32]int64{}
	for _, s := range seeds {
		v := samplerSeed(s)
		if v == randomSeed {
			t.Errorf("seed %d maps to llama.cpp's random seed", s)
		}
		if v != samplerSeed(s) {
			t.Errorf("seed %d maps to two values", s)
		}
		if o, ok := seen[v]; ok {
			t.Errorf("seeds %d and %d both map to %#x", o, s, v)
		}
		seen[v] = s
	}
}

func TestEngineStopString(t *testing.T) {
	e := loadTestEngine(t, 1, 256)
	full := generate(t, e, Request{Prompt: "Once upon a time", MaxTokens: 40, Sampling: greedy()}).wait(t)
	words := strings.Fields(full)
	if len(words) < 6 {
		t.Fatalf("too short: %q", full)
	}
	stop := words[4]
	c := generate(t, e, Request{Prompt: "Once upon a time", MaxTokens: 40, Stop: []string{stop}, Sampling: greedy()})
	got := c.wait(t)
	if c.reason != "stop" {
		t.Errorf("finish reason %q, want stop", c.reason)
	}
	if want := full[:strings.Index(full, stop)]; got != want {
		t.Errorf("stop %q: got %q, want %q", stop, got, want)
	}
	if strings.Contains(got, stop) {
		t.Errorf("output contains the stop string: %q", got)
	}
}

func TestEngineContextOverflow(t *testing.T) {
	e := loadTestEngine(t, 1, 64)
	_, err := e.Submit(context.Background(), Request{Prompt: strings.Repeat("Once upon a time ", 40)}, newCollect())
	if !errors.Is(err, ErrContextLength) {
		t.Fatalf("got %v, want ErrContextLength", err)
	}
}

// TestEngineMaxTokensBeyondContext checks that a max_tokens the context
// cannot hold next to the prompt is refused before anything runs, and
// that one that just fits is generated to its end.
func TestEngineMaxTokensBeyondContext(t *testing.T) {
	e := loadTestEngine(t, 1, 64)
	prompt, err := e.Tokenize("Once upon a time")
	if err != nil {
		t.Fatal(err)
	}
	left := 64 - len(prompt)
	_, err = e.Submit(context.Background(), Request{Prompt: "Once upon a time", MaxTokens: left + 1, Sampling: greedy()}, newCollect())
	if !errors.Is(err, ErrMaxTokens) || !strings.Contains(err.Error(), fmt.Sprintf("leaves %d", left)) {
		t.Fatalf("max_tokens %d with %d left: %v, want ErrMaxTokens saying %d are left", left+1, left, err, left)
	}
	c := generate(t, e, Request{Prompt: "Once upon a time", MaxTokens: left, Sampling: greedy()})
	c.wait(t)
	if c.reason != "length" && c.reason != "stop" {
		t.Errorf("max_tokens %d (all that is left): finish reason %q", left, c.reason)
	}
}

func TestEngineCancelFreesSlot(t *testing.T) {
	e := loadTestEngine(t, 1, 2048)
	ctx, cancel := context.WithCancel(context.Background())
	long := newCollect()
	if _, err := e.Submit(ctx, Request{Prompt: "Once upon a time", Sampling: greedy()}, long); err != nil {
		t.Fatal(err)
	}
	cancel()
	long.wait(t)
	if long.reason != "cancelled" {
		t.Errorf("finish reason %q, want cancelled", long.reason)
	}
	// The only slot is free again: the next request runs to completion.
	next := generate(t, e, Request{Prompt: "The cat", MaxTokens: 5, Sampling: greedy()})
	next.wait(t)
	if next.reason != "length" {
		t.Errorf("next request finished with %q", next.reason)
	}
}

// TestEngineFirstsSettle: the count of sequences waiting for their first
// token, which makes other contexts yield, returns to zero however
// sequences end: finished, cancelled before or after their first token,
// or refused at submission. A count left above zero would slow every
// later step by the yield.
func TestEngineFirstsSettle(t *testing.T) {
	e := startEngine(t, EngineConfig{ModelPath: testenv.ModelPath(t), Parallel: 4, Contexts: 2, Context: 256})
	var all []*collect
	all = append(all, generate(t, e, Request{Prompt: "Once upon a time", MaxTokens: 20, Sampling: greedy()}))
	all = append(all, generate(t, e, Request{Prompt: "The cat", MaxTokens: 1, Sampling: greedy()}))

	cancelled, cancel := context.WithCancel(context.Background())
	cancel() // before it is even admitted
	c := newCollect()
	if _, err := e.Submit(cancelled, Request{Prompt: "A dog", MaxTokens: 20}, c); err == nil {
		all = append(all, c) // queued before the cancellation was seen
	}
	late, cancelLate := context.WithCancel(context.Background())
	lc := newCollect()
	if _, err := e.Submit(late, Request{Prompt: "One day", Sampling: greedy()}, lc); err != nil {
		t.Fatal(err)
	}
	all = append(all, lc)
	if _, err := e.Submit(context.Background(), Request{Prompt: strings.Repeat("Once upon a time ", 200)}, newCollect()); !errors.Is(err, ErrContextLength) {
		t.Fatalf("long prompt: %v, want ErrContextLength", err)
	}
	cancelLate()
	for _, c := range all {
		c.wait(t)
	}
	if n := e.firsts.Load(); n != 0 {
		t.Errorf("%d sequences still counted as waiting for a first token", n)
	}
}
