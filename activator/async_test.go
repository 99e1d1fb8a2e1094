package activator_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"

	"github.com/infer-run/infer/activator"
	"github.com/infer-run/infer/internal/testenv"
	"github.com/infer-run/infer/internal/wire"
	"github.com/infer-run/infer/registry"
	"github.com/infer-run/infer/runner"
)

// addActivator runs one more activator against the harness's Postgres and
// NATS, on its own NATS connection, as another replica behind a load
// balancer would be. stop shuts it down; it is safe to call twice.
func (h *harness) addActivator() (url string, stop func()) {
	return h.addActivatorConfig(activator.Config{AllowPrivateWebhooks: true})
}

// addActivatorWith is addActivator with reg as the activator's registry
// (the deployed activator uses a registry.Cache).
func (h *harness) addActivatorWith(reg activator.Registry) (url string, stop func()) {
	return h.addActivatorConfig(activator.Config{Registry: reg, AllowPrivateWebhooks: true})
}

// addCrashingActivator is addActivator whose stop is a crash as NATS sees
// it: the connection drops before anything else, so the activator can
// announce nothing (no cancels) to the runners.
func (h *harness) addCrashingActivator() (url string, crash func()) {
	h.t.Helper()
	nc := h.connect()
	url, stop := h.startActivator(activator.Config{NATS: nc, AllowPrivateWebhooks: true})
	return url, func() { nc.Close(); stop() }
}

// addActivatorConfig is addActivator with cfg, taken as it is: webhooks
// reach 127.0.0.1, where the tests' receivers listen, only with
// cfg.AllowPrivateWebhooks. See startActivator for what is filled in.
func (h *harness) addActivatorConfig(cfg activator.Config) (url string, stop func()) {
	h.t.Helper()
	cfg.NATS = h.connect()
	return h.startActivator(cfg)
}

// connect opens another NATS connection, closed when the test ends.
func (h *harness) connect() *nats.Conn {
	h.t.Helper()
	nc, err := nats.Connect(h.nc.ConnectedUrl())
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(nc.Close)
	return nc
}

