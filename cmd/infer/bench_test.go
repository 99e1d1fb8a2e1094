package main

import (
	"errors"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestPercentile(t *testing.T) {
	v := []float64{5, 1, 4, 2, 3, 10, 9, 8, 7, 6}
	tests := []struct {
		p    float64
		want float64
	}{{50, 5}, {90, 9}, {99, 10}, {100, 10}, {1, 1}}
	for _, tt := range tests {
		if got := pct(v, tt.p); got != tt.want {
			t.Errorf("p%v = %v, want %v", tt.p, got, tt.want)
		}
	}
	if pct(nil, 50) != 0 {
		t.Error("empty input")
	}
}

func TestSummarize(t *testing.T) {
	results := []benchResult{
		{ttft: 10 * time.Millisecond, total: 100 * time.Millisecond, tokens: 10, itl: []time.Duration{2 * time.Millisecond, 4 * time.Millisecond}},
		{ttft: 30 * time.Millisecond, total: 300 * time.Millisecond, tokens: 30},
		{err: errors.New("boom")},
	}
	r := summarize(2, results, 2*time.Second)
	if r.Errors != 1 || r.FirstError != "boom" || r.OutputTokens != 40 || r.TokensPerSec != 20 || r.RequestsPerS != 1 || r.ITLmeanms != 3 || r.TTFTp50ms != 10 || r.E2Ep99ms != 300 {
		t.Errorf("summary %+v", r)
	}
}

// TestPoissonArrivals: with a fixed seed, the gaps between arrivals have
// the mean (1/rate) and the spread (coefficient of variation 1) of an
// exponential distribution, the limits stop the process, and a seed
// repeats the arrivals.
func TestPoissonArrivals(t *testing.T) {
	for _, rate := range []float64{0.5, 4, 100} {
		at := poissonArrivals(rate, 20000, 0, rand.New(rand.NewPCG(7, 7)))
		if len(at) != 20000 {
			t.Fatalf("rate %v: %d arrivals, want 20000", rate, len(at))
		}
		var gaps []float64
		prev := time.Duration(0)
		for _, a := range at {
			if a < prev {
				t.Fatalf("rate %v: arrivals go back in time", rate)
			}
			gaps = append(gaps, (a - prev).Seconds())
			prev = a
		}
		m := mean(gaps)
		var ss float64
		for _, g := range gaps {
			ss += (g - m) * (g - m)
		}
		cv := math.Sqrt(ss/float64(len(gaps))) / m
		// The standard error of the mean of 20,000 exponential gaps is
		// 0.7% of it; 3% is over four of them.
		if want := 1 / rate; math.Abs(m-want)/want > 0.03 {
			t.Errorf("rate %v: mean gap %.4fs, want %.4fs ±3%%", rate, m, want)
		}
		if math.Abs(cv-1) > 0.05 {
			t.Errorf("rate %v: coefficient of variation %.3f, want 1 (exponential)", rate, cv)
		}
	}
	within := poissonArrivals(10, 0, 30*time.Second, rand.New(rand.NewPCG(1, 1)))
	if n := len(within); n < 250 || n > 350 || within[n-1] >= 30*time.Second {
		t.Errorf("10/s for 30 s: %d arrivals, the last at %v; want about 300, all before 30 s", n, within[n-1])
	}
	if n := len(poissonArrivals(10, 5, 30*time.Second, rand.New(rand.NewPCG(1, 1)))); n != 5 {
		t.Errorf("--requests 5 with --duration: %d arrivals", n)
	}
	a := poissonArrivals(3, 50, 0, rand.New(rand.NewPCG(42, 42)))
	b := poissonArrivals(3, 50, 0, rand.New(rand.NewPCG(42, 42)))
	c := poissonArrivals(3, 50, 0, rand.New(rand.NewPCG(43, 43)))
	if !slices.Equal(a, b) || slices.Equal(a, c) {
		t.Error("the same seed must repeat the arrivals and another must not")
	}
	if poissonArrivals(0, 10, 0, rand.New(rand.NewPCG(1, 1))) != nil || poissonArrivals(1, 0, 0, rand.New(rand.NewPCG(1, 1))) != nil {
		t.Error("no rate or no limit must give no arrivals")
	}
}

// TestTokenGaps: time per output token from chunk timestamps, per token.
func TestTokenGaps(t *testing.T) {
	ms := time.Millisecond
	tests := []struct {
		name   string
		chunks []tokenChunk
		want   []time.Duration
	}{
		{"one token per chunk", []tokenChunk{{at: 100 * ms, tokens: 1}, {at: 110 * ms, tokens: 1}, {at: 130 * ms, tokens: 1}}, []time.Duration{10 * ms, 20 * ms}},
		// 2 ms of coalescing: 4 tokens in a 2 ms chunk took 0.5 ms each.
		{"coalesced", []tokenChunk{{at: 50 * ms, tokens: 3}, {at: 52 * ms, tokens: 4}, {at: 54 * ms, tokens: 2}}, []time.Duration{ms / 2, ms / 2, ms / 2, ms / 2, ms, ms}},
		{"first only", []tokenChunk{{at: 5 * ms, tokens: 7}}, nil},
		{"empty chunk", []tokenChunk{{at: 5 * ms, tokens: 1}, {at: 6 * ms, tokens: 0}, {at: 9 * ms, tokens: 1}}, []time.Duration{3 * ms}},
	}
	for _, tt := range tests {
		if got := tokenGaps(tt.chunks); !slices.Equal(got, tt.want) {
			t.Errorf("%s: gaps %v, want %v", tt.name, got, tt.want)
		}
	}
}

// TestCountTokens: exact counts from logprobs are kept; otherwise the
// final usage is spread over the chunks by their bytes, or each chunk
// counts one.
func TestCountTokens(t *testing.T) {
	tests := []struct {
		name       string
		bytes      []int
		tokens     []int
		usage      int
		want       []int
		wantSource string
	}{
		{"logprobs", []int{3, 8, 2}, []int{1, 3, 1}, 99, []int{1, 3, 1}, countLogprobs},
		{"usage by bytes", []int{10, 30, 20}, []int{-1, -1, -1}, 12, []int{2, 6, 4}, countUsage},
		{"usage and logprobs", []int{4, 10, 10}, []int{2, -1, -1}, 12, []int{2, 5, 5}, countUsage},
		{"usage below chunks", []int{1, 1, 1}, []int{-1, -1, -1}, 1, []int{1, 1, 1}, countUsage},
		{"nothing", []int{5, 5}, []int{-1, -1}, -1, []int{1, 1}, countChunks},
	}
	for _, tt := range tests {
		chunks := make([]tokenChunk, len(tt.bytes))
		for i := range chunks {
			chunks[i] = tokenChunk{bytes: tt.bytes[i], tokens: tt.tokens[i]}
		}
		src := countTokens(chunks, tt.usage)
		var got []int
		for _, c := range chunks {
			got = append(got, c.tokens)
		}
		if src != tt.wantSource || !slices.Equal(got, tt.want) {
			t.Errorf("%s: %v by %s, want %v by %s", tt.name, got, src, tt.want, tt.wantSource)
		}
	}
}

// TestSummarizeTPOT: the row's TPOT percentiles come from per-token gaps,
// not from the gaps between chunks.
func TestSummarizeTPOT(t *testing.T) {
	ms := time.Millisecond
	// Each request: first token at 10 ms, then chunks of 4 tokens every
	// 2 ms: 0.5 ms per token, while chunks are 2 ms apart.
	var results []benchResult
	for range 3 {
		r := benchResult{ttft: 10 * ms, total: 20 * ms, tokens: 17, counted: countLogprobs, chunks: []tokenChunk{{at: 10 * ms, tokens: 1}}}
		for i := 1; i <= 4; i++ {
			r.chunks = append(r.chunks, tokenChunk{at: 10*ms + time.Duration(i)*2*ms, tokens: 4})
			r.itl = append(r.itl, 2*ms)
		}
		results = append(results, r)
	}
	r := summarize(1, results, time.Second)
	if r.TPOTp50ms != 0.5 || r.TPOTp99ms != 0.5 || r.TPOTmeanms != 0.5 || r.ITLmeanms != 2 || r.ITLp99ms != 2 || r.TokenCounts != countLogprobs {
		t.Errorf("row %+v", r)
	}
}

// TestCompare: a saved run read back prints each figure's ratio, level by
// level, and says which levels it lacks.
func TestCompare(t *testing.T) {
	path := filepath.Join(t.TempDir(), "run.json")
	before := benchRun{Version: "v1", Rows: []benchRow{{Concurrency: 4, TTFTp50ms: 10, TPOTp99ms: 2, TokensPerSec: 100}}}
	if err := writeBenchRun(path, before); err != nil {
		t.Fatal(err)
	}
	got, err := readBenchRun(path)
	if err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	printComparison(&out, path, *got, []benchRow{{Concurrency: 4, TTFTp50ms: 5, TPOTp99ms: 3, TokensPerSec: 150}, {Rate: 2, TTFTp50ms: 1}})
	for _, want := range []string{"0.50×", "1.50×", "rate 2/s", "not in " + path} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("comparison lacks %q:\n%s", want, out.String())
		}
	}
	os.WriteFile(path, []byte(`[{"concurrency":1}]`), 0o644)
	if _, err := readBenchRun(path); err == nil {
		t.Error("bench --json output taken for a saved run")
	}
}
