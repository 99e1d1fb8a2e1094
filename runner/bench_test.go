package runner

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/ollama/ollama/llama"

	"github.com/infer-run/infer/internal/testenv"
	"github.com/infer-run/infer/internal/wire"
)

// countSink counts tokens and signals the end of one sequence.
type countSink struct{ wg *sync.WaitGroup }

func (countSink) Start(int)                          {}
func (countSink) Deliver([]byte)                     {}
func (s countSink) Finish(string, wire.Usage, error) { s.wg.Done() }

const benchTokens = 128

// runConcurrent submits n greedy requests at once and waits for all.
func runConcurrent(b *testing.B, e *Engine, n int) {
	zero := float32(0)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		// Distinct prompts: no request reuses another's KV cells.
		prompt := fmt.Sprintf("Once upon a time, story number %d", i)
		if _, err := e.Submit(context.Background(), Request{Prompt: prompt, MaxTokens: benchTokens, Sampling: wire.Sampling{Temperature: &zero}}, countSink{&wg}); err != nil {
			b.Fatal(err)
		}
	}
	wg.Wait()
}

func benchEngine(b *testing.B, cfg EngineConfig, concurrency int) {
	e, err := LoadEngine(slog.New(slog.DiscardHandler), cfg, nil)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { e.Run(ctx); close(done) }()
	defer func() { cancel(); <-done; e.Close() }()
	runConcurrent(b, e, concurrency) // warm up; lets background contexts load
	b.ResetTimer()
	start := time.Now()
	for range b.N {
		runConcurrent(b, e, concurrency)
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
	llama.BackendInit()
	model, err := llama.LoadModelFromFile(testenv.ModelPath(b), llama.ModelParams{UseMmap: true})
	if err != nil {
		b.Fatal(err)
	}
	defer llama.FreeModel(model)
	lctx, err := llama.NewContextWithModel(model, llama.NewContextParams(512, 512, 1, 1, false, ""))
	if err != nil {
		b.Fatal(err)
	}
	batch, err := llama.NewBatch(512, 1, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer batch.Free()
	zero := float32(0)
	start := time.Now()
	for range b.N {
		prompt, _ := model.Tokenize("Once upon a time, story number 0", true, true)
		sampler, err := llama.NewSamplingContext(model, samplingParams(wire.Sampling{Temperature: &zero}))
		if err != nil {
			b.Fatal(err)
		}
		lctx.KvCacheSeqRm(0, 0, -1)
		batch.Clear()
		for i, t := range prompt {
			batch.Add(t, nil, i, i == len(prompt)-1, 0)
		}
		pos := len(prompt)
		for range benchTokens {
			if err := lctx.Decode(batch); err != nil {
				b.Fatal(err)
			}
			tok := sampler.Sample(lctx, batch.NumTokens()-1)
			sampler.Accept(tok, true)
			batch.Clear()
			batch.Add(tok, nil, pos, true, 0)
			pos++
		}
	}
	b.ReportMetric(float64(b.N*benchTokens)/time.Since(start).Seconds(), "tokens/s")
}
