package activator_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/infer-run/infer/activator"
	"github.com/infer-run/infer/internal/wire"
)

// storedJob reads an async job's record as stored, internal fields
// included, bypassing GET (which shows an expired job failed whether or
// not anything stored that).
func storedJob(t *testing.T, nc *nats.Conn, id string) map[string]any {
	t.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(context.Background(), wire.AsyncBucket)
	if err != nil {
		t.Fatal(err)
	}
	e, err := kv.Get(context.Background(), id)
	if err != nil {
		t.Fatalf("reading the record of %s: %v", id, err)
	}
	var m map[string]any
	if err := json.Unmarshal(e.Value(), &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// TestAsyncSweepFailsExpiredJobs: a job queued for a deployment that never
// gets a runner is failed in its stored record once its queue dropped it,
// and its webhook hears so exactly once although several activators sweep.
func TestAsyncSweepFailsExpiredJobs(t *testing.T) {
	const sweep = 20 * time.Millisecond
	h := newHarnessWith(t, activator.Config{AllowPrivateWebhooks: true, AsyncSweep: sweep})
	urlB, _ := h.addActivatorConfig(activator.Config{AllowPrivateWebhooks: true, AsyncSweep: sweep})
	urlC, _ := h.addActivatorConfig(activator.Config{AllowPrivateWebhooks: true, AsyncSweep: sweep})
	h.deploy("nobody", map[string]any{"queue_timeout": "1s"})
	hook := newWebhook(t, 0)

	// Jobs expiring together, so the three sweepers contend for each.
	const jobs = 30
	ids := map[string]bool{}
	for i := range jobs {
		base := []string{h.url, urlB, urlC}[i%3]
		status, _, job := call(t, base, adminKey, http.MethodPost, "/v1/async/completions",
			`{"model":"nobody","prompt":"hi","webhook":"`+hook.URL+`/done"}`)
		if status != http.StatusAccepted {
			t.Fatalf("submit: %d %v", status, job)
		}
		ids[job["id"].(string)] = true
	}

	for range jobs {
		select {
		case <-hook.arrived:
		case <-time.After(30 * time.Second):
			_, got := hook.snapshot()
			t.Fatalf("%d of %d webhooks of jobs nobody ran were called", len(got), jobs)
		}
	}
	// A second call for a job would come now.
	time.Sleep(time.Second)
	calls, got := hook.snapshot()
	if calls != jobs {
		t.Errorf("webhook called %d times for %d jobs, want exactly once each", calls, jobs)
	}
	seen := map[any]int{}
	for _, body := range got {
		seen[body["id"]]++
		if e, _ := body["error"].(map[string]any); !ids[body["id"].(string)] || body["status"] != "failed" || e == nil ||
			e["code"] != "queue_timeout" || e["type"] != "server_error" || e["message"] == "" {
			t.Errorf("webhook body %v; want one of the jobs, failed with a queue_timeout error", body)
		}
		for _, internal := range []string{"tenant_id", "dropped_at", "swept", "key_id", "prices"} {
			if _, ok := body[internal]; ok {
				t.Errorf("webhook body has internal field %q: %v", internal, body)
			}
		}
	}
	for id, n := range seen {
		if n != 1 {
			t.Errorf("job %v: %d webhook calls", id, n)
		}
	}

	for id := range ids {
		// The record itself says failed, webhook delivered, not just GET.
		if rec := storedJob(t, h.nc, id); rec["status"] != "failed" || rec["webhook_sent"] != true || rec["error"] == nil {
			t.Errorf("stored record %v; want failed with webhook_sent", rec)
		}
		status, _, got := call(t, urlC, adminKey, http.MethodGet, "/v1/async/"+id, "")
		if e, _ := got["error"].(map[string]any); status != 200 || got["status"] != "failed" || e == nil || e["code"] != "queue_timeout" || got["finished_at"] == nil {
			t.Errorf("GET %s: %d %v", id, status, got)
		}
	}
}

// syncBuffer is a log destination tests read while activators write.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestWebhookInternalAddresses: by default a webhook cannot reach internal
// addresses: a literal one is refused at submission, and a name that
// resolves to one is refused when it is dialled, so the job's webhook is
// given up (and logged) without a request reaching the receiver.
func TestWebhookInternalAddresses(t *testing.T) {
	logs := &syncBuffer{}
	log := slog.New(slog.NewTextHandler(io.MultiWriter(os.Stderr, logs), nil))
	h := newHarnessWith(t, activator.Config{AsyncSweep: 100 * time.Millisecond, Logger: log})
	h.deploy("stories", map[string]any{})
	h.deploy("nobody", map[string]any{"queue_timeout": "1s"})

	for _, tc := range []struct {
		name, webhook string
		header        bool
		status        int
	}{
		{"loopback", "http://127.0.0.1:8080/hook", false, 400},
		{"loopback in the header", "http://127.0.0.1/hook", true, 400},
		{"loopback, other spelling", "http://127.1.2.3/hook", false, 400},
		{"private", "http://10.0.0.1/hook", false, 400},
		{"private 172.16/12", "https://172.20.1.1/hook", false, 400},
		{"private 192.168/16", "http://192.168.1.10:9000/hook", false, 400},
		{"cloud metadata", "http://169.254.169.254/latest/meta-data/", false, 400},
		{"carrier-grade NAT", "http://100.100.100.200/latest/meta-data/", false, 400},
		{"unspecified", "http://0.0.0.0:8080/hook", false, 400},
		{"multicast", "http://224.0.0.1/hook", false, 400},
		{"IPv6 loopback", "http://[::1]:8080/hook", false, 400},
		{"IPv4-mapped IPv6 loopback", "http://[::ffff:127.0.0.1]/hook", false, 400},
		{"IPv6 unique local", "http://[fd00::1]/hook", false, 400},
		{"IPv6 link-local with zone", "http://[fe80::1%25eth0]/hook", false, 400},
		{"public address", "http://203.0.113.7/hook", false, 202},
		{"name", "https://hooks.example.com/hook", false, 202},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// A deployment with a long queue timeout: an accepted job is
			// neither run nor swept during the test.
			body := `{"model":"stories","prompt":"hi"}`
			var header []string
			if tc.header {
				header = []string{activator.WebhookHeader, tc.webhook}
			} else {
				body = `{"model":"stories","prompt":"hi","webhook":"` + tc.webhook + `"}`
			}
			status, _, got := call(t, h.url, adminKey, http.MethodPost, "/v1/async/completions", body, header...)
			if status != tc.status {
				t.Fatalf("%d %v, want %d", status, got, tc.status)
			}
			if tc.status == 400 {
				if e, _ := got["error"].(map[string]any); e == nil || e["param"] != "webhook" || e["type"] != "invalid_request_error" {
					t.Errorf("error %v, want invalid_request_error with param webhook", got)
				}
			}
		})
	}

	// "localhost" is a name, so it passes submission; it resolves to
	// loopback, which the dialer refuses.
	hook := newWebhook(t, 0)
	u, _ := url.Parse(hook.URL)
	webhook := "http://localhost:" + u.Port() + "/done"
	status, _, job := call(t, h.url, adminKey, http.MethodPost, "/v1/async/completions", `{"model":"nobody","prompt":"hi","webhook":"`+webhook+`"}`)
	if status != http.StatusAccepted {
		t.Fatalf("submit with a webhook on localhost: %d %v", status, job)
	}
	id := job["id"].(string)
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(logs.String(), "giving up on webhook: refusing") || !strings.Contains(logs.String(), id) {
		if time.Now().After(deadline) {
			t.Fatalf("no log of the refused webhook of %s; record %v", id, storedJob(t, h.nc, id))
		}
		time.Sleep(50 * time.Millisecond)
	}
	if calls, _ := hook.snapshot(); calls != 0 {
		t.Errorf("the receiver on localhost got %d calls", calls)
	}
	if rec := storedJob(t, h.nc, id); rec["status"] != "failed" {
		t.Errorf("stored record %v, want failed", rec)
	}
}

