package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/term"
)

// benchResult is one streamed request as the client saw it.
type benchResult struct {
	ttft    time.Duration
	total   time.Duration
	tokens  int
	itl     []time.Duration // gaps between content chunks
	chunks  []tokenChunk    // the chunks with output, with their token counts
	counted string          // how the tokens were counted: countLogprobs, countUsage, countChunks
	err     error
	started time.Time
}

// benchRow summarises one concurrency level.
type benchRow struct {
	Concurrency int `json:"concurrency"` // 0 for a --rate level
	// Rate is a --rate level's requests per second (Poisson arrivals).
	Rate      float64 `json:"rate,omitempty"`
	Cold      bool    `json:"cold,omitempty"`
	Requests  int     `json:"requests"`
	Errors    int     `json:"errors"`
	TTFTp50ms float64 `json:"ttft_p50_ms"`
	TTFTp90ms float64 `json:"ttft_p90_ms"`
	TTFTp99ms float64 `json:"ttft_p99_ms"`
	ITLmeanms float64 `json:"itl_mean_ms"` // between chunks, as before TPOT
	ITLp50ms  float64 `json:"itl_p50_ms"`
	ITLp90ms  float64 `json:"itl_p90_ms"`
	ITLp99ms  float64 `json:"itl_p99_ms"`
	// Time per output token, per token (tokenGaps), not per chunk.
	TPOTmeanms float64 `json:"tpot_mean_ms"`
	TPOTp50ms  float64 `json:"tpot_p50_ms"`
	TPOTp90ms  float64 `json:"tpot_p90_ms"`
	TPOTp99ms  float64 `json:"tpot_p99_ms"`
	// TokenCounts says how tokens were counted per chunk: logprobs
	// (exact), usage (estimated) or chunks (one each); the least exact of
	// the level's requests.
	TokenCounts  string  `json:"token_counts,omitempty"`
	E2Ep50ms     float64 `json:"e2e_p50_ms"`
	E2Ep90ms     float64 `json:"e2e_p90_ms"`
	E2Ep99ms     float64 `json:"e2e_p99_ms"`
	OutputTokens int     `json:"output_tokens"`
	TokensPerSec float64 `json:"output_tokens_per_s"`
	RequestsPerS float64 `json:"requests_per_s"`
	WallSeconds  float64 `json:"wall_s"`
	FirstError   string  `json:"first_error,omitempty"`
	// Phases is a cold burst's runner start as its first runner reported
	// it (milliseconds): process (start to fetching), fetch, load (model
	// and first context), ready (to accepting work), first_token.
	Phases map[string]float64 `json:"phases_ms,omitempty"`
}

