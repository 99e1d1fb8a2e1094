package activator_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/infer-run/infer/activator"
	"github.com/infer-run/infer/internal/blob"
	"github.com/infer-run/infer/internal/queue"
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
	// tenant is the admin key's tenant, which deploy deploys for.
	tenant string
	// metrics is the first activator's metrics registry: the API port
	// serves no /metrics.
	metrics *prometheus.Registry
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
	metrics := prometheus.NewRegistry()
	if cfg.Registerer == nil {
		cfg.Registerer = metrics
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
	return &harness{t: t, url: hs.URL, nc: nc, store: store, blobs: blobs, blobDir: blobDir, art: art, tenant: admin.TenantID, metrics: metrics}
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

// depID is the ID of the harness tenant's deployment called name: the key
// of its queue, subjects and runners.
func (h *harness) depID(name string) string {
	h.t.Helper()
	d, err := h.store.GetDeployment(context.Background(), h.tenant, name)
	if err != nil {
		h.t.Fatalf("deployment %s: %v", name, err)
	}
	return d.ID
}

// startRunner runs a runner for a deployment in this process until the
// test ends.
func (h *harness) startRunner(deployment string, parallel, ctxLen int) {
	h.t.Helper()
	h.startRunnerWith(runner.Config{Deployment: deployment, Engine: runner.EngineConfig{Parallel: parallel, Context: ctxLen}})
}

// startRunnerWith is startRunner with more of the runner's configuration;
// it fills in the ID, the deployment's ID if unset, the artifact and the
// cache.
func (h *harness) startRunnerWith(cfg runner.Config) {
	h.t.Helper()
	cfg.ID = wire.NewID(4)
	if cfg.DeploymentID == "" {
		cfg.DeploymentID = h.depID(cfg.Deployment)
	}
	if cfg.Artifact.SHA256 == "" {
		cfg.Artifact = runner.Artifact{SHA256: h.art.SHA256, ObjectKey: h.art.ObjectKey, Size: h.art.Size}
	}
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

// usageRecords subscribes to the usage records runners publish for the
// deployments until the test ends.
func (h *harness) usageRecords(deployments ...string) <-chan wire.UsageRecord {
	h.t.Helper()
	usage := make(chan wire.UsageRecord, 64)
	for _, dep := range deployments {
		sub, err := h.nc.Subscribe(wire.UsageSubject(h.depID(dep)), func(m *nats.Msg) {
			var rec wire.UsageRecord
			if json.Unmarshal(m.Data, &rec) == nil {
				usage <- rec
			}
		})
		if err != nil {
			h.t.Fatal(err)
		}
		h.t.Cleanup(func() { sub.Unsubscribe() })
	}
	return usage
}

// upload posts weights to POST /v1/artifacts with key; size is the
// announced Content-Length, or -1 to send the body chunked.
func (h *harness) upload(key string, body io.Reader, size int64) *http.Response {
	h.t.Helper()
	req, _ := http.NewRequest(http.MethodPost, h.url+"/v1/artifacts", body)
	req.ContentLength = size
	req.Header.Set("Content-Type", "application/octet-stream")
	return h.send(key, req)
}

// send sends req with key as its bearer token.
func (h *harness) send(key string, req *http.Request) *http.Response {
	h.t.Helper()
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := (&http.Client{Timeout: 60 * time.Second}).Do(req)
	if err != nil {
		h.t.Fatal(err)
	}
	return resp
}

func (h *harness) do(method, path, body string) *http.Response {
	h.t.Helper()
	return h.doAs(adminKey, method, path, body)
}

// doAs is do with another API key.
func (h *harness) doAs(key, method, path, body string) *http.Response {
	h.t.Helper()
	req, _ := http.NewRequest(method, h.url+path, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	return h.send(key, req)
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

	// A seed reproduces a sampled output, -1 too (not llama.cpp's "random").
	seeded := func(seed int64) string {
		r, err := c.Completions.New(ctx, openai.CompletionNewParams{
			Model: "stories", Prompt: openai.CompletionNewParamsPromptUnion{OfString: openai.String("The dog")},
			MaxTokens: openai.Int(30), Temperature: openai.Float(1), Seed: openai.Int(seed),
		})
		if err != nil {
			t.Fatal(err)
		}
		return r.Choices[0].Text
	}
	for _, seed := range []int64{7, -1} {
		if a, b := seeded(seed), seeded(seed); a != b {
			t.Errorf("seed %d gave %q then %q", seed, a, b)
		}
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

// TestSDKResponseFormat: response_format constrains the output through a
// grammar: json_schema output parses and satisfies the schema, JSON mode
// output is a JSON object, and both differ from the unconstrained text.
func TestSDKResponseFormat(t *testing.T) {
	h := newHarness(t)
	h.deploy("stories", map[string]any{"parallel": 2})
	h.startRunner("stories", 2, 512)
	ctx := context.Background()
	c := h.client()
	ask := func(rf openai.ChatCompletionNewParamsResponseFormatUnion) *openai.ChatCompletion {
		t.Helper()
		r, err := c.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{
			Model:          "stories",
			Messages:       []openai.ChatCompletionMessageParamUnion{openai.UserMessage("Once upon a time")},
			MaxTokens:      openai.Int(200),
			Temperature:    openai.Float(0),
			ResponseFormat: rf,
		})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	plain := ask(openai.ChatCompletionNewParamsResponseFormatUnion{}).Choices[0].Message.Content
	if strings.HasPrefix(strings.TrimSpace(plain), "{") {
		t.Fatalf("unconstrained output %q already starts an object: the comparison proves nothing", plain)
	}

	t.Run("json_schema", func(t *testing.T) {
		schema := map[string]any{
			"type": "object",
			"properties": map[string]any{
				"ok": map[string]any{"type": "boolean"},
				"n":  map[string]any{"type": "integer"},
			},
			"required":             []string{"ok", "n"},
			"additionalProperties": false,
		}
		r := ask(openai.ChatCompletionNewParamsResponseFormatUnion{OfJSONSchema: &openai.ResponseFormatJSONSchemaParam{
			JSONSchema: openai.ResponseFormatJSONSchemaJSONSchemaParam{Name: "answer", Schema: schema},
		}})
		content := r.Choices[0].Message.Content
		t.Logf("json_schema output (%s, %d tokens): %q", r.Choices[0].FinishReason, r.Usage.CompletionTokens, content)
		if r.Choices[0].FinishReason != "stop" {
			t.Fatalf("finish_reason %q after %d tokens, want stop: the grammar should close the object: %q", r.Choices[0].FinishReason, r.Usage.CompletionTokens, content)
		}
		var got map[string]json.RawMessage
		if err := json.Unmarshal([]byte(content), &got); err != nil {
			t.Fatalf("output %q is not a JSON object: %v", content, err)
		}
		var ok bool
		var n int64
		if len(got) != 2 || json.Unmarshal(got["ok"], &ok) != nil || json.Unmarshal(got["n"], &n) != nil {
			t.Errorf("output %q does not satisfy the schema (exactly a boolean ok and an integer n)", content)
		}
	})

	t.Run("json_object", func(t *testing.T) {
		r := ask(openai.ChatCompletionNewParamsResponseFormatUnion{OfJSONObject: &openai.ResponseFormatJSONObjectParam{}})
		content := strings.TrimSpace(r.Choices[0].Message.Content)
		t.Logf("JSON mode output (%s, %d tokens): %q", r.Choices[0].FinishReason, r.Usage.CompletionTokens, content)
		// Cut off or not, the grammar allows only JSON.
		if !strings.HasPrefix(content, "{") || !jsonPrefix(content) {
			t.Errorf("JSON mode output is not (the start of) a JSON object: %q", content)
		}
		if r.Choices[0].FinishReason == "stop" {
			var obj map[string]any
			if err := json.Unmarshal([]byte(content), &obj); err != nil {
				t.Errorf("JSON mode finished but the output is not a JSON object: %q: %v", content, err)
			}
		}
	})
}

// jsonPrefix reports whether s is JSON or the start of it, as output cut
// off by max_tokens is.
func jsonPrefix(s string) bool {
	dec := json.NewDecoder(strings.NewReader(s))
	for {
		_, err := dec.Token()
		if err == io.EOF {
			return true
		}
		if err != nil {
			return errors.Is(err, io.ErrUnexpectedEOF)
		}
	}
}

func TestJSONPrefix(t *testing.T) {
	for s, want := range map[string]bool{
		`{"a": "b`: true, `{"a":1,`: true, `{ "a" : "x"` + "\n\n" + ` , " said the`: true, `{"a":[1,{}]}`: true,
		`{"a" there`: false, `there was a girl`: false, `{"a":1}}`: false,
	} {
		if got := jsonPrefix(s); got != want {
			t.Errorf("jsonPrefix(%q) = %v, want %v", s, got, want)
		}
	}
}

// TestSDKFields: the request fields the SDK sends besides the basics are
// accepted and do what they say.
func TestSDKFields(t *testing.T) {
	h := newHarness(t)
	h.deploy("stories", map[string]any{"parallel": 4})
	h.startRunner("stories", 4, 512)
	ctx := context.Background()
	c := h.client()
	story := []openai.ChatCompletionMessageParamUnion{openai.UserMessage("Once upon a time")}
	chat := func(p openai.ChatCompletionNewParams) *openai.ChatCompletion {
		t.Helper()
		p.Model = "stories"
		if p.Messages == nil {
			p.Messages = story
		}
		p.Temperature = openai.Float(0)
		r, err := c.Chat.Completions.New(ctx, p)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}

	t.Run("max_completion_tokens", func(t *testing.T) {
		r := chat(openai.ChatCompletionNewParams{MaxCompletionTokens: openai.Int(7)})
		if r.Usage.CompletionTokens > 7 || (r.Choices[0].FinishReason == "length" && r.Usage.CompletionTokens != 7) {
			t.Errorf("max_completion_tokens 7: %d tokens, finish %q", r.Usage.CompletionTokens, r.Choices[0].FinishReason)
		}
		if want := chat(openai.ChatCompletionNewParams{MaxTokens: openai.Int(7)}).Choices[0].Message.Content; r.Choices[0].Message.Content != want {
			t.Errorf("max_completion_tokens 7 gave %q, max_tokens 7 %q", r.Choices[0].Message.Content, want)
		}
		// It wins over max_tokens, as OpenAI's newer name for it.
		if r := chat(openai.ChatCompletionNewParams{MaxCompletionTokens: openai.Int(5), MaxTokens: openai.Int(50)}); r.Usage.CompletionTokens > 5 {
			t.Errorf("max_completion_tokens 5 with max_tokens 50: %d tokens", r.Usage.CompletionTokens)
		}
	})

	t.Run("content parts", func(t *testing.T) {
		parts := chat(openai.ChatCompletionNewParams{MaxTokens: openai.Int(20), Messages: []openai.ChatCompletionMessageParamUnion{
			openai.SystemMessage([]openai.ChatCompletionContentPartTextParam{{Text: "You tell "}, {Text: "stories."}}),
			openai.UserMessage([]openai.ChatCompletionContentPartUnionParam{openai.TextContentPart("Once upon"), openai.TextContentPart(" a time")}),
		}}).Choices[0].Message.Content
		str := chat(openai.ChatCompletionNewParams{MaxTokens: openai.Int(20), Messages: []openai.ChatCompletionMessageParamUnion{
			openai.SystemMessage("You tell stories."),
			openai.UserMessage("Once upon a time"),
		}}).Choices[0].Message.Content
		if parts != str || parts == "" {
			t.Errorf("text parts gave %q, the same text as strings %q", parts, str)
		}
	})

	// The penalties sit before greedy selection in llama.cpp's sampler
	// chain, so they change even temperature-0 output once tokens repeat.
	t.Run("penalties", func(t *testing.T) {
		long := func(p openai.ChatCompletionNewParams) string {
			p.MaxTokens = openai.Int(120)
			return chat(p).Choices[0].Message.Content
		}
		none := long(openai.ChatCompletionNewParams{})
		for name, p := range map[string]openai.ChatCompletionNewParams{
			"presence_penalty":  {PresencePenalty: openai.Float(1.5)},
			"frequency_penalty": {FrequencyPenalty: openai.Float(1.5)},
		} {
			if got := long(p); got == none {
				t.Errorf("%s 1.5 left the output unchanged: %q", name, got)
			}
		}
		if got := long(openai.ChatCompletionNewParams{PresencePenalty: openai.Float(0), FrequencyPenalty: openai.Float(0)}); got != none {
			t.Errorf("zero penalties changed the output:\n%q\n%q", got, none)
		}
	})

	t.Run("user", func(t *testing.T) {
		if r := chat(openai.ChatCompletionNewParams{MaxTokens: openai.Int(3), User: openai.String("user-1234")}); r.Usage.CompletionTokens == 0 {
			t.Errorf("with user: %+v", r)
		}
	})

	// With include_usage the last chunk has "choices":[] (an empty array,
	// as OpenAI sends it, which strict clients index into) and usage.
	for _, tt := range []struct{ path, body string }{
		{"/v1/chat/completions", `{"model":"stories","messages":[{"role":"user","content":"hi"}],"max_tokens":5,"stream":true,"stream_options":{"include_usage":true}}`},
		{"/v1/completions", `{"model":"stories","prompt":"hi","max_tokens":5,"stream":true,"stream_options":{"include_usage":true}}`},
	} {
		t.Run("usage chunk "+tt.path, func(t *testing.T) {
			resp := h.do(http.MethodPost, tt.path, tt.body)
			defer resp.Body.Close()
			var data []string
			sc := bufio.NewScanner(resp.Body)
			for sc.Scan() {
				if d, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
					data = append(data, d)
				}
			}
			if len(data) < 3 || data[len(data)-1] != "[DONE]" {
				t.Fatalf("stream %q: want chunks, a usage chunk and [DONE]", data)
			}
			var last map[string]json.RawMessage
			if err := json.Unmarshal([]byte(data[len(data)-2]), &last); err != nil {
				t.Fatal(err)
			}
			var u struct {
				CompletionTokens int `json:"completion_tokens"`
			}
			if string(last["choices"]) != "[]" || json.Unmarshal(last["usage"], &u) != nil || u.CompletionTokens != 5 {
				t.Errorf("usage chunk %s: want \"choices\":[] and usage with 5 completion tokens", data[len(data)-2])
			}
		})
	}
}

// TestSDKErrors: every error the API answers reaches the official SDK as
// its typed *openai.Error, with OpenAI's status, type, code and param.
func TestSDKErrors(t *testing.T) {
	h := newHarness(t)
	h.deploy("stories", map[string]any{"parallel": 1, "context_length": 64})
	h.deploy("other", map[string]any{})
	// No runner ever serves these: nothing starts runners in the harness.
	h.deploy("full", map[string]any{"queue_limit": 1, "queue_timeout": "1m"})
	h.deploy("slow", map[string]any{"queue_timeout": "1s"})
	h.deploy("broken", map[string]any{})
	h.startRunner("stories", 1, 64)
	// Runners of broken fail to start: their weights are not in the store.
	h.failToStart("broken", runner.Artifact{SHA256: h.art.SHA256, ObjectKey: "uploads/missing.gguf", Size: h.art.Size})
	ctx := context.Background()
	c := h.client()
	withKey := func(key string) openai.Client {
		return openai.NewClient(option.WithBaseURL(h.url+"/v1"), option.WithAPIKey(key), option.WithMaxRetries(0))
	}
	otherOnly := withKey(h.createKey(`{"name":"other only","deployments":["other"]}`))
	hi := []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")}
	chat := func(c openai.Client, p openai.ChatCompletionNewParams) func() error {
		return func() error { _, err := c.Chat.Completions.New(ctx, p); return err }
	}

	tests := []struct {
		name             string
		call             func() error
		status           int
		typ, code, param string
		retryAfter       bool
	}{
		{"n beyond parallel", chat(c, openai.ChatCompletionNewParams{Model: "stories", N: openai.Int(2), Messages: hi}),
			400, "invalid_request_error", "", "n", false},
		{"zero max_completion_tokens", chat(c, openai.ChatCompletionNewParams{Model: "stories", MaxCompletionTokens: openai.Int(0), Messages: hi}),
			400, "invalid_request_error", "", "max_completion_tokens", false},
		{"image content part", chat(c, openai.ChatCompletionNewParams{Model: "stories", Messages: []openai.ChatCompletionMessageParamUnion{
			openai.UserMessage([]openai.ChatCompletionContentPartUnionParam{
				openai.TextContentPart("what is this?"),
				openai.ImageContentPart(openai.ChatCompletionContentPartImageImageURLParam{URL: "https://example.com/cat.png"}),
			})}}),
			400, "invalid_request_error", "", "messages[0].content", false},
		{"chat over the context", chat(c, openai.ChatCompletionNewParams{Model: "stories", Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage(strings.Repeat("Once upon a time ", 50))}}),
			400, "invalid_request_error", "context_length_exceeded", "messages", false},
		{"completion over the context", func() error {
			_, err := c.Completions.New(ctx, openai.CompletionNewParams{Model: "stories", Prompt: openai.CompletionNewParamsPromptUnion{OfString: openai.String(strings.Repeat("Once upon a time ", 50))}})
			return err
		}, 400, "invalid_request_error", "context_length_exceeded", "prompt", false},
		{"bad key", chat(withKey("sk-bad"), openai.ChatCompletionNewParams{Model: "stories", Messages: hi}),
			401, "invalid_request_error", "invalid_api_key", "", false},
		{"key for other deployments", chat(otherOnly, openai.ChatCompletionNewParams{Model: "stories", Messages: hi}),
			403, "invalid_request_error", "permission_denied", "model", false},
		{"unknown model", chat(c, openai.ChatCompletionNewParams{Model: "nope", Messages: hi}),
			404, "invalid_request_error", "model_not_found", "model", false},
		// Over the 8 MiB body limit, with more than 8 MiB unread when the
		// answer goes out: the client must still read the 413, not a reset.
		{"body too large", chat(c, openai.ChatCompletionNewParams{Model: "stories", Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage(strings.Repeat("a", 9<<20))}}),
			413, "invalid_request_error", "request_too_large", "", false},
		{"body far too large", chat(c, openai.ChatCompletionNewParams{Model: "stories", Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage(strings.Repeat("a", 20<<20))}}),
			413, "invalid_request_error", "request_too_large", "", false},
		{"queue full", func() error {
			// One request waits in the queue (its limit) while another comes.
			waitCtx, cancel := context.WithCancel(ctx)
			defer cancel()
			go c.Chat.Completions.New(waitCtx, openai.ChatCompletionNewParams{Model: "full", Messages: hi})
			h.waitQueued("full", 1)
			return chat(c, openai.ChatCompletionNewParams{Model: "full", Messages: hi})()
		}, 429, "rate_limit_error", "queue_full", "", true},
		{"cannot start", chat(c, openai.ChatCompletionNewParams{Model: "broken", Messages: hi}),
			503, "server_error", "deployment_unavailable", "", false},
		{"queue timeout", chat(c, openai.ChatCompletionNewParams{Model: "slow", Messages: hi}),
			504, "server_error", "queue_timeout", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.call()
			var apiErr *openai.Error
			if !errors.As(err, &apiErr) {
				t.Fatalf("got %v, want an *openai.Error", err)
			}
			if apiErr.StatusCode != tt.status || apiErr.Type != tt.typ || apiErr.Code != tt.code || apiErr.Param != tt.param || apiErr.Message == "" {
				t.Errorf("got %d type %q code %q param %q (%s); want %d type %q code %q param %q",
					apiErr.StatusCode, apiErr.Type, apiErr.Code, apiErr.Param, apiErr.Message, tt.status, tt.typ, tt.code, tt.param)
			}
			if got := apiErr.Response.Header.Get("Retry-After"); (got != "") != tt.retryAfter {
				t.Errorf("Retry-After %q, want one: %v", got, tt.retryAfter)
			}
		})
	}
}