// startActivator serves an activator with cfg on an httptest server,
// filling in the harness's registry and uploader and a logger where cfg
// has none. stop closes it and its NATS connection.
func (h *harness) startActivator(cfg activator.Config) (url string, stop func()) {
	h.t.Helper()
	if cfg.Registry == nil {
		cfg.Registry = h.store
	}
	if cfg.Uploader == nil {
		cfg.Uploader = &registry.Uploader{Store: h.store, Blobs: h.blobs}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	srv, err := activator.New(cfg)
	if err != nil {
		h.t.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	var once sync.Once
	stop = func() {
		once.Do(func() {
			hs.CloseClientConnections()
			hs.Close()
			srv.Close()
			cfg.NATS.Close()
		})
	}
	h.t.Cleanup(stop)
	return hs.URL, stop
}

// call makes an API request to the activator at base with key and decodes
// the JSON answer.
func call(t testing.TB, base, key, method, path, body string, header ...string) (int, http.Header, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest(method, base+path, strings.NewReader(body))
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	req.Header.Set("Content-Type", "application/json")
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := (&http.Client{Timeout: 60 * time.Second}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	var m map[string]any
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatalf("%s %s: %d, not JSON: %q", method, path, resp.StatusCode, data)
	}
	return resp.StatusCode, resp.Header, m
}

// awaitAsync polls an async job until it is finished.
func awaitAsync(t testing.TB, base, key, id string) map[string]any {
	t.Helper()
	deadline := time.Now().Add(3 * time.Minute)
	for {
		status, _, job := call(t, base, key, http.MethodGet, "/v1/async/"+id, "")
		if status != http.StatusOK {
			t.Fatalf("GET async job %s: %d %v", id, status, job)
		}
		if s := job["status"]; s == "succeeded" || s == "failed" {
			return job
		}
		if time.Now().After(deadline) {
			t.Fatalf("async job %s still %v", id, job["status"])
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// webhook records what an async job webhook receives. It fails its first
// failFirst calls, as a flaky receiver would.
type webhook struct {
	*httptest.Server
	mu        sync.Mutex
	failFirst int
	calls     int
	got       []map[string]any
	arrived   chan struct{}
}

func newWebhook(t *testing.T, failFirst int) *webhook {
	w := &webhook{failFirst: failFirst, arrived: make(chan struct{}, 16)}
	w.Server = httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		w.mu.Lock()
		defer w.mu.Unlock()
		w.calls++
		if w.calls <= w.failFirst {
			http.Error(rw, "not now", http.StatusServiceUnavailable)
			return
		}
		var m map[string]any
		json.NewDecoder(r.Body).Decode(&m)
		if r.Header.Get("X-Infer-Job-Id") != m["id"] {
			t.Errorf("webhook header X-Infer-Job-Id %q, body id %v", r.Header.Get("X-Infer-Job-Id"), m["id"])
		}
		w.got = append(w.got, m)
		w.arrived <- struct{}{}
	}))
	t.Cleanup(w.Close)
	return w
}

func (w *webhook) snapshot() (calls int, got []map[string]any) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.calls, append([]map[string]any(nil), w.got...)
}

func TestAsyncJobs(t *testing.T) {
	h := newHarness(t)
	h.deploy("stories", map[string]any{"parallel": 2})
	hook := newWebhook(t, 1)

	// Submitting validates like the sync endpoints, in OpenAI's error shape.
	for _, tc := range []struct {
		name, path, key, body string
		status                int
		param                 string
	}{
		{"no key", "/v1/async/chat/completions", "", `{"model":"stories","messages":[{"role":"user","content":"hi"}]}`, 401, ""},
		{"unknown model", "/v1/async/chat/completions", adminKey, `{"model":"nope","messages":[{"role":"user","content":"hi"}]}`, 404, "model"},
		{"bad n", "/v1/async/completions", adminKey, `{"model":"stories","prompt":"hi","n":17}`, 400, "n"},
		{"stream", "/v1/async/chat/completions", adminKey, `{"model":"stories","stream":true,"messages":[{"role":"user","content":"hi"}]}`, 400, "stream"},
		{"bad webhook", "/v1/async/completions", adminKey, `{"model":"stories","prompt":"hi","webhook":"ftp://example.com/x"}`, 400, "webhook"},
		{"webhook type", "/v1/async/completions", adminKey, `{"model":"stories","prompt":"hi","webhook":3}`, 400, "webhook"},
	} {
		status, _, body := call(t, h.url, tc.key, http.MethodPost, tc.path, tc.body)
		e, _ := body["error"].(map[string]any)
		if status != tc.status || e == nil || e["message"] == "" {
			t.Errorf("%s: %d %v, want %d with an error object", tc.name, status, body, tc.status)
			continue
		}
		if tc.param != "" && e["param"] != tc.param {
			t.Errorf("%s: param %v, want %q", tc.name, e["param"], tc.param)
		}
	}

	// Accepted with no runner up: queued, with the webhook from the body.
	chatReq := `{"model":"stories","max_tokens":20,"temperature":0,"messages":[{"role":"user","content":"Once upon a time"}]`
	status, hdr, job := call(t, h.url, adminKey, http.MethodPost, "/v1/async/chat/completions", chatReq+`,"webhook":"`+hook.URL+`/done"}`)
	id, _ := job["id"].(string)
	if status != http.StatusAccepted || id == "" || job["status"] != "queued" || job["object"] != "async.job" || job["webhook"] != hook.URL+"/done" || hdr.Get("Location") != "/v1/async/"+id {
		t.Fatalf("submit: %d %v %v", status, hdr, job)
	}
	if _, ok := job["tenant_id"]; ok {
		t.Errorf("internal fields leak: %v", job)
	}
	// The webhook as a header, on the completions endpoint.
	status, _, cjob := call(t, h.url, adminKey, http.MethodPost, "/v1/async/completions", `{"model":"stories","prompt":"The dog","max_tokens":10}`,
		activator.WebhookHeader, hook.URL+"/done")
	if status != http.StatusAccepted || cjob["webhook"] != hook.URL+"/done" {
		t.Fatalf("submit completion: %d %v", status, cjob)
	}

	h.startRunner("stories", 2, 512)
	done := awaitAsync(t, h.url, adminKey, id)
	if done["status"] != "succeeded" || done["started_at"] == nil || done["finished_at"] == nil {
		t.Fatalf("chat job: %v", done)
	}
	// The result is what the sync endpoint answers, as the SDK reads it.
	raw, _ := json.Marshal(done["result"])
	var asyncChat openai.ChatCompletion
	if err := json.Unmarshal(raw, &asyncChat); err != nil {
		t.Fatal(err)
	}
	client := h.client()
	syncChat, err := client.Chat.Completions.New(context.Background(), openai.ChatCompletionNewParams{
		Model:       "stories",
		Messages:    []openai.ChatCompletionMessageParamUnion{openai.UserMessage("Once upon a time")},
		MaxTokens:   openai.Int(20),
		Temperature: openai.Float(0),
	})
	if err != nil {
		t.Fatal(err)
	}
	if asyncChat.ID != id || asyncChat.Object != "chat.completion" || asyncChat.Choices[0].Message.Content != syncChat.Choices[0].Message.Content ||
		asyncChat.Usage.TotalTokens != syncChat.Usage.TotalTokens || asyncChat.Usage.CompletionTokens != syncChat.Usage.CompletionTokens || asyncChat.Choices[0].FinishReason != "length" {
		t.Errorf("async result %+v\ndiffers from sync %+v", asyncChat, syncChat)
	}
	// Billed once, like a sync request: one usage record for the job.
	// (The runner publishes it just after the result.)
	n := 0
	for deadline := time.Now().Add(30 * time.Second); n == 0 && time.Now().Before(deadline); {
		if n = usageRecords(t, h.nc, id); n == 0 {
			time.Sleep(50 * time.Millisecond)
		}
	}
	if n != 1 {
		t.Errorf("%d usage records for async job %s, want 1", n, id)
	}
	if c := awaitAsync(t, h.url, adminKey, cjob["id"].(string)); c["status"] != "succeeded" || c["result"].(map[string]any)["object"] != "text_completion" {
		t.Errorf("completion job: %v", c)
	}

	// Each job's webhook got the finished job once, after one failed try.
	for range 2 {
		select {
		case <-hook.arrived:
		case <-time.After(time.Minute):
			t.Fatal("webhook not called")
		}
	}
	time.Sleep(time.Second) // a duplicate would come now
	calls, got := hook.snapshot()
	if len(got) != 2 || calls != 3 {
		t.Errorf("webhook: %d calls, %d deliveries; want 3 calls (one failed) and 2 deliveries", calls, len(got))
	}
	for _, m := range got {
		if m["status"] != "succeeded" || m["result"] == nil {
			t.Errorf("webhook body %v", m)
		}
	}

	// A prompt the runner refuses fails the job with the runner's error.
	long := strings.Repeat("Once upon a time ", 200)
	status, _, fjob := call(t, h.url, adminKey, http.MethodPost, "/v1/async/completions", `{"model":"stories","prompt":"`+long+`"}`)
	if status != http.StatusAccepted {
		t.Fatalf("submit long prompt: %d %v", status, fjob)
	}
	failed := awaitAsync(t, h.url, adminKey, fjob["id"].(string))
	if e, _ := failed["error"].(map[string]any); failed["status"] != "failed" || e == nil || e["code"] != "context_length_exceeded" || failed["result"] != nil {
		t.Errorf("job with a too long prompt: %v", failed)
	}

	// A job no runner takes before its queue drops it has failed.
	h.deploy("nobody", map[string]any{"queue_timeout": "1s"})
	status, _, ejob := call(t, h.url, adminKey, http.MethodPost, "/v1/async/completions", `{"model":"nobody","prompt":"hi"}`)
	if status != http.StatusAccepted {
		t.Fatalf("submit to nobody: %d %v", status, ejob)
	}
	expired := awaitAsync(t, h.url, adminKey, ejob["id"].(string))
	if e, _ := expired["error"].(map[string]any); expired["status"] != "failed" || e == nil || e["code"] != "queue_timeout" {
		t.Errorf("job nobody took: %v", expired)
	}

	// Only the submitting tenant reads a job.
	const otherKey = "sk-infer-activator-test-other-tenant"
	if _, err := h.store.EnsureAdminKey(context.Background(), "other", otherKey); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{"/v1/async/" + id, "/v1/async/chatcmpl-doesnotexist", "/v1/async/not..valid"} {
		status, _, body := call(t, h.url, otherKey, http.MethodGet, path, "")
		if status != http.StatusNotFound || body["error"] == nil {
			t.Errorf("GET %s as another tenant: %d %v", path, status, body)
		}
	}
}

// usageRecords counts the usage records of a request still in the usage
// stream (no control plane runs here to take them).
func usageRecords(t *testing.T, nc *nats.Conn, requestID string) int {
	t.Helper()
	ctx := context.Background()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	s, err := js.Stream(ctx, wire.UsageStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && seq > 0; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			continue // deleted
		}
		var rec wire.UsageRecord
		if json.Unmarshal(m.Data, &rec) == nil && rec.RequestID == requestID {
			n++
		}
	}
	return n
}

