package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/infer-run/infer/internal/wire"
	"github.com/infer-run/infer/runner"
)

type coldStart struct {
	// FetchMS is the runner cache's hit path (runner.Cache.Fetch on a
	// file already in the host cache: a stat, no hashing). The file was
	// just written, so its pages are in the page cache: this is a warm
	// host, not a cold disk.
	FetchMS float64 `json:"fetch_ms"`
	// LoadMS is LoadEngine's start until llama.cpp reports the weights
	// loaded (progress 1.0): reading the file and uploading it to the GPU.
	LoadMS float64 `json:"load_ms"`
	// ContextMS is from there until LoadEngine returns: the llama context,
	// its first KV cells and compute buffers.
	ContextMS float64 `json:"context_ms"`
	// FirstDecodeMS is Submit of a first short prompt until its first
	// token: prompt decode, first kernels, cuBLAS set-up.
	FirstDecodeMS float64 `json:"first_decode_ms"`
	TotalMS       float64 `json:"total_ms"`
}

type streamRun struct {
	Streams int `json:"streams"`
	// Tokens is the output tokens actually produced (a random-weight
	// model may end a sequence early with its end-of-sequence token).
	Tokens    int     `json:"tokens"`
	Seconds   float64 `json:"seconds"`
	TokensSec float64 `json:"tokens_per_s"` // all streams together
	// PerStreamTokensSec is the median stream's decode rate after its
	// first token.
	PerStreamTokensSec float64 `json:"per_stream_tokens_per_s"`
	// TPOT is the time between consecutive tokens of one stream, pooled
	// over every stream of the run.
	TPOTP50MS float64 `json:"tpot_p50_ms"`
	TPOTP99MS float64 `json:"tpot_p99_ms"`
	// TTFTP50MS is submit to first token, median over the streams.
	TTFTP50MS float64 `json:"ttft_p50_ms"`
	Errors    int     `json:"errors,omitempty"`
}

type pairResult struct {
	// AloneTokensSec is one engine at one stream with nothing beside it;
	// EachTokensSec is each of two engines (separate model instances and
	// contexts in one process) at one stream each, at the same time.
	AloneTokensSec float64   `json:"alone_tokens_per_s"`
	EachTokensSec  []float64 `json:"each_tokens_per_s"`
	// WorstShare is the slower one's rate over the alone rate: the target
	// is ≥ 0.8.
	WorstShare float64  `json:"worst_share"`
	GPU        *gpuInfo `json:"gpu,omitempty"`
}

type modelResult struct {
	Name        string `json:"name"`
	Parameters  int64  `json:"parameters"`
	WeightBytes int64  `json:"weight_bytes"`
	// BoundTokensSec is one stream's ceiling: the weights read once per
	// token at the GPU's memory bandwidth (0 on the CPU).
	BoundTokensSec float64     `json:"bound_tokens_per_s,omitempty"`
	Cold           coldStart   `json:"cold_start"`
	Runs           []streamRun `json:"runs"`
	Pair           *pairResult `json:"pair,omitempty"`
	GPULoaded      *gpuInfo    `json:"gpu_after_load,omitempty"`
	GPUPeak        *gpuInfo    `json:"gpu_after_runs,omitempty"`
	Skipped        []string    `json:"skipped,omitempty"`
	Warnings       []string    `json:"warnings,omitempty"`
}