func benchCmd() *cobra.Command {
	var (
		url, model, key, prompt, levels string
		rates, tokenCount, out, compare string
		requests, maxTokens             int
		cold, asJSON                    bool
		timeout, duration               time.Duration
		seed                            int64
	)
	cmd := &cobra.Command{
		Use:   "bench --model NAME",
		Short: "Benchmark any OpenAI-compatible endpoint: TTFT, time per output token, p50/p90/p99, tokens/s",
		Long: `bench drives an OpenAI-compatible /chat/completions endpoint (this platform or
another: Ollama, vLLM, …) with streaming requests at each concurrency level and
reports time to first token, time per output token, end-to-end latency
percentiles, output tokens/s, requests/s and errors. --cold first waits until the
deployment has no runners (infer only) and measures the first request alone.

--rate R sends requests at R per second with Poisson arrivals (exponential
gaps from a seeded generator, --seed), however many are still running, for
--requests requests or --duration, instead of the concurrency levels (give
--concurrency as well to run both). Time per output token (TPOT) is measured
per token: each chunk's tokens are counted from its logprobs (the request asks
for them; --token-count usage spreads the final usage over the chunks
instead), and a chunk of k tokens that came g after the one before counts k
gaps of g/k. --out saves the run (settings, machine, version, every
percentile) as JSON; --compare prints each figure's ratio to a saved run.`,
		Example: `  infer bench --model stories --concurrency 1,4,16 --requests 64 --max-tokens 128
  infer bench --model stories --rate 2,8 --duration 60s --out run.json
  infer bench --model stories --rate 8 --requests 200 --compare run.json
  infer bench --url http://127.0.0.1:11434/v1 --model stories --api-key ollama`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if model == "" {
				return usageError{errors.New("--model is required")}
			}
			fl := cmd.Flags()
			var conc []int
			for _, f := range strings.Split(levels, ",") {
				n, err := strconv.Atoi(strings.TrimSpace(f))
				if err != nil || n < 1 {
					return usageError{fmt.Errorf("--concurrency: %q is not a positive number", f)}
				}
				conc = append(conc, n)
			}
			var rateLevels []float64
			if rates != "" {
				for _, f := range strings.Split(rates, ",") {
					r, err := strconv.ParseFloat(strings.TrimSpace(f), 64)
					if err != nil || r <= 0 || math.IsInf(r, 0) || math.IsNaN(r) {
						return usageError{fmt.Errorf("--rate: %q is not a positive number of requests per second", f)}
					}
					rateLevels = append(rateLevels, r)
				}
			}
			if duration < 0 || duration > 0 && rates == "" {
				return usageError{errors.New("--duration goes with --rate (a positive duration)")}
			}
			if requests < 1 && !(rates != "" && duration > 0) {
				return usageError{errors.New("--requests must be at least 1")}
			}
			if tokenCount != countLogprobs && tokenCount != countUsage {
				return usageError{fmt.Errorf("--token-count %q: want logprobs or usage", tokenCount)}
			}
			// With --duration, --requests caps a rate level only if given.
			rateRequests := requests
			if duration > 0 && !fl.Changed("requests") {
				rateRequests = 0
			}
			var baseline *benchRun
			if compare != "" {
				var err error
				if baseline, err = readBenchRun(compare); err != nil {
					return usageError{fmt.Errorf("--compare: %w", err)}
				}
			}
			if key == "" {
				if c, err := newClient(); err == nil {
					key = c.key
				}
			}
			b := &bencher{
				url:       strings.TrimRight(url, "/") + "/chat/completions",
				key:       key,
				model:     model,
				prompt:    prompt,
				maxTokens: maxTokens,
				logprobs:  tokenCount == countLogprobs,
				http:      &http.Client{Timeout: timeout, Transport: benchTransport()},
			}
			ctx := cmd.Context()
			started := time.Now()
			var rows []benchRow
			if cold {
				// A burst at zero: as many requests as the first level's
				// concurrency, all at once.
				if err := waitForZero(ctx, model, 10*time.Minute); err != nil {
					return err
				}
				row, phases := coldBurst(ctx, model, func() benchRow { return b.level(ctx, conc[0], conc[0], nil) })
				row.Cold, row.Phases = true, phases
				rows = append(rows, row)
			}
			newBar := func(n int, desc string) *progressbar.ProgressBar {
				if asJSON || !term.IsTerminal(int(os.Stderr.Fd())) {
					return nil
				}
				return progressbar.NewOptions(n, progressbar.OptionSetDescription(desc),
					progressbar.OptionSetWriter(os.Stderr), progressbar.OptionClearOnFinish(), progressbar.OptionShowCount())
			}
			if rates == "" || fl.Changed("concurrency") {
				for _, n := range conc {
					rows = append(rows, b.level(ctx, n, requests, newBar(requests, fmt.Sprintf("concurrency %d", n))))
				}
			}
			rng := rand.New(rand.NewPCG(uint64(seed), uint64(seed)))
			for _, r := range rateLevels {
				at := poissonArrivals(r, rateRequests, duration, rng)
				rows = append(rows, b.rateLevel(ctx, r, at, newBar(len(at), fmt.Sprintf("rate %g/s", r))))
			}
			if out != "" {
				run := benchRun{
					Version: version(), Time: started.UTC(), Machine: thisMachine(),
					Settings: benchSettings{
						URL: redactURL(url), Model: model, Prompt: prompt, MaxTokens: maxTokens, Timeout: timeout.String(),
						Cold: cold, TokenCount: tokenCount,
					},
					Rows: rows,
				}
				if rates == "" || fl.Changed("concurrency") {
					run.Settings.Concurrency, run.Settings.Requests = conc, requests
				}
				if rates != "" {
					run.Settings.Rates, run.Settings.RateRequests, run.Settings.Seed = rateLevels, rateRequests, seed
					if duration > 0 {
						run.Settings.Duration = duration.String()
					}
				}
				if err := writeBenchRun(out, run); err != nil {
					return err
				}
			}
			if asJSON {
				if err := printJSON(rows); err != nil {
					return err
				}
				if baseline != nil {
					printComparison(os.Stderr, compare, *baseline, rows)
				}
				return allFailed(rows)
			}
			tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', tabwriter.AlignRight)
			fmt.Fprintln(tw, "LEVEL\tREQUESTS\tERRORS\tTTFT p50\tp90\tp99\tTPOT p50\tp99\tITL mean\tE2E p50\tp90\tp99\tTOKENS/S\tREQ/S\t")
			for _, r := range rows {
				fmt.Fprintf(tw, "%s\t%d\t%d\t%.1fms\t%.1fms\t%.1fms\t%.2fms\t%.2fms\t%.2fms\t%.0fms\t%.0fms\t%.0fms\t%.0f\t%.1f\t\n", levelName(r), r.Requests, r.Errors,
					r.TTFTp50ms, r.TTFTp90ms, r.TTFTp99ms, r.TPOTp50ms, r.TPOTp99ms, r.ITLmeanms, r.E2Ep50ms, r.E2Ep90ms, r.E2Ep99ms, r.TokensPerSec, r.RequestsPerS)
			}
			tw.Flush()
			why := "the endpoint sent no logprobs"
			if tokenCount != countLogprobs {
				why = "--token-count " + tokenCount
			}
			for _, r := range rows {
				switch r.TokenCounts {
				case countUsage:
					fmt.Printf("%s: TPOT counts tokens per chunk from the final usage, an estimate (%s)\n", levelName(r), why)
				case countChunks:
					fmt.Printf("%s: TPOT counts one token per chunk: the endpoint sent neither logprobs nor usage\n", levelName(r))
				}
			}
			for _, r := range rows {
				if len(r.Phases) > 0 {
					fmt.Printf("cold start phases of the first runner: process %.0fms, fetch %.0fms, load %.0fms, ready %.0fms, first token %.0fms\n",
						r.Phases["process"], r.Phases["fetch"], r.Phases["load"], r.Phases["ready"], r.Phases["first_token"])
				}
			}
			if baseline != nil {
				printComparison(os.Stdout, compare, *baseline, rows)
			}
			for _, r := range rows {
				if r.FirstError != "" {
					fmt.Fprintf(os.Stderr, "%s: first error: %s\n", levelName(r), r.FirstError)
				}
			}
			return allFailed(rows)
		},
	}
	f := cmd.Flags()
	f.StringVar(&url, "url", env("INFER_URL", "http://127.0.0.1:8080")+"/v1", "base URL of the OpenAI-compatible API")
	f.StringVar(&model, "model", "", "model (deployment) name")
	f.StringVar(&key, "api-key", os.Getenv("INFER_API_KEY"), "API key (default: $INFER_API_KEY or the dev admin key)")
	f.StringVar(&prompt, "prompt", "Once upon a time", "user message of every request")
	f.StringVar(&levels, "concurrency", "1,4,16", "comma-separated concurrency levels")
	f.IntVar(&requests, "requests", 32, "requests per level (with --rate and --duration: a cap only when given)")
	f.StringVar(&rates, "rate", "", "comma-separated request rates (requests/s, Poisson arrivals) to run instead of the concurrency levels")
	f.DurationVar(&duration, "duration", 0, "with --rate: send requests for this long (e.g. 60s)")
	f.Int64Var(&seed, "seed", 1, "with --rate: seed of the arrival times (the same seed repeats them)")
	f.StringVar(&tokenCount, "token-count", countLogprobs, "how tokens per chunk are counted for TPOT: logprobs (asks for them: exact) or usage (the final usage spread over the chunks by bytes)")
	f.StringVar(&out, "out", "", "save the run (settings, machine, infer version, every level's percentiles) as JSON to this file")
	f.StringVar(&compare, "compare", "", "print each figure's ratio to a run saved with --out")
	f.IntVar(&maxTokens, "max-tokens", 128, "max_tokens of every request")
	f.BoolVar(&cold, "cold", false, "first wait for zero runners, then send a burst as large as the first --concurrency level at once and report its TTFT and the runner's start phases (infer endpoints only)")
	f.BoolVar(&asJSON, "json", false, "print JSON")
	f.DurationVar(&timeout, "timeout", 10*time.Minute, "per-request timeout")
	return cmd
}