// TestTwoActivators runs two activators against one NATS and Postgres:
// replies reach the activator holding each client while both serve, and an
// async job submitted to one is read from the other after the first stops.
func TestTwoActivators(t *testing.T) {
	h := newHarness(t)
	h.deploy("stories", map[string]any{"parallel": 4})
	h.deploy("later", map[string]any{"parallel": 1})
	urlA, stopA := h.addActivator()
	urlB, _ := h.addActivator()

	// An async job accepted by A for a deployment with no runner.
	status, _, job := call(t, urlA, adminKey, http.MethodPost, "/v1/async/completions", `{"model":"later","prompt":"Once upon a time","max_tokens":15,"temperature":0}`)
	if status != http.StatusAccepted {
		t.Fatalf("submit to A: %d %v", status, job)
	}
	id := job["id"].(string)
	if status, _, got := call(t, urlB, adminKey, http.MethodGet, "/v1/async/"+id, ""); status != 200 || got["status"] != "queued" {
		t.Fatalf("B reads A's job: %d %v", status, got)
	}

	// Both take concurrent sync requests, streaming and not.
	h.startRunner("stories", 4, 512)
	var wg sync.WaitGroup
	for i := range 8 {
		base := urlA
		if i%2 == 1 {
			base = urlB
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := openai.NewClient(option.WithBaseURL(base+"/v1"), option.WithAPIKey(adminKey), option.WithMaxRetries(0))
			params := openai.CompletionNewParams{
				Model:       "stories",
				Prompt:      openai.CompletionNewParamsPromptUnion{OfString: openai.String("Once upon a time")},
				MaxTokens:   openai.Int(15),
				Temperature: openai.Float(0),
			}
			if i%4 < 2 {
				r, err := c.Completions.New(context.Background(), params)
				if err != nil || r.Choices[0].Text == "" || r.Usage.CompletionTokens != 15 {
					t.Errorf("request %d via %s: %v %+v", i, base, err, r)
				}
				return
			}
			s := c.Completions.NewStreaming(context.Background(), params)
			var text strings.Builder
			for s.Next() {
				if ch := s.Current(); len(ch.Choices) > 0 {
					text.WriteString(ch.Choices[0].Text)
				}
			}
			if err := s.Err(); err != nil || text.Len() == 0 {
				t.Errorf("stream %d via %s: %v, %q", i, base, err, text.String())
			}
		}()
	}
	wg.Wait()

	// A goes away; the job runs after that and B has the result.
	stopA()
	h.startRunner("later", 1, 512)
	done := awaitAsync(t, urlB, adminKey, id)
	if done["status"] != "succeeded" {
		t.Fatalf("job after A stopped: %v", done)
	}
	res := done["result"].(map[string]any)
	if text := res["choices"].([]any)[0].(map[string]any)["text"]; text == "" {
		t.Errorf("empty result %v", res)
	}
}