// measureModel runs the whole sequence for one model: cold start, then one
// run per stream count, then (pair) two engines side by side.
func measureModel(log *slog.Logger, o options, name, path string, pair bool, begun time.Time) (modelResult, error) {
	cfg := presets[name]
	st, err := os.Stat(path)
	if err != nil {
		return modelResult{}, err
	}
	m := modelResult{Name: name, Parameters: cfg.Parameters(), WeightBytes: st.Size()}
	if o.gpuLayers > 0 && o.bandwidth > 0 {
		m.BoundTokensSec = o.bandwidth / float64(st.Size())
	}
	maxStreams := slices.Max(o.streams)

	before := queryGPU(context.Background())
	e, stop, cold, err := coldLoad(log, o, path, maxStreams)
	if err != nil {
		return m, err
	}
	m.Cold = cold
	m.GPULoaded = queryGPU(context.Background())
	// ggml loads GPU backends silently: a CUDA backend that failed to load
	// leaves llama.cpp on the CPU with no error. The GPU's memory says
	// whether the weights went there.
	if o.gpuLayers > 0 && before != nil && m.GPULoaded != nil {
		if grew := int64(m.GPULoaded.MemoryUsedMiB-before.MemoryUsedMiB) << 20; grew < m.WeightBytes/2 {
			m.Warnings = append(m.Warnings, fmt.Sprintf("GPU memory grew by %d MiB during the load, less than half the weights: the layers are probably on the CPU (did the CUDA backend load? see the log)", grew>>20))
		}
	}
	fmt.Fprintf(os.Stderr, "gpubench: %s cold start: fetch %.1f ms, load %.0f ms, context %.0f ms, first decode %.0f ms\n",
		name, cold.FetchMS, cold.LoadMS, cold.ContextMS, cold.FirstDecodeMS)

	// One pass at the most streams first: it grows the KV pool to its
	// working size, so that no measured run waits for a growth.
	runStreams(e, maxStreams, o.tokens)
	var alone float64
	for _, n := range o.streams {
		if o.budget > 0 && time.Since(begun) > o.budget {
			m.Skipped = append(m.Skipped, fmt.Sprintf("%d streams: time budget spent", n))
			continue
		}
		r := runStreams(e, n, o.tokens)
		fmt.Fprintf(os.Stderr, "gpubench: %s %d streams: %d tokens in %.2f s, %.1f tokens/s, tpot p50 %.2f ms p99 %.2f ms\n",
			name, n, r.Tokens, r.Seconds, r.TokensSec, r.TPOTP50MS, r.TPOTP99MS)
		m.Runs = append(m.Runs, r)
		if n == 1 {
			alone = r.TokensSec
		}
	}
	m.GPUPeak = queryGPU(context.Background())

	if pair && alone > 0 && (o.budget == 0 || time.Since(begun) < o.budget) {
		p, err := measurePair(log, o, path, e, alone)
		if err != nil {
			m.Skipped = append(m.Skipped, fmt.Sprintf("pair: %v", err))
		} else {
			m.Pair = p
		}
	}
	stop()
	return m, nil
}

// coldLoad times a runner's cold start from the host cache: the cache hit,
// LoadEngine (split at the moment the weights are loaded), and the first
// token of a first request.
func coldLoad(log *slog.Logger, o options, path string, parallel int) (*runner.Engine, func(), coldStart, error) {
	var c coldStart
	t0 := time.Now()
	cached, err := cacheHit(o.models, path)
	if err != nil {
		return nil, nil, c, err
	}
	t1 := time.Now()
	var loaded atomic.Int64 // UnixNano when progress first reached 1
	e, err := runner.LoadEngine(log, runner.EngineConfig{
		ModelPath: cached,
		Parallel:  parallel,
		Context:   o.context,
		// One shared context: on a GPU one batch over the weights serves
		// every sequence (the engine's default for models this size).
		Contexts: 1,
		// Set, so that LoadEngine does not time CPU thread counts (~200
		// ms of decodes), which mean nothing with every layer offloaded.
		Threads:   threadsFor(o),
		GPULayers: o.gpuLayers,
	}, func(p float32) {
		if p >= 1 {
			loaded.CompareAndSwap(0, time.Now().UnixNano())
		}
	})
	if err != nil {
		return nil, nil, c, err
	}
	t2 := time.Now()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { e.Run(ctx); close(done) }()
	stop := func() { cancel(); <-done; e.Close() }

	r := runStreams(e, 1, 2)
	if r.Errors > 0 {
		stop()
		return nil, nil, c, fmt.Errorf("first request failed")
	}
	tl := t2
	if ns := loaded.Load(); ns != 0 {
		tl = time.Unix(0, ns)
	}
	c.FetchMS = ms(t1.Sub(t0))
	c.LoadMS = ms(tl.Sub(t1))
	c.ContextMS = ms(t2.Sub(tl))
	c.FirstDecodeMS = r.TTFTP50MS
	c.TotalMS = c.FetchMS + c.LoadMS + c.ContextMS + c.FirstDecodeMS
	return e, stop, c, nil
}

// cacheHit puts the model into a runner cache under dir (a hard link, so
// no copy) and fetches it from there as a starting runner does on a host
// that has the weights: Fetch's hit path. The digest is a label derived
// from the path, not the file's hash: a hit never hashes.
func cacheHit(dir, path string) (string, error) {
	sum := sha256.Sum256([]byte(path))
	a := runner.Artifact{SHA256: hex.EncodeToString(sum[:])}
	cache := &runner.Cache{Dir: filepath.Join(dir, "cache")}
	dst := cache.Path(a.SHA256)
	if _, err := os.Stat(dst); err != nil {
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return "", err
		}
		if err := os.Link(path, dst); err != nil {
			return "", fmt.Errorf("placing the model in the runner cache: %w", err)
		}
	}
	st, err := os.Stat(dst)
	if err != nil {
		return "", err
	}
	a.Size = st.Size()
	got, downloaded, err := cache.Fetch(context.Background(), a, nil)
	if err != nil {
		return "", err
	}
	if downloaded {
		return "", fmt.Errorf("the runner cache missed a file it holds")
	}
	return got, nil
}

