package activator_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/infer-run/infer/internal/queue"
	"github.com/infer-run/infer/internal/testenv"
	"github.com/infer-run/infer/internal/wire"
	"github.com/infer-run/infer/registry"
	"github.com/infer-run/infer/runner"
)

// Benchmarks of the activator path. They are not timed tests: compare the
// numbers of one run. Typical use:
//
//	go test ./activator -run '^$' -bench . -benchtime 200x

// quiet silences the harness's and runners' logs for a benchmark; they
// would dwarf the results.
func quiet(b *testing.B) {
	prev := slog.Default()
	slog.SetDefault(slog.New(slog.DiscardHandler))
	b.Cleanup(func() { slog.SetDefault(prev) })
}

// benchActivator is an activator as deployed: the registry behind an
// in-memory cache, so the request path runs no Postgres query. Deploy
// before calling it.
func (h *harness) benchActivator() string {
	ctx, cancel := context.WithCancel(context.Background())
	cache := registry.NewCache(h.store, slog.Default())
	done := make(chan struct{})
	go func() { cache.Run(ctx); close(done) }()
	h.t.Cleanup(func() { cancel(); <-done })
	url, _ := h.addActivatorWith(cache)
	return url
}

const benchMaxTokens = 16

// arrivalSpread spaces the direct-spread requests about as far apart as the
// activator's concurrent requests reach the runner (measured: 16 requests
// are in the queue within ~1 ms on 2 cores).
const arrivalSpread = 70 * time.Microsecond

// firstTokenSink records when an engine delivers a sequence's first text.
type firstTokenSink struct {
	first time.Time
	done  chan struct{}
}

func (s *firstTokenSink) Start(int) {}
func (s *firstTokenSink) Deliver([]byte) {
	if s.first.IsZero() {
		s.first = time.Now()
	}
}
func (s *firstTokenSink) Finish(string, wire.Usage, error) { close(s.done) }

func benchPrompt(round, i int) string {
	return fmt.Sprintf("Once upon a time, story %d of round %d", i, round)
}

// ttftDirect runs n concurrent requests on the engine, started spread
// apart, and returns their times to first token.
func ttftDirect(b *testing.B, e *runner.Engine, round, n int, spread time.Duration) []time.Duration {
	zero := float32(0)
	out := make([]time.Duration, n)
	var wg sync.WaitGroup
	for i := range n {
		if i > 0 && spread > 0 {
			for t := time.Now(); time.Since(t) < spread; {
				// Spin: timers are too coarse for this spacing.
			}
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			sink := &firstTokenSink{done: make(chan struct{})}
			t0 := time.Now()
			if _, err := e.Submit(context.Background(), runner.Request{Prompt: benchPrompt(round, i), MaxTokens: benchMaxTokens, Sampling: wire.Sampling{Temperature: &zero}}, sink); err != nil {
				b.Error(err)
				return
			}
			<-sink.done
			out[i] = sink.first.Sub(t0)
		}()
	}
	wg.Wait()
	return out
}

// ttftActivator runs n concurrent streaming completions through the
// activator and returns their times to the first content chunk.
func ttftActivator(b *testing.B, client *http.Client, url, model string, round, n int) []time.Duration {
	out := make([]time.Duration, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			body := fmt.Sprintf(`{"model":%q,"prompt":%q,"max_tokens":%d,"temperature":0,"stream":true}`, model, benchPrompt(round, i), benchMaxTokens)
			req, _ := http.NewRequest(http.MethodPost, url+"/v1/completions", strings.NewReader(body))
			req.Header.Set("Authorization", "Bearer "+adminKey)
			req.Header.Set("Content-Type", "application/json")
			t0 := time.Now()
			resp, err := client.Do(req)
			if err != nil {
				b.Error(err)
				return
			}
			defer resp.Body.Close()
			r := bufio.NewReader(resp.Body)
			for {
				line, err := r.ReadSlice('\n')
				if err != nil {
					b.Errorf("stream ended before its first token: %v", err)
					return
				}
				if bytes.HasPrefix(line, []byte("data: {")) {
					out[i] = time.Since(t0)
					break
				}
			}
			io.Copy(io.Discard, r)
		}()
	}
	wg.Wait()
	return out
}

func percentile(ds []time.Duration, p float64) float64 {
	s := slices.Clone(ds)
	slices.Sort(s)
	return float64(s[int(p*float64(len(s)-1))]) / float64(time.Millisecond)
}

