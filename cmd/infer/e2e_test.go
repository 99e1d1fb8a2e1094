package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/infer-run/infer/internal/blob"
	"github.com/infer-run/infer/internal/hugepages"
	"github.com/infer-run/infer/internal/testenv"
)

// buildInfer compiles the infer binary for tests that run it as users do.
func buildInfer(t testing.TB, flags ...string) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "infer")
	cmd := exec.Command("go", append(append([]string{"build"}, flags...), "-o", bin, ".")...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("building infer: %v", err)
	}
	return bin
}

// platform is a running `infer dev` against real Postgres, NATS JetStream
// and MinIO.
type platform struct {
	t   testing.TB
	bin string
	url string
	// metrics is the base URL of infer dev's --metrics-addr.
	metrics string
	home    string
	key     string
	dbURL   string
	env     []string
	log     string // infer dev's stdout and stderr
	s3      blob.S3Config
	pid     int
	// exited is closed when infer dev has exited, with exitErr.
	exited  chan struct{}
	exitErr error
}

func startPlatform(t testing.TB) *platform {
	t.Helper()
	return startPlatformWith(t, platformOptions{})
}

// platformOptions changes what startPlatformWith runs against.
type platformOptions struct {
	nats string   // NATS URL; empty: a fresh embedded test server
	env  []string // more environment for infer dev and the CLI
	// dbAddr and s3Addr, when set, replace the host:port infer dev uses
	// for Postgres and MinIO (a proxy the test can cut); p.dbURL and p.s3
	// stay direct.
	dbAddr, s3Addr func(direct string) string
	// dbURL and s3, when set, are the Postgres database and MinIO to use
	// instead of a fresh database on the local server and a fresh
	// plain-HTTP MinIO; an s3 with Secure is given to infer as https://.
	dbURL string
	s3    *blob.S3Config
	// localBlobs runs without S3: weights go to INFER_HOME/blobs (and no
	// MinIO is started).
	localBlobs bool
}