// createKey makes a user key with limits through the API and returns its
// secret.
func createKey(t *testing.T, base, limits string) string {
	t.Helper()
	status, _, got := call(t, base, adminKey, http.MethodPost, "/v1/keys", `{"name":"limited",`+limits+`}`)
	secret, _ := got["key"].(string)
	if status != http.StatusCreated || secret == "" {
		t.Fatalf("creating a key with %s: %d %v", limits, status, got)
	}
	return secret
}

// TestAsyncRefusalCostsNoRequest: an async request refused for what only
// async requests refuse does not spend the key's requests per minute.
func TestAsyncRefusalCostsNoRequest(t *testing.T) {
	h := newHarness(t)
	h.deploy("stories", map[string]any{})
	key := createKey(t, h.url, `"requests_per_minute":1`)

	for _, body := range []string{
		`{"model":"stories","prompt":"hi","stream":true}`,
		`{"model":"stories","prompt":"hi","webhook":"ftp://example.com/x"}`,
	} {
		if status, _, got := call(t, h.url, key, http.MethodPost, "/v1/async/completions", body); status != 400 {
			t.Fatalf("%s: %d %v, want 400", body, status, got)
		}
	}
	if status, _, got := call(t, h.url, key, http.MethodPost, "/v1/async/completions", `{"model":"stories","prompt":"hi"}`); status != http.StatusAccepted {
		t.Fatalf("a valid request after the refused ones: %d %v, want 202", status, got)
	}
	// The limit holds: that one was the minute's only request.
	status, _, got := call(t, h.url, key, http.MethodPost, "/v1/async/completions", `{"model":"stories","prompt":"hi"}`)
	if e, _ := got["error"].(map[string]any); status != http.StatusTooManyRequests || e == nil || e["code"] != "rate_limit_exceeded" {
		t.Errorf("second valid request: %d %v, want 429 rate_limit_exceeded", status, got)
	}
}