// BenchmarkAddedLatency measures the time to first token the activator
// path adds (HTTP, JetStream queue, runner pull, NATS replies, SSE) over
// submitting to the runner's engine directly, for the same model and
// prompts. Each round runs streams requests at once, first directly, then
// through the activator, so both see the same machine load.
func BenchmarkAddedLatency(b *testing.B) {
	quiet(b)
	h := newHarness(b)
	h.deploy("bench", map[string]any{"parallel": 16})
	url := h.benchActivator()
	// In its own process, as deployed: in this one its decode threads
	// would hold the Go scheduler's Ps in cgo calls and delay the
	// activator's and NATS's goroutines.
	cfg := runner.EngineConfig{Parallel: 16, Context: 512, Contexts: benchContexts, DecodeNice: benchNice()}
	runnerPID := h.startRunnerProcess("bench", cfg)

	cfg.ModelPath = testenv.ModelPath(b)
	// The direct engine stands for the runner process: it runs with the
	// spare Ps `infer runner` gives itself, the activator and NATS with
	// as many as the host has cores, as in their own processes.
	procs := runtime.GOMAXPROCS(0)
	defer runtime.GOMAXPROCS(procs)
	runnerProcs := procs + cfg.Parallel
	e, err := runner.LoadEngine(slog.Default(), cfg, nil)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { e.Run(ctx); close(done) }()
	defer func() { cancel(); <-done; e.Close() }()

	// The runner's usage records split the activator path: queue wait
	// (stored in JetStream → the runner starts the job) and time to first
	// token counted from the job being stored.
	var recMu sync.Mutex
	var queueWait, runnerTTFT []time.Duration
	sub, err := h.nc.Subscribe(wire.UsageSubject(h.depID("bench")), func(m *nats.Msg) {
		var rec wire.UsageRecord
		if json.Unmarshal(m.Data, &rec) == nil {
			recMu.Lock()
			queueWait = append(queueWait, time.Duration(rec.QueueWaitMS*float64(time.Millisecond)))
			runnerTTFT = append(runnerTTFT, time.Duration(rec.TTFTMS*float64(time.Millisecond)))
			recMu.Unlock()
		}
	})
	if err != nil {
		b.Fatal(err)
	}
	defer sub.Unsubscribe()

	// Both engines load their contexts after the first in the background
	// (Engine.Run): let that finish before measuring.
	settle(b, os.Getpid(), runnerPID)

	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	for _, n := range []int{1, 16} {
		b.Run(fmt.Sprintf("streams=%d", n), func(b *testing.B) {
			// Warm up: the runner's first job, connections, caches.
			ttftDirect(b, e, -1, n, 0)
			ttftActivator(b, client, url, "bench", -1, n)
			var direct, spread, via []time.Duration
			// CPU time spent in each round's direct requests (this
			// process) and activator requests (this process: client,
			// activator, NATS; and the runner process).
			var directCPU, viaCPU, runnerCPU time.Duration
			recMu.Lock()
			queueWait, runnerTTFT = queueWait[:0], runnerTTFT[:0]
			recMu.Unlock()
			b.ResetTimer()
			self := os.Getpid()
			for round := range b.N {
				runtime.GOMAXPROCS(runnerProcs)
				c0 := processCPU(b, self)
				direct = append(direct, ttftDirect(b, e, round, n, 0)...)
				directCPU += processCPU(b, self) - c0
				if n > 1 {
					spread = append(spread, ttftDirect(b, e, round, n, arrivalSpread)...)
				}
				runtime.GOMAXPROCS(procs)
				c0, r0 := processCPU(b, self), processCPU(b, runnerPID)
				via = append(via, ttftActivator(b, client, url, "bench", round, n)...)
				viaCPU += processCPU(b, self) - c0
				runnerCPU += processCPU(b, runnerPID) - r0
			}
			b.StopTimer()
			d50, d99 := percentile(direct, 0.5), percentile(direct, 0.99)
			a50, a99 := percentile(via, 0.5), percentile(via, 0.99)
			if n > 1 {
				// The same engine, with requests arriving as they do
				// through a queue rather than in one instant: shows how
				// much of the added latency is the engine admitting
				// sequences while it decodes others.
				b.ReportMetric(percentile(spread, 0.5), "direct-spread-p50-ms")
				b.ReportMetric(percentile(spread, 0.99), "direct-spread-p99-ms")
			}
			recMu.Lock()
			if len(runnerTTFT) > 0 {
				b.ReportMetric(percentile(queueWait, 0.5), "runner-queue-p50-ms")
				b.ReportMetric(percentile(runnerTTFT, 0.5), "runner-ttft-p50-ms")
				b.ReportMetric(percentile(runnerTTFT, 0.99), "runner-ttft-p99-ms")
			}
			recMu.Unlock()
			perReq := func(d time.Duration) float64 { return d.Seconds() * 1000 / float64(b.N*n) }
			b.ReportMetric(perReq(directCPU), "direct-cpu-ms/req")
			b.ReportMetric(perReq(viaCPU), "activator-nats-client-cpu-ms/req")
			b.ReportMetric(perReq(runnerCPU), "runner-cpu-ms/req")
			b.ReportMetric(d50, "direct-p50-ms")
			b.ReportMetric(d99, "direct-p99-ms")
			b.ReportMetric(a50, "activator-p50-ms")
			b.ReportMetric(a99, "activator-p99-ms")
			b.ReportMetric(a50-d50, "added-p50-ms")
			b.ReportMetric(a99-d99, "added-p99-ms")
		})
	}
}