func startPlatformWith(t testing.TB, o platformOptions) *platform {
	t.Helper()
	bin := buildInfer(t)
	if o.s3 == nil && !o.localBlobs {
		s3 := testenv.MinIO(t)
		o.s3 = &s3
	}
	var s3 blob.S3Config // empty with localBlobs: INFER_S3_ENDPOINT is unset
	if o.s3 != nil {
		s3 = *o.s3
	}
	if o.nats == "" {
		o.nats = testenv.NATS(t)
	}
	if o.dbURL == "" {
		o.dbURL = testenv.Postgres(t)
	}
	p := &platform{
		s3:    s3,
		t:     t,
		bin:   bin,
		home:  filepath.Join(t.TempDir(), "home"),
		key:   "sk-infer-e2e-admin",
		dbURL: o.dbURL,
	}
	addr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	p.url = "http://" + addr
	metricsAddr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	p.metrics = "http://" + metricsAddr
	devDB, devS3 := p.dbURL, s3.Endpoint
	if o.dbAddr != nil {
		u, err := url.Parse(devDB)
		if err != nil {
			t.Fatal(err)
		}
		u.Host = o.dbAddr(u.Host)
		devDB = u.String()
	}
	if o.s3Addr != nil {
		devS3 = o.s3Addr(devS3)
	}
	if s3.Secure {
		devS3 = "https://" + devS3
	}
	p.env = append(os.Environ(),
		"DATABASE_URL="+devDB,
		"INFER_NATS_URL="+o.nats,
		"INFER_S3_ENDPOINT="+devS3,
		"INFER_S3_ACCESS_KEY="+s3.AccessKey,
		"INFER_S3_SECRET_KEY="+s3.SecretKey,
		"INFER_S3_BUCKET="+s3.Bucket,
		"INFER_ADMIN_KEY="+p.key,
		"INFER_URL="+p.url,
		"INFER_API_KEY="+p.key,
		"INFER_HOME="+p.home,
		// Tests find a deployment's runners by their command line (as a
		// person would with ps), which a spare's does not name; the warm
		// pool has its own test (TestWarmRunner).
		"INFER_WARM_RUNNERS=0",
	)
	p.env = append(p.env, o.env...)
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin, "dev", "--addr", addr, "--metrics-addr", metricsAddr)
	cmd.Env = p.env
	logFile, err := os.Create(filepath.Join(t.TempDir(), "dev.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logFile, logFile
	p.log = logFile.Name()
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	cmd.WaitDelay = 20 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p.pid = cmd.Process.Pid
	p.exited = make(chan struct{})
	go func() {
		p.exitErr = cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		cancel()
		<-p.exited
		logFile.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logFile.Name())
			t.Logf("infer dev log:\n%s", b)
			logs, _ := filepath.Glob(filepath.Join(p.home, "logs", "*.log"))
			for _, l := range logs {
				b, _ := os.ReadFile(l)
				t.Logf("%s:\n%s", filepath.Base(l), lastLines(string(b), 40))
			}
		}
	})
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get(p.url + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return p
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("infer dev did not become healthy: %v", err)
		}
		select {
		case <-p.exited:
			// A bad setting stops it at once; say so now, not in 60 s.
			t.Fatalf("infer dev exited while starting: %v", p.exitErr)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func lastLines(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// cli runs the infer CLI and returns its output.
func (p *platform) cli(args ...string) (string, error) {
	cmd := exec.Command(p.bin, args...)
	cmd.Env = p.env
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// deployStories deploys stories260K as "stories" with the CLI and more
// flags, failing the test if the CLI does.
func (p *platform) deployStories(flags ...string) {
	p.t.Helper()
	args := append([]string{"deploy", "stories", "--weights", testenv.ModelPath(p.t)}, flags...)
	if out, err := p.cli(args...); err != nil {
		p.t.Fatalf("infer deploy: %v\n%s", err, out)
	}
}

// request sends a JSON request to the activator with key (none if empty).
func (p *platform) request(method, path, key, body string) (*http.Response, error) {
	req, err := http.NewRequest(method, p.url+path, strings.NewReader(body))
	if err != nil {
		return nil, err
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	req.Header.Set("Content-Type", "application/json")
	return (&http.Client{Timeout: 2 * time.Minute}).Do(req)
}

func (p *platform) post(path, key, body string) (*http.Response, error) {
	return p.request(http.MethodPost, path, key, body)
}

// mustPost posts body with the admin key and fails the test, naming what,
// unless the answer is 200; it returns the answer's body.
func (p *platform) mustPost(what, path, body string) []byte {
	p.t.Helper()
	status, _, b := p.do(http.MethodPost, path, p.key, body)
	if status != http.StatusOK {
		p.t.Fatalf("%s: %d %s", what, status, b)
	}
	return b
}

// runnerPIDs lists the `infer runner` processes serving a deployment of
// this platform (found through /proc, as a person would with ps).
func (p *platform) runnerPIDs(deployment string) []string {
	return p.runnerProcs(func(cmdline string, _ []string) bool {
		return strings.Contains(cmdline, "\x00--deployment\x00"+deployment+"\x00")
	})
}

// runnerProcs lists this platform's `infer runner` processes whose
// command line match accepts.
func (p *platform) runnerProcs(match func(cmdline string, args []string) bool) []string {
	var pids []string
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(string(b), "\x00")
		if len(args) > 2 && args[0] == p.bin && args[1] == "runner" && match(string(b), args) {
			pids = append(pids, e.Name())
		}
	}
	return pids
}

func (p *platform) waitNoRunners(deployment string, timeout time.Duration) time.Duration {
	p.t.Helper()
	start := time.Now()
	for len(p.runnerPIDs(deployment)) > 0 {
		if time.Since(start) > timeout {
			p.t.Fatalf("runner of %s still running after %s", deployment, timeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return time.Since(start)
}

type chunk struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Model   string `json:"model"`
	Choices []struct {
		Delta struct {
			Role    string `json:"role"`
			Content string `json:"content"`
		} `json:"delta"`
		Text         string  `json:"text"` // completion chunks
		FinishReason *string `json:"finish_reason"`
	} `json:"choices"`
	Usage *struct {
		PromptTokens     int `json:"prompt_tokens"`
		CompletionTokens int `json:"completion_tokens"`
		TotalTokens      int `json:"total_tokens"`
	} `json:"usage"`
}

// readSSE reads a chat completion stream to [DONE].
func readSSE(t *testing.T, r io.Reader) (chunks []chunk, comments []string) {
	t.Helper()
	sc := bufio.NewScanner(r)
	done := false
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
		case strings.HasPrefix(line, ":"):
			comments = append(comments, strings.TrimSpace(line[1:]))
		case line == "data: [DONE]":
			done = true
		case strings.HasPrefix(line, "data: "):
			var c chunk
			if err := json.Unmarshal([]byte(line[6:]), &c); err != nil {
				t.Fatalf("bad chunk %q: %v", line, err)
			}
			chunks = append(chunks, c)
		default:
			t.Fatalf("unexpected SSE line %q", line)
		}
	}
	if !done {
		t.Fatalf("stream ended without [DONE] (err %v)", sc.Err())
	}
	return chunks, comments
}

func looksLikeEnglish(text string) bool {
	common := 0
	for _, w := range strings.Fields(strings.ToLower(text)) {
		switch strings.Trim(w, ".,!?\"'") {
		case "the", "a", "was", "she", "he", "to", "and", "her", "his", "they", "it", "in", "of", "day", "said":
			common++
		}
	}
	return common >= 3
}

// TestEndToEnd walks the path a user takes: deploy weights, call the
// endpoint at zero runners, get a cold-started streamed answer, watch the
// runner exit after the idle timeout, cold-start again, and find usage
// records in Postgres.
func TestEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test builds the binary and starts MinIO")
	}
	p := startPlatform(t)
	model := testenv.ModelPath(t)

	const idle = 3 * time.Second
	out, err := p.cli("deploy", "stories", "--weights", model, "--idle-timeout", idle.String())
	if err != nil {
		t.Fatalf("infer deploy: %v\n%s", err, out)
	}
	if !strings.Contains(out, "stories") {
		t.Errorf("deploy output does not name the deployment: %s", out)
	}
	time.Sleep(300 * time.Millisecond)
	if pids := p.runnerPIDs("stories"); len(pids) != 0 {
		t.Fatalf("deploy started runners %v; runners must start only on demand", pids)
	}

	// First request at zero: streams from a cold-started runner.
	resp, err := p.post("/v1/chat/completions", p.key,
		`{"model":"stories","messages":[{"role":"user","content":"Once upon a time"}],"stream":true,"max_tokens":60,"temperature":0,"stream_options":{"include_usage":true}}`)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("status %d, content type %q: %s", resp.StatusCode, resp.Header.Get("Content-Type"), b)
	}
	chunks, _ := readSSE(t, resp.Body)
	resp.Body.Close()
	if len(chunks) < 3 {
		t.Fatalf("only %d chunks", len(chunks))
	}
	if chunks[0].Choices[0].Delta.Role != "assistant" || chunks[0].Object != "chat.completion.chunk" || chunks[0].Model != "stories" {
		t.Errorf("first chunk %+v: want role assistant, object chat.completion.chunk, model stories", chunks[0])
	}
	var text strings.Builder
	var finish string
	var streamedUsage *chunk
	for _, c := range chunks {
		if c.Usage != nil {
			streamedUsage = &c
			continue
		}
		text.WriteString(c.Choices[0].Delta.Content)
		if c.Choices[0].FinishReason != nil {
			finish = *c.Choices[0].FinishReason
		}
	}
	if !looksLikeEnglish(text.String()) {
		t.Errorf("streamed text does not read like a story: %q", text.String())
	}
	if finish != "length" && finish != "stop" {
		t.Errorf("finish_reason %q", finish)
	}
	if streamedUsage == nil || streamedUsage.Usage.CompletionTokens == 0 || streamedUsage.Usage.PromptTokens == 0 {
		t.Fatalf("no usage chunk with token counts: %+v", streamedUsage)
	}

	// The runner exits after the idle timeout, not before.
	pids := p.runnerPIDs("stories")
	if len(pids) != 1 {
		t.Fatalf("want exactly one runner after the first request, have %v", pids)
	}
	// The local driver starts runners with huge pages (internal/hugepages).
	if env, _ := os.ReadFile(filepath.Join("/proc", pids[0], "environ")); !bytes.Contains(env, []byte("\x00GLIBC_TUNABLES="+hugepages.Tunable+"\x00")) {
		t.Errorf("runner %s does not run with %s", pids[0], hugepages.Tunable)
	}
	gone := p.waitNoRunners("stories", idle+15*time.Second)
	if gone < idle-500*time.Millisecond {
		t.Errorf("runner exited %s after the request; idle timeout is %s", gone, idle)
	}

	// The second request cold-starts again; non-streaming this time.
	body := p.mustPost("second request", "/v1/completions", `{"model":"stories","prompt":"The little dog","max_tokens":30,"temperature":0}`)
	var completion struct {
		Object  string `json:"object"`
		Choices []struct {
			Text         string `json:"text"`
			FinishReason string `json:"finish_reason"`
		} `json:"choices"`
		Usage struct {
			PromptTokens     int `json:"prompt_tokens"`
			CompletionTokens int `json:"completion_tokens"`
		} `json:"usage"`
	}
	if err := json.Unmarshal(body, &completion); err != nil {
		t.Fatal(err)
	}
	if completion.Object != "text_completion" || completion.Usage.CompletionTokens != 30 || completion.Choices[0].FinishReason != "length" {
		t.Errorf("completion %s: want text_completion with 30 tokens and finish_reason length", body)
	}

	// Every finished request left a usage record with the client's counts.
	want := map[int]int{streamedUsage.Usage.CompletionTokens: streamedUsage.Usage.PromptTokens, completion.Usage.CompletionTokens: completion.Usage.PromptTokens}
	conn, err := pgx.Connect(context.Background(), p.dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var rows []struct {
		prompt, completion  int
		ttft, queue, total  float64
		cold                bool
		key, status, finish string
	}
	for deadline := time.Now().Add(15 * time.Second); ; {
		rows = rows[:0]
		rs, err := conn.Query(context.Background(), `SELECT prompt_tokens, completion_tokens, ttft_ms, queue_wait_ms, duration_ms, cold_start, key_id, status, finish_reason FROM usage WHERE deployment = 'stories'`)
		if err != nil {
			t.Fatal(err)
		}
		for rs.Next() {
			var r = struct {
				prompt, completion  int
				ttft, queue, total  float64
				cold                bool
				key, status, finish string
			}{}
			if err := rs.Scan(&r.prompt, &r.completion, &r.ttft, &r.queue, &r.total, &r.cold, &r.key, &r.status, &r.finish); err != nil {
				t.Fatal(err)
			}
			rows = append(rows, r)
		}
		if len(rows) >= 2 || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if len(rows) != 2 {
		t.Fatalf("want 2 usage rows, have %d", len(rows))
	}
	for _, r := range rows {
		if want[r.completion] != r.prompt {
			t.Errorf("usage row %+v does not match what the client was told (%v)", r, want)
		}
		if !r.cold || r.key == "" || r.status != "ok" || r.ttft <= 0 || r.total < r.ttft || r.queue < 0 {
			t.Errorf("usage row %+v: want a cold start with key, status ok and ordered timings", r)
		}
	}

	// infer ls and usage show it.
	if out, err := p.cli("ls"); err != nil || !strings.Contains(out, "stories") {
		t.Errorf("infer ls: %v\n%s", err, out)
	}
	if out, err := p.cli("usage", "--json"); err != nil || !strings.Contains(out, `"stories"`) {
		t.Errorf("infer usage: %v\n%s", err, out)
	}

	// Metrics moved with the traffic: requests, TTFT and both cold starts.
	// They name every tenant's deployments, so they are on --metrics-addr,
	// and the public port has no /metrics.
	if code, _, body := p.do(http.MethodGet, "/metrics", "", ""); code != 404 || strings.Contains(string(body), "stories") {
		t.Errorf("GET /metrics on the API port: %d %.300s; want 404", code, body)
	}
	if code, _, body := p.do(http.MethodGet, "/metrics", p.key, ""); code != 404 || strings.Contains(string(body), "stories") {
		t.Errorf("GET /metrics on the API port with the admin key: %d %.300s; want 404", code, body)
	}
	mresp, err := http.Get(p.metrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(mresp.Body)
	mresp.Body.Close()
	for _, want := range []string{
		`infer_requests_total{deployment="stories",status="ok"} 2`,
		`infer_cold_start_seconds_count{deployment="stories"} 2`,
		`infer_runner_starts_total{deployment="stories"} 2`,
		`infer_time_to_first_token_seconds_count{deployment="stories"} 2`,
	} {
		if !strings.Contains(string(metrics), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}

	// infer bench drives the endpoint and reports sane numbers.
	out, err = p.cli("bench", "--model", "stories", "--concurrency", "1,2", "--requests", "4", "--max-tokens", "16", "--json")
	if err != nil {
		t.Fatalf("infer bench: %v\n%s", err, out)
	}
	var benchRows []struct {
		Concurrency  int     `json:"concurrency"`
		Errors       int     `json:"errors"`
		OutputTokens int     `json:"output_tokens"`
		TTFTp50      float64 `json:"ttft_p50_ms"`
		E2Ep99       float64 `json:"e2e_p99_ms"`
	}
	if err := json.Unmarshal([]byte(out), &benchRows); err != nil || len(benchRows) != 2 {
		t.Fatalf("bench output %q: %v", out, err)
	}
	for _, r := range benchRows {
		if r.Errors != 0 || r.OutputTokens != 4*16 || r.TTFTp50 <= 0 || r.E2Ep99 < r.TTFTp50 {
			t.Errorf("bench row %+v: want 64 tokens, no errors, ordered latencies", r)
		}
	}

	// A user key made with the CLI calls the model, may not deploy, and
	// stops working when revoked.
	out, err = p.cli("keys", "create", "app", "--json")
	if err != nil {
		t.Fatalf("infer keys create: %v\n%s", err, out)
	}
	var created struct{ ID, Key, Role string }
	if err := json.Unmarshal([]byte(out), &created); err != nil || created.Role != "user" || !strings.HasPrefix(created.Key, "sk-") {
		t.Fatalf("keys create output %q: %v", out, err)
	}
	status := func(path, body string) int {
		resp, err := p.post(path, created.Key, body)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	const call = `{"model":"stories","prompt":"Once","max_tokens":3}`
	if got := status("/v1/completions", call); got != 200 {
		t.Errorf("user key calling the model: %d", got)
	}
	if got := status("/v1/keys", `{"name":"x"}`); got != 403 {
		t.Errorf("user key creating keys: %d, want 403", got)
	}
	if out, err := p.cli("keys", "revoke", created.ID); err != nil {
		t.Fatalf("infer keys revoke: %v\n%s", err, out)
	}
	deadline := time.Now().Add(10 * time.Second)
	for status("/v1/completions", call) != 401 {
		if time.Now().After(deadline) {
			t.Fatal("revoked key still works after 10s")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestBadInput checks that each mistake gets OpenAI's error shape with the
// right status, nothing is stored for a bad upload, and the server keeps
// serving.
func TestBadInput(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and starts MinIO")
	}
	p := startPlatform(t)
	notGGUF := filepath.Join(t.TempDir(), "weights.gguf")
	os.WriteFile(notGGUF, bytes.Repeat([]byte("not a model "), 1000), 0o644)
	if out, err := p.cli("deploy", "bad", "--weights", notGGUF); err == nil || !strings.Contains(out, "GGUF") {
		t.Errorf("deploying a non-GGUF file: err %v, output %q; want a failure naming GGUF", err, out)
	}
	conn, err := pgx.Connect(context.Background(), p.dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var artifacts, deployments int
	conn.QueryRow(context.Background(), `SELECT (SELECT count(*) FROM artifacts), (SELECT count(*) FROM deployments)`).Scan(&artifacts, &deployments)
	if artifacts != 0 || deployments != 0 {
		t.Errorf("a rejected upload left %d artifacts and %d deployments", artifacts, deployments)
	}

	tests := []struct {
		name, path, key, body string
		status                int
		errType, code, param  string
	}{
		{"unknown model", "/v1/chat/completions", p.key, `{"model":"nope","messages":[{"role":"user","content":"hi"}]}`, 404, "invalid_request_error", "model_not_found", "model"},
		{"no key", "/v1/chat/completions", "", `{"model":"nope","messages":[]}`, 401, "invalid_request_error", "invalid_api_key", ""},
		{"wrong key", "/v1/chat/completions", "sk-wrong", `{"model":"nope","messages":[]}`, 401, "invalid_request_error", "invalid_api_key", ""},
		{"malformed JSON", "/v1/chat/completions", p.key, `{"model":`, 400, "invalid_request_error", "", ""},
		{"no messages", "/v1/chat/completions", p.key, `{"model":"x","messages":[]}`, 400, "invalid_request_error", "", "messages"},
		{"bad temperature", "/v1/chat/completions", p.key, `{"model":"x","messages":[{"role":"user","content":"hi"}],"temperature":9}`, 400, "invalid_request_error", "", "temperature"},
		{"n > 16", "/v1/completions", p.key, `{"model":"x","prompt":"hi","n":17}`, 400, "invalid_request_error", "", "n"},
		{"unknown route", "/v1/nothing", p.key, `{}`, 404, "invalid_request_error", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := p.post(tt.path, tt.key, tt.body)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var body apiErr // the CLI's reading of an error
			e := &body.Body
			if err := json.NewDecoder(resp.Body).Decode(e); err != nil {
				t.Fatalf("error body is not JSON: %v", err)
			}
			if resp.StatusCode != tt.status || e.Error.Type != tt.errType || e.Error.Message == "" {
				t.Errorf("got %d %+v, want %d type %s", resp.StatusCode, e.Error, tt.status, tt.errType)
			}
			if tt.code != "" && (e.Error.Code == nil || *e.Error.Code != tt.code) {
				t.Errorf("code %v, want %s", e.Error.Code, tt.code)
			}
			if tt.param != "" && (e.Error.Param == nil || *e.Error.Param != tt.param) {
				t.Errorf("param %v, want %s", e.Error.Param, tt.param)
			}
		})
	}
	resp, err := http.Get(p.url + "/healthz")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("server unhealthy after bad input: %v", err)
	}
	resp.Body.Close()
}

// endlessStream deploys stories260K with the given idle timeout, starts a
// completion stream that will not end by itself, and returns it once the
// first token has arrived, with the PID of the one runner generating it;
// the stream is closed when the test ends.
func (p *platform) endlessStream(idleTimeout string) (*bufio.Reader, string) {
	t := p.t
	t.Helper()
	p.deployStories("--idle-timeout", idleTimeout)
	br := p.streamToFirstToken(endlessCall)
	pids := p.runnerPIDs("stories")
	if len(pids) != 1 {
		t.Fatalf("runners %v", pids)
	}
	return br, pids[0]
}

// endlessCall is a completion stream of stories that will not end by
// itself within any test.
const endlessCall = `{"model":"stories","prompt":"Once upon a time","stream":true}`

// streamToFirstToken posts a streaming completion and returns the stream
// once its first token has arrived; it is closed when the test ends.
func (p *platform) streamToFirstToken(body string) *bufio.Reader {
	t := p.t
	t.Helper()
	resp, err := p.post("/v1/completions", p.key, body)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return testenv.UntilFirstToken(t, resp.Body)
}

// TestRunnerLostMidGeneration: a runner that stops answering while it
// streams (frozen with SIGSTOP, then killed) ends its client's stream with
// an SSE error event instead of a hang, and the deployment keeps serving
// with a new runner. TestRunnerKilledMidGeneration kills one outright.
func TestRunnerLostMidGeneration(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and starts MinIO")
	}
	p := startPlatform(t)
	br, pid := p.endlessStream("30s")
	if err := exec.Command("kill", "-STOP", pid).Run(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	rest, _ := io.ReadAll(br)
	exec.Command("kill", "-KILL", pid).Run()
	if !strings.Contains(string(rest), "event: error") || !strings.Contains(string(rest), "runner_lost") || !strings.HasSuffix(strings.TrimSpace(string(rest)), "data: [DONE]") {
		t.Fatalf("stream after the runner froze ended with %q; want an error event naming runner_lost, then [DONE]", lastLines(string(rest), 4))
	}
	if waited := time.Since(start); waited > 20*time.Second {
		t.Errorf("the client learned of the lost runner only after %s", waited)
	}

	// The deployment serves again from a new runner.
	p.mustPost("request after the runner died", "/v1/completions", `{"model":"stories","prompt":"The cat","max_tokens":5}`)
}
