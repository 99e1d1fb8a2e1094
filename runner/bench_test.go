package runner

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/ollama/ollama/llama"

	"github.com/infer-run/infer/internal/ggufgen"
	"github.com/infer-run/infer/internal/testenv"
	"github.com/infer-run/infer/internal/wire"
)

// countSink counts tokens and signals the end of one sequence.
type countSink struct{ wg *sync.WaitGroup }

func (countSink) Start(int)                          {}
func (countSink) Deliver([]byte)                     {}
func (s countSink) Finish(string, wire.Usage, error) { s.wg.Done() }

// lpCountSink is a countSink that takes logprobs.
type lpCountSink struct{ countSink }

func (lpCountSink) Logprob(wire.TokenLogprob) {}

const benchTokens = 128

// runConcurrent submits n greedy requests at once and waits for all.
func runConcurrent(b *testing.B, e *Engine, n int) { runConcurrentLP(b, e, n, -1) }

// runConcurrentLP is runConcurrent with logprobs and top alternatives
// for each token; top -1: none asked.
func runConcurrentLP(b *testing.B, e *Engine, n, top int) {
	zero := float32(0)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		// Distinct prompts: no request reuses another's KV cells.
		prompt := fmt.Sprintf("Once upon a time, story number %d", i)
		req := Request{Prompt: prompt, MaxTokens: benchTokens, Sampling: wire.Sampling{Temperature: &zero}}
		var sink Sink = countSink{&wg}
		if top >= 0 {
			req.Logprobs, req.TopLogprobs = true, top
			sink = lpCountSink{countSink{&wg}}
		}
		if _, err := e.Submit(context.Background(), req, sink); err != nil {
			b.Fatal(err)
		}
	}
	wg.Wait()
}

func benchEngine(b *testing.B, cfg EngineConfig, concurrency int) {
	benchEngineLP(b, cfg, concurrency, -1)
}

func benchEngineLP(b *testing.B, cfg EngineConfig, concurrency, top int) {
	e, err := LoadEngine(slog.New(slog.DiscardHandler), cfg, nil)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { e.Run(ctx); close(done) }()
	defer func() { cancel(); <-done; e.Close() }()
	runConcurrentLP(b, e, concurrency, top) // warm up; lets background contexts load
	b.ResetTimer()
	start := time.Now()
	for range b.N {
		runConcurrentLP(b, e, concurrency, top)
	}
	b.ReportMetric(float64(b.N*concurrency*benchTokens)/time.Since(start).Seconds(), "tokens/s")
}

// BenchmarkEngine reports aggregate tokens/s at 1, 4 and 16 concurrent
// requests with the default arrangement for the model.
func BenchmarkEngine(b *testing.B) {
	model := testenv.ModelPath(b)
	for _, n := range []int{1, 4, 16} {
		b.Run(fmt.Sprintf("stories260K/concurrency=%d", n), func(b *testing.B) {
			benchEngine(b, EngineConfig{ModelPath: model, Parallel: n, Context: 512}, n)
		})
	}
}