// benchTransport keeps up to 100 idle connections to the endpoint, as
// OpenAI's SDKs do (max_keepalive_connections=100); Go's default keeps 2,
// so at concurrency 16, or under a --rate, most requests would open a new
// connection and TTFT would include the connect.
func benchTransport() http.RoundTripper {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConnsPerHost = 100
	return t
}

// levelName is how tables name a row's level.
func levelName(r benchRow) string {
	switch {
	case r.Cold:
		return "cold ×" + strconv.Itoa(r.Concurrency)
	case r.Rate > 0:
		return fmt.Sprintf("rate %g/s", r.Rate)
	}
	return "concurrency " + strconv.Itoa(r.Concurrency)
}

type bencher struct {
	url, key, model, prompt string
	maxTokens               int
	logprobs                bool // ask for logprobs to count each chunk's tokens
	http                    *http.Client
}

// level runs n requests with at most c in flight.
func (b *bencher) level(ctx context.Context, c, n int, bar *progressbar.ProgressBar) benchRow {
	results := make([]benchResult, n)
	next := make(chan int)
	var wg sync.WaitGroup
	start := time.Now()
	for range c {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				results[i] = b.one(ctx)
				if bar != nil {
					bar.Add(1)
				}
			}
		}()
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	return summarize(c, results, time.Since(start))
}