// TestAsyncTokensCharged: an async job's tokens count against its key's
// tokens per minute, like a sync request's.
func TestAsyncTokensCharged(t *testing.T) {
	h := newHarness(t)
	h.deploy("stories", map[string]any{"parallel": 1})
	h.startRunner("stories", 1, 256)
	const tpm = 20
	key := createKey(t, h.url, `"tokens_per_minute":20`)

	status, _, job := call(t, h.url, key, http.MethodPost, "/v1/async/completions",
		`{"model":"stories","prompt":"Once upon a time","max_tokens":40,"temperature":0}`)
	if status != http.StatusAccepted {
		t.Fatalf("submit: %d %v", status, job)
	}
	done := awaitAsync(t, h.url, key, job["id"].(string))
	res, _ := done["result"].(map[string]any)
	usage, _ := res["usage"].(map[string]any)
	if total, _ := usage["total_tokens"].(float64); done["status"] != "succeeded" || total <= tpm {
		t.Fatalf("job %v: want it to succeed using more than %d tokens", done, tpm)
	}

	for _, req := range []struct{ path, body string }{
		{"/v1/completions", `{"model":"stories","prompt":"hi","max_tokens":1}`},
		{"/v1/async/completions", `{"model":"stories","prompt":"hi","max_tokens":1}`},
	} {
		status, hdr, got := call(t, h.url, key, http.MethodPost, req.path, req.body)
		if e, _ := got["error"].(map[string]any); status != http.StatusTooManyRequests || e == nil || e["code"] != "rate_limit_exceeded" || hdr.Get("Retry-After") == "" {
			t.Errorf("%s after the job used the minute's tokens: %d %v, want 429 rate_limit_exceeded with Retry-After", req.path, status, got)
		}
	}
}

