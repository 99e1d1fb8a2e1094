package activator_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/openai/openai-go"
	"github.com/openai/openai-go/option"

	"github.com/infer-run/infer/activator"
	"github.com/infer-run/infer/internal/blob"
	"github.com/infer-run/infer/internal/testenv"
	"github.com/infer-run/infer/internal/wire"
	"github.com/infer-run/infer/registry"
	"github.com/infer-run/infer/runner"
)

const adminKey = "sk-infer-activator-test"

// harness is an activator in this process against real Postgres and NATS
// JetStream, with blobs in a directory. Runners are started explicitly, in
// process, so each test controls whether any exist.
type harness struct {
	t     testing.TB
	url   string
	nc    *nats.Conn
	store *registry.Store
	blobs blob.Store
	// blobDir is where blobs keeps its objects.
	blobDir string
	art     registry.Artifact
}

func newHarness(t testing.TB) *harness {
	t.Helper()
	// The tests' webhook receivers are httptest servers on 127.0.0.1.
	return newHarnessWith(t, activator.Config{AllowPrivateWebhooks: true})
}

// newHarnessWith is newHarness with cfg for its activator; the harness
// fills in the registry, the uploader, NATS, and a logger if cfg has none.
func newHarnessWith(t testing.TB, cfg activator.Config) *harness {
	t.Helper()
	ctx := context.Background()
	store, err := registry.Open(ctx, testenv.Postgres(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(store.Close)
	admin, err := store.EnsureAdminKey(ctx, "default", adminKey)
	if err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(testenv.NATS(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	blobDir := t.TempDir()
	blobs, err := blob.NewDir(blobDir)
	if err != nil {
		t.Fatal(err)
	}
	up := &registry.Uploader{Store: store, Blobs: blobs}
	cfg.Registry, cfg.Uploader, cfg.NATS = store, up, nc
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	srv, err := activator.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(hs.Close)

	f, err := os.Open(testenv.ModelPath(t))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	art, err := up.Upload(ctx, f, -1)
	if err != nil {
		t.Fatal(err)
	}
	// As POST /v1/artifacts does: the admin key's tenant uploaded it.
	if err := store.AddArtifactOwner(ctx, admin.TenantID, art.SHA256); err != nil {
		t.Fatal(err)
	}
	return &harness{t: t, url: hs.URL, nc: nc, store: store, blobs: blobs, blobDir: blobDir, art: art}
}

// deploy creates a deployment through the API.
func (h *harness) deploy(name string, spec map[string]any) {
	h.t.Helper()
	spec["artifact"] = h.art.SHA256
	body, _ := json.Marshal(spec)
	resp := h.do(http.MethodPut, "/v1/deployments/"+name, string(body))
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		h.t.Fatalf("deploy %s: %d %s", name, resp.StatusCode, b)
	}
	resp.Body.Close()
}

// startRunner runs a runner for a deployment in this process until the
// test ends.
func (h *harness) startRunner(deployment string, parallel, ctxLen int) {
	h.t.Helper()
	h.startRunnerWith(runner.Config{Deployment: deployment, Engine: runner.EngineConfig{Parallel: parallel, Context: ctxLen}})
}

// startRunnerWith is startRunner with more of the runner's configuration;
// it fills in the ID, the artifact and the cache.
func (h *harness) startRunnerWith(cfg runner.Config) {
	h.t.Helper()
	cfg.ID = wire.NewID(4)
	cfg.Artifact = runner.Artifact{SHA256: h.art.SHA256, ObjectKey: h.art.ObjectKey, Size: h.art.Size}
	cfg.Cache = &runner.Cache{Dir: h.t.TempDir(), Blobs: h.blobs}
	r, err := runner.New(cfg, h.nc, slog.Default())
	if err != nil {
		h.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Run(ctx, nil); close(done) }()
	h.t.Cleanup(func() { cancel(); <-done })
}

func (h *harness) do(method, path, body string) *http.Response {
	h.t.Helper()
	return h.doAs(adminKey, method, path, body)
}

// doAs is do with another API key.
func (h *harness) doAs(key, method, path, body string) *http.Response {
	h.t.Helper()
	req, _ := http.NewRequest(method, h.url+path, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := (&http.Client{Timeout: 60 * time.Second}).Do(req)
	if err != nil {
		h.t.Fatal(err)
	}
	return resp
}

func (h *harness) client() openai.Client {
	return openai.NewClient(option.WithBaseURL(h.url+"/v1"), option.WithAPIKey(adminKey), option.WithMaxRetries(0))
}

func TestSDKChatAndCompletions(t *testing.T) {
	h := newHarness(t)
	h.deploy("stories", map[string]any{"parallel": 4})
	h.startRunner("stories", 4, 512)
	ctx := context.Background()
	c := h.client()

	// Non-streaming chat, greedy.
	chat, err := c.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{
		Model:       "stories",
		Messages:    []openai.ChatCompletionMessageParamUnion{openai.UserMessage("Once upon a time")},
		MaxTokens:   openai.Int(25),
		Temperature: openai.Float(0),
	})
	if err != nil {
		t.Fatal(err)
	}
	if chat.Object != "chat.completion" || chat.Choices[0].Message.Content == "" || chat.Choices[0].FinishReason != "length" || chat.Usage.CompletionTokens != 25 || chat.Usage.TotalTokens != chat.Usage.PromptTokens+25 {
		t.Errorf("chat completion %+v", chat)
	}

	// Streaming chat gives the same greedy text, with usage at the end.
	stream := c.Chat.Completions.NewStreaming(ctx, openai.ChatCompletionNewParams{
		Model:         "stories",
		Messages:      []openai.ChatCompletionMessageParamUnion{openai.UserMessage("Once upon a time")},
		MaxTokens:     openai.Int(25),
		Temperature:   openai.Float(0),
		StreamOptions: openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)},
	})
	acc := openai.ChatCompletionAccumulator{}
	for stream.Next() {
		acc.AddChunk(stream.Current())
	}
	if err := stream.Err(); err != nil {
		t.Fatal(err)
	}
	if got, want := acc.Choices[0].Message.Content, chat.Choices[0].Message.Content; got != want {
		t.Errorf("stream text %q differs from non-stream %q", got, want)
	}
	if acc.Usage.CompletionTokens != 25 {
		t.Errorf("streamed usage %+v", acc.Usage)
	}

	// Completions with a stop string.
	comp, err := c.Completions.New(ctx, openai.CompletionNewParams{
		Model:       "stories",
		Prompt:      openai.CompletionNewParamsPromptUnion{OfString: openai.String("Once upon a time")},
		MaxTokens:   openai.Int(60),
		Temperature: openai.Float(0),
		Stop:        openai.CompletionNewParamsStopUnion{OfString: openai.String(".")},
	})
	if err != nil {
		t.Fatal(err)
	}
	if comp.Choices[0].FinishReason != "stop" || strings.Contains(comp.Choices[0].Text, ".") || comp.Choices[0].Text == "" {
		t.Errorf("completion with stop '.': %+v", comp.Choices[0])
	}

	// A seed reproduces a sampled output.
	seeded := func() string {
		r, err := c.Completions.New(ctx, openai.CompletionNewParams{
			Model: "stories", Prompt: openai.CompletionNewParamsPromptUnion{OfString: openai.String("The dog")},
			MaxTokens: openai.Int(30), Temperature: openai.Float(1), Seed: openai.Int(7),
		})
		if err != nil {
			t.Fatal(err)
		}
		return r.Choices[0].Text
	}
	if a, b := seeded(), seeded(); a != b {
		t.Errorf("seed 7 gave %q then %q", a, b)
	}

	// JSON mode: the output is constrained to a JSON object.
	js, err := c.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{
		Model:          "stories",
		Messages:       []openai.ChatCompletionMessageParamUnion{openai.UserMessage("Once upon a time")},
		MaxTokens:      openai.Int(200),
		Temperature:    openai.Float(0),
		ResponseFormat: openai.ChatCompletionNewParamsResponseFormatUnion{OfJSONObject: &openai.ResponseFormatJSONObjectParam{}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if content := strings.TrimSpace(js.Choices[0].Message.Content); !strings.HasPrefix(content, "{") {
		t.Errorf("JSON mode output does not start an object: %q", content)
	} else if js.Choices[0].FinishReason == "stop" && !json.Valid([]byte(content)) {
		t.Errorf("JSON mode finished but output is not valid JSON: %q", content)
	}

	// Models lists the deployment.
	models, err := c.Models.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(models.Data) != 1 || models.Data[0].ID != "stories" {
		t.Errorf("models %+v", models.Data)
	}
}

func TestSDKErrors(t *testing.T) {
	h := newHarness(t)
	h.deploy("stories", map[string]any{"parallel": 1, "context_length": 64})
	h.startRunner("stories", 1, 64)
	ctx := context.Background()
	c := h.client()
	tests := []struct {
		name   string
		client openai.Client
		params openai.ChatCompletionNewParams
		status int
		code   string
	}{
		{"unknown model", c, openai.ChatCompletionNewParams{Model: "nope", Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")}}, 404, "model_not_found"},
		{"bad key", openai.NewClient(option.WithBaseURL(h.url+"/v1"), option.WithAPIKey("sk-bad"), option.WithMaxRetries(0)),
			openai.ChatCompletionNewParams{Model: "stories", Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")}}, 401, "invalid_api_key"},
		{"n=2", c, openai.ChatCompletionNewParams{Model: "stories", N: openai.Int(2), Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")}}, 400, ""},
		{"prompt over the context", c, openai.ChatCompletionNewParams{Model: "stories", Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage(strings.Repeat("Once upon a time ", 50))}}, 400, "context_length_exceeded"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.client.Chat.Completions.New(ctx, tt.params)
			var apiErr *openai.Error
			if !errors.As(err, &apiErr) {
				t.Fatalf("got %v, want an *openai.Error", err)
			}
			if apiErr.StatusCode != tt.status || (tt.code != "" && apiErr.Code != tt.code) {
				t.Errorf("got %d %q (%s), want %d %q", apiErr.StatusCode, apiErr.Code, apiErr.Message, tt.status, tt.code)
			}
		})
	}
}

// TestQueueFullAndTimeout: with no runner, a deployment's queue fills to
// its limit, then answers 429 with Retry-After; queued requests end with 504
// after the queue timeout; streams hear why they wait.
func TestQueueFullAndTimeout(t *testing.T) {
	h := newHarness(t)
	h.deploy("idle", map[string]any{"queue_limit": 2, "queue_timeout": "2s"})
	body := `{"model":"idle","messages":[{"role":"user","content":"hi"}]}`

	type result struct {
		status int
		body   string
	}
	results := make(chan result, 2)
	for range 2 {
		go func() {
			resp := h.do(http.MethodPost, "/v1/chat/completions", body)
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			results <- result{resp.StatusCode, string(b)}
		}()
	}
	// Wait until both are queued, then the third is refused.
	deadline := time.Now().Add(5 * time.Second)
	for {
		resp := h.do(http.MethodGet, "/v1/deployments/idle", "")
		var st struct {
			Queued int `json:"queued"`
		}
		json.NewDecoder(resp.Body).Decode(&st)
		resp.Body.Close()
		if st.Queued == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("requests were not queued (queued=%d)", st.Queued)
		}
		time.Sleep(20 * time.Millisecond)
	}
	resp := h.do(http.MethodPost, "/v1/chat/completions", body)
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 429 || resp.Header.Get("Retry-After") == "" || !strings.Contains(string(b), "queue_full") {
		t.Errorf("third request: %d Retry-After %q %s; want 429 queue_full with Retry-After", resp.StatusCode, resp.Header.Get("Retry-After"), b)
	}
	for range 2 {
		r := <-results
		if r.status != 504 || !strings.Contains(r.body, "queue_timeout") {
			t.Errorf("queued request ended %d %s; want 504 queue_timeout", r.status, r.body)
		}
	}

	// A stream waiting at zero runners is told why, then gets the timeout
	// as an SSE error event and [DONE].
	resp = h.do(http.MethodPost, "/v1/chat/completions", `{"model":"idle","stream":true,"messages":[{"role":"user","content":"hi"}]}`)
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("stream status %d", resp.StatusCode)
	}
	var comments, events []string
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		switch line := sc.Text(); {
		case strings.HasPrefix(line, ":"):
			comments = append(comments, line)
		case strings.HasPrefix(line, "event:"), strings.HasPrefix(line, "data:"):
			events = append(events, line)
		}
	}
	if len(comments) == 0 || !strings.Contains(comments[0], "starting runner") {
		t.Errorf("comments %q: want one naming the cold-start phase", comments)
	}
	if len(events) != 3 || events[0] != "event: error" || !strings.Contains(events[1], "queue_timeout") || events[2] != "data: [DONE]" {
		t.Errorf("events %q: want an error event then [DONE]", events)
	}
}

// TestDisconnectCancels: a client that goes away frees its runner slot for
// the next request.
func TestDisconnectCancels(t *testing.T) {
	h := newHarness(t)
	h.deploy("one", map[string]any{"parallel": 1})
	h.startRunner("one", 1, 2048)

	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, h.url+"/v1/completions",
		strings.NewReader(`{"model":"one","prompt":"Once upon a time","max_tokens":100000,"stream":true}`))
	req.Header.Set("Authorization", "Bearer "+adminKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	// Read until tokens flow, then hang up mid-generation.
	br := bufio.NewReader(resp.Body)
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(line, `"text"`) {
			break
		}
	}
	cancel()
	resp.Body.Close()

	// The only slot must come free: the next request completes.
	start := time.Now()
	r := h.do(http.MethodPost, "/v1/completions", `{"model":"one","prompt":"The cat","max_tokens":5}`)
	b, _ := io.ReadAll(r.Body)
	r.Body.Close()
	if r.StatusCode != 200 {
		t.Fatalf("next request: %d %s", r.StatusCode, b)
	}
	if time.Since(start) > 20*time.Second {
		t.Errorf("next request waited %s: the cancelled one held the slot", time.Since(start))
	}
}

// TestUploadRejectsBadWeights: nothing is registered or stored.
func TestUploadRejectsBadWeights(t *testing.T) {
	h := newHarness(t)
	for _, body := range [][]byte{[]byte("definitely not gguf"), {'G', 'G', 'U', 'F', 3, 0, 0, 0, 0xff}} {
		req, _ := http.NewRequest(http.MethodPost, h.url+"/v1/artifacts", bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+adminKey)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 400 || !strings.Contains(string(b), `"invalid_request_error"`) {
			t.Errorf("upload %q: %d %s", body, resp.StatusCode, b)
		}
	}
	var n int
	h.store.Pool().QueryRow(context.Background(), "SELECT count(*) FROM artifacts").Scan(&n)
	if n != 1 { // the test model uploaded by the harness
		t.Errorf("%d artifacts registered, want 1", n)
	}
}

// TestDeploymentCannotStart: when runners keep failing to start (here the
// weights vanished from the object store), waiting requests get 503 with
// the reason instead of hanging until the queue timeout.
func TestDeploymentCannotStart(t *testing.T) {
	h := newHarness(t)
	h.deploy("broken", map[string]any{})
	if err := h.blobs.Delete(context.Background(), h.art.ObjectKey); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		r, err := runner.New(runner.Config{
			ID:         wire.NewID(4),
			Deployment: "broken",
			Artifact:   runner.Artifact{SHA256: h.art.SHA256, ObjectKey: h.art.ObjectKey, Size: h.art.Size},
			Cache:      &runner.Cache{Dir: t.TempDir(), Blobs: h.blobs},
			Engine:     runner.EngineConfig{Parallel: 1},
		}, h.nc, slog.Default())
		if err != nil {
			t.Fatal(err)
		}
		if err := r.Run(context.Background(), nil); err == nil {
			t.Fatal("runner started without its weights")
		}
	}
	h.nc.Flush()
	resp := h.do(http.MethodPost, "/v1/chat/completions", `{"model":"broken","messages":[{"role":"user","content":"hi"}]}`)
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 503 || !strings.Contains(string(b), "deployment_unavailable") || !strings.Contains(string(b), "not found") {
		t.Errorf("got %d %s; want 503 deployment_unavailable naming the missing weights", resp.StatusCode, b)
	}
	// Nothing is left queued for a runner that will never come.
	r := h.do(http.MethodGet, "/v1/deployments/broken", "")
	var st struct {
		Queued int `json:"queued"`
	}
	json.NewDecoder(r.Body).Decode(&st)
	r.Body.Close()
	if st.Queued != 0 {
		t.Errorf("%d requests left in the queue", st.Queued)
	}
}