// one sends a streaming request and times it.
func (b *bencher) one(ctx context.Context) (r benchResult) {
	fields := map[string]any{
		"model":          b.model,
		"messages":       []map[string]string{{"role": "user", "content": b.prompt}},
		"max_tokens":     b.maxTokens,
		"stream":         true,
		"stream_options": map[string]bool{"include_usage": true},
	}
	if b.logprobs {
		// One entry per token in each chunk: the exact count per chunk
		// that TPOT needs (servers coalesce tokens into chunks).
		fields["logprobs"] = true
	}
	body, _ := json.Marshal(fields)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, b.url, bytes.NewReader(body))
	if err != nil {
		return benchResult{err: err}
	}
	req.Header.Set("Content-Type", "application/json")
	if b.key != "" {
		req.Header.Set("Authorization", "Bearer "+b.key)
	}
	r.started = time.Now()
	resp, err := b.http.Do(req)
	if err != nil {
		return benchResult{err: err}
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		var e apiErr
		e.Status = resp.StatusCode
		json.NewDecoder(resp.Body).Decode(&e.Body)
		if b.logprobs && e.Body.Error.Param != nil && *e.Body.Error.Param == "logprobs" {
			return benchResult{err: fmt.Errorf("%w (the endpoint refuses logprobs: use --token-count usage)", &e)}
		}
		return benchResult{err: &e}
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	var last time.Time
	chunks, usageTokens := 0, -1
	for sc.Scan() {
		line := sc.Bytes()
		data, ok := bytes.CutPrefix(line, []byte("data: "))
		if !ok {
			continue
		}
		if string(data) == "[DONE]" {
			r.total = time.Since(r.started)
			// Read to the end so the connection is reused, as SDKs do.
			io.Copy(io.Discard, resp.Body)
			break
		}
		var ch struct {
			Choices []struct {
				Delta struct {
					Content string `json:"content"`
				} `json:"delta"`
				Logprobs *struct {
					Content []json.RawMessage `json:"content"`
				} `json:"logprobs"`
			} `json:"choices"`
			Usage *struct {
				CompletionTokens int `json:"completion_tokens"`
			} `json:"usage"`
			Error *struct {
				Message string `json:"message"`
			} `json:"error"`
		}
		if err := json.Unmarshal(data, &ch); err != nil {
			return benchResult{err: fmt.Errorf("bad chunk: %w", err)}
		}
		if ch.Error != nil {
			return benchResult{err: errors.New(ch.Error.Message)}
		}
		if ch.Usage != nil {
			usageTokens = ch.Usage.CompletionTokens
		}
		if len(ch.Choices) == 0 {
			continue
		}
		now := time.Now()
		tc := tokenChunk{at: now.Sub(r.started), bytes: len(ch.Choices[0].Delta.Content), tokens: -1}
		if lp := ch.Choices[0].Logprobs; lp != nil && lp.Content != nil {
			tc.tokens = len(lp.Content)
		}
		if tc.bytes > 0 || tc.tokens > 0 {
			r.chunks = append(r.chunks, tc)
		}
		if tc.bytes > 0 {
			if chunks == 0 {
				r.ttft = now.Sub(r.started)
			} else {
				r.itl = append(r.itl, now.Sub(last))
			}
			last = now
			chunks++
		}
	}
	if err := sc.Err(); err != nil {
		return benchResult{err: err}
	}
	if r.total == 0 {
		r.total = time.Since(r.started)
	}
	r.tokens = chunks
	if usageTokens >= 0 {
		r.tokens = usageTokens // chunks may carry several tokens
	}
	r.counted = countTokens(r.chunks, usageTokens)
	return r
}