func threadsFor(o options) int {
	if o.dry {
		return 1 // the tiny model is fastest on one thread
	}
	return runtime.NumCPU()
}

// measurePair loads a second engine of the same model beside e and runs
// one stream on each at once.
func measurePair(log *slog.Logger, o options, path string, e *runner.Engine, alone float64) (*pairResult, error) {
	e2, stop2, _, err := coldLoad(log, o, path, 1)
	if err != nil {
		return nil, err
	}
	defer stop2()
	p := &pairResult{AloneTokensSec: alone, GPU: queryGPU(context.Background())}
	var wg sync.WaitGroup
	rs := make([]streamRun, 2)
	for i, eng := range []*runner.Engine{e, e2} {
		wg.Add(1)
		go func() { defer wg.Done(); rs[i] = runStreams(eng, 1, o.tokens) }()
	}
	wg.Wait()
	p.WorstShare = 1e9
	for _, r := range rs {
		p.EachTokensSec = append(p.EachTokensSec, r.TokensSec)
		p.WorstShare = min(p.WorstShare, r.TokensSec/alone)
	}
	fmt.Fprintf(os.Stderr, "gpubench: pair: alone %.1f tokens/s, side by side %.1f and %.1f\n", alone, rs[0].TokensSec, rs[1].TokensSec)
	return p, nil
}

// trace records one stream's timeline; the engine calls it from its
// decode loop, one goroutine per context, so it never blocks.
type trace struct {
	submit time.Time
	times  []time.Time // one per Deliver
	tokens int
	err    error
	done   chan struct{}
}

func (t *trace) Start(int)           {}
func (t *trace) Deliver(text []byte) { t.times = append(t.times, time.Now()) }
func (t *trace) Finish(_ string, u wire.Usage, err error) {
	t.tokens, t.err = u.CompletionTokens, err
	close(t.done)
}

// runStreams submits n greedy requests of tokens output tokens at once and
// waits for all of them.
func runStreams(e *runner.Engine, n, tokens int) streamRun {
	zero := float32(0)
	traces := make([]*trace, n)
	start := time.Now()
	for i := range n {
		t := &trace{done: make(chan struct{}), times: make([]time.Time, 0, tokens), submit: time.Now()}
		traces[i] = t
		// Distinct prompts: no stream reuses another's KV cells.
		prompt := fmt.Sprintf("Once upon a time, story number %d", i)
		if _, err := e.Submit(context.Background(), runner.Request{Prompt: prompt, MaxTokens: tokens, Sampling: wire.Sampling{Temperature: &zero}}, t); err != nil {
			t.err = err
			close(t.done)
		}
	}
	r := streamRun{Streams: n}
	var end time.Time
	var gaps, ttfts, rates []float64
	for _, t := range traces {
		<-t.done
		if t.err != nil {
			r.Errors++
			continue
		}
		r.Tokens += t.tokens
		if len(t.times) == 0 {
			continue
		}
		last := t.times[len(t.times)-1]
		if last.After(end) {
			end = last
		}
		ttfts = append(ttfts, ms(t.times[0].Sub(t.submit)))
		for i := 1; i < len(t.times); i++ {
			gaps = append(gaps, ms(t.times[i].Sub(t.times[i-1])))
		}
		if d := last.Sub(t.times[0]); d > 0 && t.tokens > 1 {
			rates = append(rates, float64(t.tokens-1)/d.Seconds())
		}
	}
	if !end.IsZero() {
		r.Seconds = end.Sub(start).Seconds()
		r.TokensSec = float64(r.Tokens) / r.Seconds
	}
	r.TPOTP50MS, r.TPOTP99MS = quantile(gaps, 0.5), quantile(gaps, 0.99)
	r.TTFTP50MS = quantile(ttfts, 0.5)
	r.PerStreamTokensSec = quantile(rates, 0.5)
	return r
}

// quantile is the q-quantile of xs by the nearest-rank method (0 for none).
func quantile(xs []float64, q float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	i := int(q*float64(len(s))+0.5) - 1
	return s[max(0, min(i, len(s)-1))]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