// BenchmarkPathOnly measures time to first token through the activator
// path (the same requests as BenchmarkAddedLatency's) with a runner that
// answers each job at once, without a model: the path's own latency,
// under nothing but its own load. The engine's time comes on top of it,
// so it bounds from below what BenchmarkAddedLatency can report as added.
func BenchmarkPathOnly(b *testing.B) {
	quiet(b)
	h := newHarness(b)
	h.deploy("bench", map[string]any{"parallel": 16})
	url := h.benchActivator()
	runnerPID := h.startRunnerProcessSpec(runnerProcessSpec{Deployment: "bench", Engine: runner.EngineConfig{Parallel: 16}, Instant: true})
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	for _, n := range []int{1, 16} {
		b.Run(fmt.Sprintf("streams=%d", n), func(b *testing.B) {
			ttftActivator(b, client, url, "bench", -1, n)
			var via []time.Duration
			var viaCPU, runnerCPU time.Duration
			self := os.Getpid()
			b.ResetTimer()
			for round := range b.N {
				c0, r0 := processCPU(b, self), processCPU(b, runnerPID)
				via = append(via, ttftActivator(b, client, url, "bench", round, n)...)
				viaCPU += processCPU(b, self) - c0
				runnerCPU += processCPU(b, runnerPID) - r0
			}
			b.StopTimer()
			perReq := func(d time.Duration) float64 { return d.Seconds() * 1000 / float64(b.N*n) }
			b.ReportMetric(perReq(viaCPU), "activator-nats-client-cpu-ms/req")
			b.ReportMetric(perReq(runnerCPU), "runner-cpu-ms/req")
			b.ReportMetric(percentile(via, 0.5), "activator-p50-ms")
			b.ReportMetric(percentile(via, 0.99), "activator-p99-ms")
		})
	}
}

// processCPU is the CPU time a process has used, all its threads, from
// /proc (in clock ticks of 10 ms: sum it over many rounds).
func processCPU(b *testing.B, pid int) time.Duration {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	// The fields after the command name, which may hold spaces: state is
	// field 3, utime 14 and stime 15.
	f := strings.Fields(string(data[bytes.LastIndexByte(data, ')')+1:]))
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	const tick = 10 * time.Millisecond // USER_HZ, 100 on Linux
	return time.Duration(utime+stime) * tick
}

// settle waits (at most 20 s) until the processes use less than a tenth of
// a core over half a second: until the work they started in the background
// is done.
func settle(b *testing.B, pids ...int) {
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); {
		var before time.Duration
		for _, pid := range pids {
			before += processCPU(b, pid)
		}
		time.Sleep(500 * time.Millisecond)
		var after time.Duration
		for _, pid := range pids {
			after += processCPU(b, pid)
		}
		if after-before < 50*time.Millisecond {
			return
		}
	}
}