func summarize(c int, results []benchResult, wall time.Duration) benchRow {
	row := benchRow{Concurrency: c, Requests: len(results), WallSeconds: wall.Seconds()}
	var ttft, e2e, itl, tpot []float64
	for _, r := range results {
		if r.err != nil {
			row.Errors++
			if row.FirstError == "" {
				row.FirstError = r.err.Error()
			}
			continue
		}
		ttft = append(ttft, ms(r.ttft))
		e2e = append(e2e, ms(r.total))
		for _, d := range r.itl {
			itl = append(itl, ms(d))
		}
		for _, d := range tokenGaps(r.chunks) {
			tpot = append(tpot, ms(d))
		}
		if countRank[r.counted] > countRank[row.TokenCounts] {
			row.TokenCounts = r.counted
		}
		row.OutputTokens += r.tokens
	}
	row.TTFTp50ms, row.TTFTp90ms, row.TTFTp99ms = pct(ttft, 50), pct(ttft, 90), pct(ttft, 99)
	row.E2Ep50ms, row.E2Ep90ms, row.E2Ep99ms = pct(e2e, 50), pct(e2e, 90), pct(e2e, 99)
	row.ITLmeanms, row.TPOTmeanms = mean(itl), mean(tpot)
	row.ITLp50ms, row.ITLp90ms, row.ITLp99ms = pct(itl, 50), pct(itl, 90), pct(itl, 99)
	row.TPOTp50ms, row.TPOTp90ms, row.TPOTp99ms = pct(tpot, 50), pct(tpot, 90), pct(tpot, 99)
	row.TokensPerSec = float64(row.OutputTokens) / wall.Seconds()
	row.RequestsPerS = float64(len(results)-row.Errors) / wall.Seconds()
	return row
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// countRank orders the ways of counting tokens from exact to rough: a
// level reports its roughest.
var countRank = map[string]int{"": 0, countLogprobs: 1, countUsage: 2, countChunks: 3}

func mean(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	sum := 0.0
	for _, x := range v {
		sum += x
	}
	return sum / float64(len(v))
}

// pct is the nearest-rank percentile.
func pct(v []float64, p float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	i := int(float64(len(s))*p/100+0.5) - 1
	return s[min(max(i, 0), len(s)-1)]
}

// coldBurst runs burst while watching the deployment's runners, and
// returns its row with the start phases of the first runner that became
// ready (nil when none was seen, e.g. the endpoint is not infer).
func coldBurst(ctx context.Context, model string, burst func() benchRow) (benchRow, map[string]float64) {
	c, err := newClient()
	if err != nil {
		return burst(), nil
	}
	watch, stop := context.WithCancel(ctx)
	seen := make(chan map[string]float64, 1)
	go func() {
		var phases map[string]float64
		defer func() { seen <- phases }()
		for {
			var d struct {
				Runners []struct {
					StartedAt time.Time `json:"started_at"`
					ColdStart struct {
						FetchStarted time.Time `json:"fetch_started"`
						FetchDone    time.Time `json:"fetch_done"`
						LoadDone     time.Time `json:"load_done"`
						Ready        time.Time `json:"ready"`
						FirstToken   time.Time `json:"first_token"`
					} `json:"cold_start"`
				} `json:"runners"`
			}
			if err := c.json(watch, http.MethodGet, "/v1/deployments/"+model, nil, &d); err == nil {
				for _, r := range d.Runners {
					cs := r.ColdStart
					if cs.FirstToken.IsZero() || cs.FetchStarted.IsZero() {
						continue
					}
					phases = map[string]float64{
						"process":     ms(cs.FetchStarted.Sub(r.StartedAt)),
						"fetch":       ms(cs.FetchDone.Sub(cs.FetchStarted)),
						"load":        ms(cs.LoadDone.Sub(cs.FetchDone)),
						"ready":       ms(cs.Ready.Sub(cs.LoadDone)),
						"first_token": ms(cs.FirstToken.Sub(cs.Ready)),
					}
					return
				}
			}
			select {
			case <-watch.Done():
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()
	row := burst()
	// The runner reports its first token in its next heartbeat.
	select {
	case p := <-seen:
		stop()
		return row, p
	case <-time.After(3 * time.Second):
	}
	stop()
	return row, <-seen
}

// waitForZero waits until an infer deployment has no runners.
func waitForZero(ctx context.Context, model string, timeout time.Duration) error {
	c, err := newClient()
	if err != nil {
		return err
	}
	deadline := time.Now().Add(timeout)
	for {
		var d deploymentInfo
		if err := c.json(ctx, http.MethodGet, "/v1/deployments/"+model, nil, &d); err != nil {
			return fmt.Errorf("--cold: reading deployment %s: %w", model, err)
		}
		if len(d.Runners) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("--cold: %s still has %d runners after %s", model, len(d.Runners), timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// allFailed is the error of a benchmark in which some level had no
// successful request: its numbers measure nothing, and a script must not
// mistake them for a result.
func allFailed(rows []benchRow) error {
	for _, r := range rows {
		if r.Requests > 0 && r.Errors == r.Requests {
			level := levelName(r)
			if r.Cold {
				level = "the cold burst"
			}
			return fmt.Errorf("every request failed (%d of %d at %s); first error: %s", r.Errors, r.Requests, level, r.FirstError)
		}
	}
	return nil
}