// BenchmarkLogprobs is what per-token logprobs cost at 16 concurrent
// requests: each iteration runs 16 requests without logprobs and 16 with
// logprobs and top alternatives (0, 5, 20: the most OpenAI allows), in
// alternating order on one engine, so the two share whatever else the
// machine is doing; it reports both rates and the overhead. The cost per
// token is a log-softmax over the vocabulary and one pass to pick the
// alternatives; stories260K's vocabulary is 512 tokens, a Llama 3's 128k:
// BenchmarkLogprobStep times one token's work at that size.
func BenchmarkLogprobs(b *testing.B) {
	model := testenv.ModelPath(b)
	for _, top := range []int{0, 5, 20} {
		b.Run(fmt.Sprintf("stories260K/concurrency=16/top=%d", top), func(b *testing.B) {
			e, err := LoadEngine(slog.New(slog.DiscardHandler), EngineConfig{ModelPath: model, Parallel: 16, Context: 512}, nil)
			if err != nil {
				b.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() { e.Run(ctx); close(done) }()
			defer func() { cancel(); <-done; e.Close() }()
			runConcurrentLP(b, e, 16, top) // warm up; lets background contexts load
			var with, without time.Duration
			timed := func(top int) time.Duration {
				start := time.Now()
				runConcurrentLP(b, e, 16, top)
				return time.Since(start)
			}
			b.ResetTimer()
			for i := range b.N {
				if i%2 == 0 {
					without += timed(-1)
					with += timed(top)
				} else {
					with += timed(top)
					without += timed(-1)
				}
			}
			tokens := float64(b.N * 16 * benchTokens)
			b.ReportMetric(tokens/without.Seconds(), "tokens/s-plain")
			b.ReportMetric(tokens/with.Seconds(), "tokens/s-logprobs")
			b.ReportMetric(100*(with.Seconds()/without.Seconds()-1), "%overhead")
		})
	}
}

// BenchmarkLogprobStep is one token's logprob work on a Llama 3-sized
// vocabulary (128,256 logits) with 20 alternatives.
func BenchmarkLogprobStep(b *testing.B) {
	logits := make([]float32, 128256)
	for i := range logits {
		logits[i] = float32(i%977) / 100 // spread, with many ties
	}
	p := &logprober{top: MaxTopLogprobs}
	piece := func(int) string { return "x" }
	for b.Loop() {
		p.before(logits, piece)
	}
}

// BenchmarkEngineContexts compares ways to arrange 16 concurrent requests
// of a small model: one shared context up to one context per request.
func BenchmarkEngineContexts(b *testing.B) {
	model := testenv.ModelPath(b)
	for _, c := range []int{1, 2, 4, 8, 16} {
		b.Run(fmt.Sprintf("stories260K/contexts=%d", c), func(b *testing.B) {
			benchEngine(b, EngineConfig{ModelPath: model, Parallel: 16, Context: 512, Contexts: c}, 16)
		})
	}
}

// BenchmarkRawDecode is the floor to compare the engine with: one sequence,
// greedy, straight llama.cpp calls with no engine around them.
func BenchmarkRawDecode(b *testing.B) {
	rawDecode(b, testenv.ModelPath(b), 1, 1)
}

// mediumModel is a ~95M-parameter random-weight llama, written once per
// machine: big enough that the matrix products set the speed.
func mediumModel(b *testing.B) string {
	path, err := ggufgen.Cached(filepath.Join(os.TempDir(), "infer-bench-models"), ggufgen.Medium)
	if err != nil {
		b.Fatal(err)
	}
	return path
}

// BenchmarkMedium reports tokens/s of a ~95M-parameter model: raw llama.cpp
// loops with 1 and 16 sequences in one batch, and the engine at 1, 4 and 16
// concurrent requests. On this size batching pays: one pass over the
// weights serves every sequence.
func BenchmarkMedium(b *testing.B) {
	model := mediumModel(b)
	threads := runtime.NumCPU()
	for _, n := range []int{1, 16} {
		b.Run(fmt.Sprintf("raw/sequences=%d", n), func(b *testing.B) { rawDecode(b, model, n, threads) })
	}
	for _, n := range []int{1, 4, 16} {
		b.Run(fmt.Sprintf("engine/concurrency=%d", n), func(b *testing.B) {
			benchEngine(b, EngineConfig{ModelPath: model, Parallel: n, Context: 512, Threads: threads}, n)
		})
	}
}

// rawDecode decodes seqs greedy sequences of benchTokens tokens each, all in
// one batch per step, with straight llama.cpp calls.
func rawDecode(b *testing.B, path string, seqs, threads int) {
	llama.BackendInit()
	model, err := llama.LoadModelFromFile(path, llama.ModelParams{UseMmap: true})
	if err != nil {
		b.Fatal(err)
	}
	defer llama.FreeModel(model)
	lctx, err := llama.NewContextWithModel(model, llama.NewContextParams(512*seqs, 512, seqs, threads, false, ""))
	if err != nil {
		b.Fatal(err)
	}
	batch, err := llama.NewBatch(512, seqs, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer batch.Free()
	zero := float32(0)
	pos := make([]int, seqs)
	logits := make([]int, seqs) // batch index of each sequence's logits
	samplers := make([]*llama.SamplingContext, seqs)
	run := func() {
		lctx.KvCacheClear()
		batch.Clear()
		for s := range seqs {
			prompt, _ := model.Tokenize(fmt.Sprintf("Once upon a time, story number %d", s), true, true)
			if samplers[s], err = llama.NewSamplingContext(model, samplingParams(wire.Sampling{Temperature: &zero})); err != nil {
				b.Fatal(err)
			}
			for i, t := range prompt {
				batch.Add(t, nil, i, i == len(prompt)-1, s)
			}
			pos[s] = len(prompt)
			logits[s] = batch.NumTokens() - 1
		}
		for range benchTokens {
			if err := lctx.Decode(batch); err != nil {
				b.Fatal(err)
			}
			toks := make([]int, seqs)
			for s := range seqs {
				toks[s] = samplers[s].Sample(lctx, logits[s])
				samplers[s].Accept(toks[s], true)
			}
			batch.Clear()
			for s := range seqs {
				batch.Add(toks[s], nil, pos[s], true, s)
				logits[s] = s
				pos[s]++
			}
		}
	}
	run() // warm up: page the weights in
	b.ResetTimer()
	start := time.Now()
	for range b.N {
		run()
	}
	b.ReportMetric(float64(b.N*seqs*benchTokens)/time.Since(start).Seconds(), "tokens/s")
}

// BenchmarkN: four completions of a long prompt on one context, as one
// request of n=4 (the prompt decoded once, its KV cells shared) and as
// four requests at once (each decodes the prompt). Time to the last
// completion's end, 8 tokens each.
func BenchmarkN(b *testing.B) {
	e, err := LoadEngine(slog.Default(), EngineConfig{ModelPath: testenv.ModelPath(b), Parallel: 4, Contexts: 1, Context: 1024}, nil)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { e.Run(ctx); close(done) }()
	defer func() { cancel(); <-done; e.Close() }()
	zero := float32(0)
	prompt := ""
	for len(prompt) < 3000 {
		prompt += "Once upon a time, there was a little girl named Lily. She loved to play outside in the park with her friends. "
	}
	for _, shared := range []bool{true, false} {
		b.Run(fmt.Sprintf("shared=%v", shared), func(b *testing.B) {
			for i := range b.N {
				// A prompt no slot holds yet: the prefix cache must not help.
				req := Request{Prompt: fmt.Sprintf("%d %v. %s", i, shared, prompt), MaxTokens: 8, Sampling: wire.Sampling{Temperature: &zero}}
				var wg sync.WaitGroup
				wg.Add(4)
				sinks := []Sink{countSink{&wg}, countSink{&wg}, countSink{&wg}, countSink{&wg}}
				if shared {
					if _, err := e.SubmitN(context.Background(), req, sinks); err != nil {
						b.Fatal(err)
					}
				} else {
					for _, s := range sinks {
						if _, err := e.Submit(context.Background(), req, s); err != nil {
							b.Fatal(err)
						}
					}
				}
				wg.Wait()
			}
		})
	}
}