// TestAsyncSweepFailsOrphanedJobs: a job whose runner died while running
// it, and that no other runner took before its queue dropped it, is
// failed (runner_lost) and its webhook called, instead of staying
// "running" until the record expires. A live runner's job past the same
// time is left alone. Fake runners send the async start events; one of
// them sends heartbeats.
func TestAsyncSweepFailsOrphanedJobs(t *testing.T) {
	h := newHarness(t)
	url, _ := h.addActivatorConfig(activator.Config{AllowPrivateWebhooks: true, AsyncSweep: 50 * time.Millisecond})
	h.deploy("orphans", map[string]any{"queue_timeout": "1s"})
	hook := newWebhook(t, 0)
	js, err := jetstream.New(h.nc)
	if err != nil {
		t.Fatal(err)
	}
	heartbeat(t, h.nc, h.depID("orphans"), "alive-runner")

	submit := func() string {
		t.Helper()
		status, _, job := call(t, url, adminKey, http.MethodPost, "/v1/async/completions",
			`{"model":"orphans","prompt":"hi","webhook":"`+hook.URL+`/done"}`)
		if status != http.StatusAccepted {
			t.Fatalf("submit: %d %v", status, job)
		}
		return job["id"].(string)
	}
	// start plays a runner taking the job: off the queue, then a start
	// event, as runner.handle sends for an async job.
	start := func(id, runner string) {
		t.Helper()
		stream, err := js.Stream(context.Background(), wire.RequestStream(h.depID("orphans")))
		if err != nil {
			t.Fatal(err)
		}
		m, err := stream.GetLastMsgForSubject(context.Background(), wire.RequestSubject(h.depID("orphans")))
		if err != nil {
			t.Fatal(err)
		}
		if err := stream.DeleteMsg(context.Background(), m.Sequence); err != nil {
			t.Fatal(err)
		}
		data, _ := wire.AppendEvent(nil, &wire.Event{Type: wire.EventStart, Runner: runner, Usage: &wire.Usage{PromptTokens: 1}})
		if err := h.nc.Publish(wire.AsyncEventSubject(id), data); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(10 * time.Second)
		for storedJob(t, h.nc, id)["status"] != "running" {
			if time.Now().After(deadline) {
				t.Fatalf("job %s never started", id)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	orphan, kept := submit(), ""
	start(orphan, "dead-runner") // no heartbeat: gone
	kept = submit()
	start(kept, "alive-runner")

	select {
	case <-hook.arrived:
	case <-time.After(30 * time.Second):
		t.Fatalf("the orphaned job's webhook was never called; record %v", storedJob(t, h.nc, orphan))
	}
	// The live runner's job is past its drop time by now too.
	time.Sleep(time.Second)
	calls, got := hook.snapshot()
	if calls != 1 || got[0]["id"] != orphan {
		t.Fatalf("webhook calls %d %v; want one, for %s", calls, got, orphan)
	}
	if e, _ := got[0]["error"].(map[string]any); got[0]["status"] != "failed" || e == nil || e["code"] != "runner_lost" {
		t.Errorf("webhook body %v; want failed with runner_lost", got[0])
	}
	if _, ok := got[0]["runner"]; ok {
		t.Errorf("webhook body shows the internal runner field: %v", got[0])
	}
	if rec := storedJob(t, h.nc, orphan); rec["status"] != "failed" || rec["webhook_sent"] != true {
		t.Errorf("stored orphaned job %v; want failed, webhook sent", rec)
	}
	if rec := storedJob(t, h.nc, kept); rec["status"] != "running" {
		t.Errorf("the live runner's job %v; want still running", rec)
	}
}

// TestAsyncSweepWebhookTakenOver: the activator that failed a job in a
// sweep stops while its webhook call hangs; no event is left to redeliver,
// so another activator takes the delivery over once the claim is old.
func TestAsyncSweepWebhookTakenOver(t *testing.T) {
	// The harness's own activator does not sweep in this test.
	h := newHarnessWith(t, activator.Config{AllowPrivateWebhooks: true, AsyncSweep: time.Hour})
	h.deploy("late", map[string]any{"queue_timeout": "1s"})

	var mu sync.Mutex
	calls := 0
	hanging := make(chan struct{})
	delivered := make(chan map[string]any, 4)
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		calls++
		first := calls == 1
		mu.Unlock()
		if first {
			close(hanging)
			// Until the caller gives up (the server sees that only once
			// the body is read).
			io.Copy(io.Discard, r.Body)
			<-r.Context().Done()
			return
		}
		var body map[string]any
		json.NewDecoder(r.Body).Decode(&body)
		delivered <- body
	}))
	t.Cleanup(hook.Close)

	urlA, stopA := h.addActivatorConfig(activator.Config{AllowPrivateWebhooks: true, AsyncSweep: 50 * time.Millisecond, AsyncWebhookClaim: time.Hour})
	status, _, job := call(t, urlA, adminKey, http.MethodPost, "/v1/async/completions",
		`{"model":"late","prompt":"hi","webhook":"`+hook.URL+`/done"}`)
	if status != http.StatusAccepted {
		t.Fatalf("submit: %d %v", status, job)
	}
	id := job["id"].(string)
	select {
	case <-hanging:
	case <-time.After(30 * time.Second):
		t.Fatal("the sweeping activator never called the webhook")
	}
	stopA()

	h.addActivatorConfig(activator.Config{AllowPrivateWebhooks: true, AsyncSweep: 50 * time.Millisecond, AsyncWebhookClaim: 500 * time.Millisecond})
	select {
	case body := <-delivered:
		if body["id"] != id || body["status"] != "failed" {
			t.Errorf("webhook body %v; want job %s, failed", body, id)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("no other activator delivered the webhook; record %v", storedJob(t, h.nc, id))
	}
	deadline := time.Now().Add(10 * time.Second)
	for storedJob(t, h.nc, id)["webhook_sent"] != true {
		if time.Now().After(deadline) {
			t.Fatalf("record %v: webhook not recorded as sent", storedJob(t, h.nc, id))
		}
		time.Sleep(20 * time.Millisecond)
	}
}