// BenchmarkAccept measures how many requests per second one activator
// accepts and queues for a deployment with no runner, and checks that
// every accepted request is in the deployment's JetStream queue.
//
// async: POST /v1/async/completions from 64 clients; a request is accepted
// when its 202 arrives. sync: streaming completions that stay open (as
// clients of a cold deployment do); a request is accepted when it is in
// the stream. Sync requests run in chunks of at most syncChunk open
// connections.
func BenchmarkAccept(b *testing.B) {
	quiet(b)
	h := newHarness(b)
	h.deploy("burst", map[string]any{"queue_limit": 1_000_000, "queue_timeout": "1h"})
	url := h.benchActivator()
	js, err := jetstream.New(h.nc)
	if err != nil {
		b.Fatal(err)
	}
	stream, err := queue.Ensure(context.Background(), js, h.depID("burst"), queue.DeploymentLimits(1_000_000, time.Hour, 1))
	if err != nil {
		b.Fatal(err)
	}
	reset := func() {
		if err := stream.Purge(context.Background()); err != nil {
			b.Fatal(err)
		}
	}
	queued := func() int {
		info, err := stream.Info(context.Background())
		if err != nil {
			b.Fatal(err)
		}
		return int(info.State.Msgs)
	}
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256, MaxConnsPerHost: 0}}
	post := func(ctx context.Context, path, body string) (*http.Response, error) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, url+path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+adminKey)
		req.Header.Set("Content-Type", "application/json")
		return client.Do(req)
	}
	const body = `{"model":"burst","prompt":"Once upon a time","max_tokens":16}`

	b.Run("async", func(b *testing.B) {
		reset()
		var next, accepted, failed atomic.Int64
		var wg sync.WaitGroup
		b.ResetTimer()
		for range 64 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for next.Add(1) <= int64(b.N) {
					resp, err := post(context.Background(), "/v1/async/completions", body)
					if err != nil {
						failed.Add(1)
						continue
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode == http.StatusAccepted {
						accepted.Add(1)
					} else {
						failed.Add(1)
					}
				}
			}()
		}
		wg.Wait()
		elapsed := b.Elapsed()
		b.StopTimer()
		inQueue := queued()
		b.ReportMetric(float64(accepted.Load())/elapsed.Seconds(), "accepted/s")
		b.ReportMetric(float64(failed.Load()), "failed")
		b.ReportMetric(float64(accepted.Load()-int64(inQueue)), "lost")
		if failed.Load() != 0 || int(accepted.Load()) != inQueue {
			b.Errorf("%d accepted, %d failed, %d in the queue", accepted.Load(), failed.Load(), inQueue)
		}
	})

	b.Run("sync", func(b *testing.B) {
		const syncChunk = 2000
		var acceptTime time.Duration
		var failedTotal int64
		b.ResetTimer()
		for left := b.N; left > 0; left -= syncChunk {
			b.StopTimer()
			reset()
			n := min(left, syncChunk)
			ctx, cancel := context.WithCancel(context.Background())
			var failed atomic.Int64
			var wg sync.WaitGroup
			b.StartTimer()
			t0 := time.Now()
			for range n {
				wg.Add(1)
				go func() {
					defer wg.Done()
					resp, err := post(ctx, "/v1/completions", `{"model":"burst","prompt":"Once upon a time","max_tokens":16,"stream":true}`)
					if err != nil {
						if ctx.Err() == nil {
							failed.Add(1)
						}
						return
					}
					if resp.StatusCode != http.StatusOK {
						failed.Add(1)
					}
					io.Copy(io.Discard, resp.Body) // held until cancelled
					resp.Body.Close()
				}()
			}
			for queued() < n-int(failed.Load()) {
				time.Sleep(2 * time.Millisecond)
			}
			acceptTime += time.Since(t0)
			b.StopTimer()
			inQueue := queued()
			cancel()
			wg.Wait()
			failedTotal += failed.Load()
			if failed.Load() != 0 || inQueue != n {
				b.Errorf("chunk of %d: %d failed, %d in the queue", n, failed.Load(), inQueue)
			}
			b.StartTimer()
		}
		b.StopTimer()
		b.ReportMetric(float64(b.N)/acceptTime.Seconds(), "accepted/s")
		b.ReportMetric(float64(failedTotal), "failed")
	})
}

// benchNice is the decode threads' nice value in BenchmarkAddedLatency:
// the runner's default, or $INFER_BENCH_DECODE_NICE to compare (0 leaves
// the decode threads at normal priority).
func benchNice() int {
	if v, err := strconv.Atoi(os.Getenv("INFER_BENCH_DECODE_NICE")); err == nil {
		return v
	}
	return runner.DefaultDecodeNice
}

// benchContexts is the llama context arrangement of BenchmarkAddedLatency's
// engines; zero is the runner's default for the model (see
// runner.DefaultContexts).
const benchContexts = 0