// TestActivatorGoneEndsItsStreams: when an activator goes away (a crash or
// a restart), a client whose stream it held sees the stream fail at once:
// an error, never a hang and never a [DONE] that would pass for a
// complete answer. Another activator keeps serving. (Async jobs surviving
// their activator is TestTwoActivators.)
func TestActivatorGoneEndsItsStreams(t *testing.T) {
	h := newHarness(t)
	h.deploy("cold", map[string]any{"parallel": 1}) // no runner: the stream waits
	urlA, stopA := h.addActivator()
	urlB, _ := h.addActivator()

	req, _ := http.NewRequest(http.MethodPost, urlA+"/v1/completions",
		strings.NewReader(`{"model":"cold","prompt":"Once upon a time","max_tokens":8,"stream":true}`))
	req.Header.Set("Authorization", "Bearer "+adminKey)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req) // returns once headers are sent (after the grace period)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("stream to A: %d", resp.StatusCode)
	}
	type result struct {
		body []byte
		err  error
	}
	done := make(chan result, 1)
	go func() {
		b, err := io.ReadAll(resp.Body)
		done <- result{b, err}
	}()
	stopA()
	select {
	case r := <-done:
		if r.err == nil || strings.Contains(string(r.body), "[DONE]") {
			t.Errorf("stream of a stopped activator ended with err %v after %q; want an error and no [DONE]", r.err, r.body)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the stream of a stopped activator hangs")
	}

	// B is unaffected.
	if status, _, body := call(t, urlB, adminKey, http.MethodGet, "/v1/models", ""); status != 200 {
		t.Errorf("B after A stopped: %d %v", status, body)
	}
}