// createKey creates an API key through the API from a POST /v1/keys body
// and returns its secret.
func (h *harness) createKey(body string) string {
	h.t.Helper()
	resp := h.do(http.MethodPost, "/v1/keys", body)
	defer resp.Body.Close()
	var k struct {
		Key string `json:"key"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&k); err != nil || resp.StatusCode != http.StatusCreated || k.Key == "" {
		h.t.Fatalf("creating key %s: %d %v", body, resp.StatusCode, err)
	}
	return k.Key
}

// waitQueued waits until a deployment has n requests queued.
func (h *harness) waitQueued(deployment string, n int) {
	h.t.Helper()
	for deadline := time.Now().Add(5 * time.Second); ; {
		resp := h.do(http.MethodGet, "/v1/deployments/"+deployment, "")
		var st struct {
			Queued int `json:"queued"`
		}
		json.NewDecoder(resp.Body).Decode(&st)
		resp.Body.Close()
		if st.Queued == n {
			return
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("%s has %d requests queued, want %d", deployment, st.Queued, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// failToStart runs, one after the other, as many runners for a deployment
// as it takes the activator to call it unable to start (cannotStartAfter),
// each failing to fetch art.
func (h *harness) failToStart(deployment string, art runner.Artifact) {
	h.t.Helper()
	for range 3 {
		r, err := runner.New(runner.Config{
			ID:           wire.NewID(4),
			DeploymentID: h.depID(deployment),
			Deployment:   deployment,
			Artifact:     art,
			Cache:        &runner.Cache{Dir: h.t.TempDir(), Blobs: h.blobs},
			Engine:       runner.EngineConfig{Parallel: 1},
		}, h.nc, slog.Default())
		if err != nil {
			h.t.Fatal(err)
		}
		if err := r.Run(context.Background(), nil); err == nil {
			h.t.Fatal("runner started without its weights")
		}
	}
	h.nc.Flush()
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
	h.waitQueued("idle", 2)
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

// TestDisconnectCancels: a client that goes away stops its job, whether
// it runs (its slot comes free at once) or still waits in the queue (it is
// removed and never runs). The runner is told to ask its activator whether
// anyone waits only once an hour, so only the activator's cancel can stop
// the job in time.
func TestDisconnectCancels(t *testing.T) {
	h := newHarness(t)
	// The runner's own context (the deployment's may not pass the
	// model's trained 2048 tokens): at this model's speed, a minute or
	// more to fill.
	const ctxLen = 16384
	h.deploy("one", map[string]any{"parallel": 1})
	h.deploy("later", map[string]any{"parallel": 1, "queue_timeout": "1m"})
	usage := h.usageRecords("one", "later")
	startRunner := func(deployment string, ctxLen int) {
		h.startRunnerWith(runner.Config{Deployment: deployment, ClientCheck: time.Hour,
			Engine: runner.EngineConfig{Parallel: 1, Context: ctxLen}})
	}
	// next runs a short request, which needs the deployment's only slot,
	// and returns its usage record and those of the requests that ran
	// before it.
	next := func(t *testing.T, deployment string) (rec wire.UsageRecord, before []wire.UsageRecord) {
		t.Helper()
		r := h.do(http.MethodPost, "/v1/completions", `{"model":"`+deployment+`","prompt":"The cat","max_tokens":5}`)
		b, _ := io.ReadAll(r.Body)
		r.Body.Close()
		if r.StatusCode != 200 {
			t.Fatalf("next request: %d %s", r.StatusCode, b)
		}
		var out struct{ ID string }
		json.Unmarshal(b, &out)
		for {
			select {
			case rec := <-usage:
				if rec.RequestID == out.ID {
					return rec, before
				}
				before = append(before, rec)
			case <-time.After(10 * time.Second):
				t.Fatal("no usage record for the next request")
			}
		}
	}

	t.Run("running", func(t *testing.T) {
		startRunner("one", ctxLen)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, h.url+"/v1/completions",
			strings.NewReader(`{"model":"one","prompt":"Once upon a time","stream":true}`))
		req.Header.Set("Authorization", "Bearer "+adminKey)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		id := resp.Header.Get("X-Request-Id")
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
		hungUp := time.Now()

		// Uncancelled, the job would generate until the context is full
		// (ctxLen tokens, over a minute). The cancel stops it at once.
		select {
		case rec := <-usage:
			if rec.RequestID != id || rec.Status != "cancelled" || rec.CompletionTokens > ctxLen/4 {
				t.Errorf("usage record %s: %s after %d tokens; want %s cancelled after far fewer than %d",
					rec.RequestID, rec.Status, rec.CompletionTokens, id, ctxLen)
			}
			t.Logf("cancelled %s after %s and %d tokens", rec.RequestID, time.Since(hungUp).Round(time.Millisecond), rec.CompletionTokens)
		case <-time.After(5 * time.Second):
			t.Fatal("the job still ran 5 s after its client hung up")
		}
		// The only slot is free: the next request runs at once.
		if rec, _ := next(t, "one"); rec.QueueWaitMS > 2000 {
			t.Errorf("next request waited %.0f ms for the slot", rec.QueueWaitMS)
		}
	})

	t.Run("queued", func(t *testing.T) {
		js, err := jetstream.New(h.nc)
		if err != nil {
			t.Fatal(err)
		}
		// No runner yet: the request waits in the queue.
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, h.url+"/v1/completions",
			strings.NewReader(`{"model":"later","prompt":"Once upon a time","max_tokens":50}`))
		req.Header.Set("Authorization", "Bearer "+adminKey)
		hungUp := make(chan error, 1)
		go func() {
			_, err := http.DefaultClient.Do(req)
			hungUp <- err
		}()
		var id string
		deadline := time.Now().Add(10 * time.Second)
		for id == "" {
			if stream, err := js.Stream(context.Background(), wire.RequestStream(h.depID("later"))); err == nil {
				if m, err := stream.GetLastMsgForSubject(context.Background(), wire.RequestSubject(h.depID("later"))); err == nil {
					var job wire.Job
					json.Unmarshal(m.Data, &job)
					id = job.ID
				}
			}
			if time.Now().After(deadline) {
				t.Fatal("the request never reached the queue")
			}
			time.Sleep(20 * time.Millisecond)
		}
		cancel()
		<-hungUp

		// The job leaves the queue...
		var depth queue.Depth
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			if depth, err = queue.GetDepth(context.Background(), js, h.depID("later")); err == nil && depth.Total() == 0 {
				break
			}
		}
		if err != nil || depth.Total() != 0 {
			t.Errorf("queue after the client hung up: %+v (%v); want it empty", depth, err)
		}
		// ...and never runs: a runner started now serves the next request
		// and nothing before it.
		startRunner("later", 512)
		if _, before := next(t, "later"); len(before) > 0 {
			t.Errorf("the abandoned request %s ran before the next one: %+v", id, before)
		}
	})
}

// TestQueueRecreated: a deployment's queue that vanished (NATS lost its
// state) is re-created by the next request with the deployment's limits,
// its age limit included, not JetStream's defaults.
func TestQueueRecreated(t *testing.T) {
	h := newHarness(t)
	h.deploy("lost", map[string]any{"queue_limit": 3, "queue_timeout": "1s"})
	js, err := jetstream.New(h.nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := queue.Delete(ctx, js, h.depID("lost")); err != nil {
		t.Fatal(err)
	}
	// No runner: the request is queued, then times out.
	resp := h.do(http.MethodPost, "/v1/completions", `{"model":"lost","prompt":"Once"}`)
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusGatewayTimeout {
		t.Fatalf("request to a re-created queue: %d %s; want 504 queue_timeout", resp.StatusCode, b)
	}
	stream, err := js.Stream(ctx, wire.RequestStream(h.depID("lost")))
	if err != nil {
		t.Fatal(err)
	}
	cfg := stream.CachedInfo().Config
	if cfg.MaxMsgs != 3 || cfg.MaxAge != 2*time.Second {
		t.Errorf("re-created queue holds %d jobs for %s; want 3 for 2s (the deployment's limit, twice its queue timeout)", cfg.MaxMsgs, cfg.MaxAge)
	}
}

// TestQueueMadeAtFirstWork: saving a deployment creates no queue (JetStream
// makes streams one at a time, which held PUT to ~100/s); its first
// request creates it with the deployment's limits, and a later deploy
// that changes them updates it.
func TestQueueMadeAtFirstWork(t *testing.T) {
	h := newHarness(t)
	h.deploy("later", map[string]any{"queue_limit": 3, "queue_timeout": "1s"})
	js, err := jetstream.New(h.nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := js.Stream(ctx, wire.RequestStream(h.depID("later"))); !errors.Is(err, jetstream.ErrStreamNotFound) {
		t.Fatalf("queue of a deployment without work: %v; want none", err)
	}
	// No runner: the request is queued, then times out.
	resp := h.do(http.MethodPost, "/v1/completions", `{"model":"later","prompt":"Once"}`)
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusGatewayTimeout {
		t.Fatalf("first request: %d %s; want 504 queue_timeout", resp.StatusCode, b)
	}
	limits := func() (int64, time.Duration) {
		t.Helper()
		stream, err := js.Stream(ctx, wire.RequestStream(h.depID("later")))
		if err != nil {
			t.Fatal(err)
		}
		cfg := stream.CachedInfo().Config
		return cfg.MaxMsgs, cfg.MaxAge
	}
	if jobs, age := limits(); jobs != 3 || age != 2*time.Second {
		t.Errorf("queue made by the first request holds %d jobs for %s; want 3 for 2s", jobs, age)
	}
	h.deploy("later", map[string]any{"queue_limit": 5})
	if jobs, age := limits(); jobs != 5 || age != 2*time.Second {
		t.Errorf("after a deploy with queue_limit 5: %d jobs for %s; want 5 for 2s", jobs, age)
	}
}

// TestUploadRejectsBadWeights: nothing is registered or stored.
func TestUploadRejectsBadWeights(t *testing.T) {
	h := newHarness(t)
	for _, body := range [][]byte{[]byte("definitely not gguf"), {'G', 'G', 'U', 'F', 3, 0, 0, 0, 0xff}} {
		resp := h.upload(adminKey, bytes.NewReader(body), int64(len(body)))
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
	h.failToStart("broken", runner.Artifact{SHA256: h.art.SHA256, ObjectKey: h.art.ObjectKey, Size: h.art.Size})
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

// TestColdStartErrorHidesPaths: a runner that cannot write its weights
// cache reports the cache's path, as the Go error says it; the client
// waiting on the cold start hears what failed and the file's name, not
// where the server keeps it (on its 503, and in GET /v1/deployments).
func TestColdStartErrorHidesPaths(t *testing.T) {
	h := newHarness(t)
	h.deploy("nocache", map[string]any{})
	// The cache directory is a regular file: every start fails on it.
	cacheDir := filepath.Join(t.TempDir(), "secret-layout", "cache")
	if err := os.MkdirAll(filepath.Dir(cacheDir), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cacheDir, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for range cannotStartAfter {
		r, err := runner.New(runner.Config{
			ID: wire.NewID(4), Deployment: "nocache", DeploymentID: h.depID("nocache"),
			Artifact: runner.Artifact{SHA256: h.art.SHA256, ObjectKey: h.art.ObjectKey, Size: h.art.Size},
			Cache:    &runner.Cache{Dir: cacheDir, Blobs: h.blobs},
			Engine:   runner.EngineConfig{Parallel: 1},
		}, h.nc, slog.Default())
		if err != nil {
			t.Fatal(err)
		}
		if err := r.Run(context.Background(), nil); err == nil {
			t.Fatal("runner started without a cache directory")
		} else if !strings.Contains(err.Error(), "secret-layout") {
			t.Fatalf("the runner's error %q does not name the path: the test proves nothing", err)
		}
	}
	h.nc.Flush()
	resp := h.do(http.MethodPost, "/v1/chat/completions", `{"model":"nocache","messages":[{"role":"user","content":"hi"}]}`)
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 503 || !strings.Contains(string(b), "deployment_unavailable") {
		t.Errorf("got %d %s; want 503 deployment_unavailable", resp.StatusCode, b)
	}
	r := h.do(http.MethodGet, "/v1/deployments/nocache", "")
	d, _ := io.ReadAll(r.Body)
	r.Body.Close()
	for _, body := range [][]byte{b, d} {
		if bytes.Contains(body, []byte("secret-layout")) || bytes.Contains(body, []byte(os.TempDir()+"/")) {
			t.Errorf("a server path reaches the client: %s", body)
		}
	}
}

// cannotStartAfter is the activator's: failed starts before a 503.
const cannotStartAfter = 3

// TestDeploymentWaitsOutStoreOutage: runners that fail to start because
// the object store is unreachable may succeed later, so however many have
// failed, a request waits for its whole queue timeout (the control plane
// keeps retrying) and then gets 504 queue_timeout naming the cause, not
// the early 503 of TestDeploymentCannotStart.
func TestDeploymentWaitsOutStoreOutage(t *testing.T) {
	h := newHarness(t)
	const queueTimeout = 3 * time.Second
	h.deploy("storeless", map[string]any{"queue_timeout": queueTimeout.String()})
	// An S3 endpoint nobody listens on: connection refused.
	down, err := blob.OpenS3(blob.S3Config{Endpoint: fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)), AccessKey: "k", SecretKey: "s", Bucket: "infer"})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	// More failures than the three that make a permanent failure a 503.
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := runner.New(runner.Config{
				ID:           wire.NewID(4),
				DeploymentID: h.depID("storeless"),
				Deployment:   "storeless",
				Artifact:     runner.Artifact{SHA256: h.art.SHA256, ObjectKey: h.art.ObjectKey, Size: h.art.Size},
				Cache:        &runner.Cache{Dir: t.TempDir(), Blobs: down},
				Engine:       runner.EngineConfig{Parallel: 1},
			}, h.nc, slog.Default())
			if err != nil {
				t.Error(err)
				return
			}
			if err := r.Run(context.Background(), nil); !errors.Is(err, blob.ErrUnavailable) {
				t.Errorf("runner with the object store down: %v; want ErrUnavailable", err)
			}
		}()
	}
	wg.Wait()
	h.nc.Flush()
	start := time.Now()
	resp := h.do(http.MethodPost, "/v1/chat/completions", `{"model":"storeless","messages":[{"role":"user","content":"hi"}]}`)
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	waited := time.Since(start)
	if resp.StatusCode != http.StatusGatewayTimeout || !strings.Contains(string(b), "queue_timeout") || !strings.Contains(string(b), "object store unavailable") {
		t.Errorf("got %d %s; want 504 queue_timeout naming the object store", resp.StatusCode, b)
	}
	if waited < queueTimeout-100*time.Millisecond || waited > queueTimeout+2*time.Second {
		t.Errorf("answered after %s; want the queue timeout, %s", waited, queueTimeout)
	}
}