// TestActivatorGoneStopsItsRunner: a runner streaming for an activator that
// went away (so no cancel will ever come) notices and stops generating,
// instead of holding its only slot until max_tokens while the queue waits.
func TestActivatorGoneStopsItsRunner(t *testing.T) {
	h := newHarness(t)
	h.deploy("long", map[string]any{"parallel": 1})
	// A context this long lets the generation run for many seconds; the
	// job is stopped within a few ClientChecks.
	h.startRunnerWith(runner.Config{Deployment: "long", Engine: runner.EngineConfig{Parallel: 1, Context: 1 << 14}, ClientCheck: 200 * time.Millisecond})
	usage := h.usageRecords("long")

	urlA, crashA := h.addCrashingActivator()
	testenv.UntilFirstToken(t, openStream(t, urlA, `{"model":"long","prompt":"Once upon a time","temperature":1.5,"seed":7,"stream":true}`).Body)
	crashA()
	stopped := time.Now()

	select {
	case rec := <-usage:
		if rec.Status != "cancelled" {
			t.Fatalf("the orphaned job ended %q (%s) after %d tokens; want it cancelled", rec.Status, rec.FinishReason, rec.CompletionTokens)
		}
		t.Logf("orphaned job stopped %s after its activator, at %d tokens", time.Since(stopped).Round(time.Millisecond), rec.CompletionTokens)
	case <-time.After(30 * time.Second):
		t.Fatal("the runner still generates 30 s after its activator stopped")
	}
	// The slot is free: the next request, through another activator, runs.
	urlB, _ := h.addActivator()
	if status, _, body := call(t, urlB, adminKey, http.MethodPost, "/v1/completions", `{"model":"long","prompt":"The cat","max_tokens":5}`); status != 200 {
		t.Fatalf("next request: %d %v", status, body)
	}
}
