package activator_test

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/infer-run/infer/activator"
	"github.com/infer-run/infer/internal/queue"
	"github.com/infer-run/infer/internal/testenv"
	"github.com/infer-run/infer/registry"
	"github.com/infer-run/infer/runner"
)

// served is an activator run by Serve on a real listener, as `infer
// activator` runs it.
type served struct {
	url string
	// shutdown cancels Serve's context, as SIGTERM does.
	shutdown context.CancelFunc
	// done is closed when Serve returns, with what it returned in err.
	done chan struct{}
	err  error
}

// serveActivator runs an activator with cfg through Serve on a loopback
// listener until the test ends (or its shutdown is called).
func (h *harness) serveActivator(cfg activator.Config) *served {
	h.t.Helper()
	cfg.NATS = h.connect()
	cfg.Registry = h.store
	cfg.Uploader = &registry.Uploader{Store: h.store, Blobs: h.blobs}
	cfg.Logger = slog.Default()
	srv, err := activator.New(cfg)
	if err != nil {
		h.t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		h.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &served{url: "http://" + l.Addr().String(), shutdown: cancel, done: make(chan struct{})}
	go func() { s.err = srv.Serve(ctx, l); close(s.done) }()
	h.t.Cleanup(func() {
		cancel()
		<-s.done
		srv.Close()
	})
	return s
}

// openStream posts a streaming request and returns the response once its
// headers are in.
func openStream(t *testing.T, url, body string) *http.Response {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, url+"/v1/completions", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+adminKey)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("stream: %d %s", resp.StatusCode, b)
	}
	return resp
}

// streamEnd is how a stream ended.
type streamEnd struct {
	rest []byte // what was read after the caller's last line
	err  error  // the read error: nil for a stream that ended properly
	at   time.Time
}

// readRest reads a stream to its end in the background.
func readRest(r io.Reader) <-chan streamEnd {
	done := make(chan streamEnd, 1)
	go func() {
		b, err := io.ReadAll(r)
		done <- streamEnd{b, err, time.Now()}
	}()
	return done
}

// errorEvent returns the error of a stream's SSE error event.
func errorEvent(t *testing.T, body []byte) (code string, ok bool) {
	t.Helper()
	_, after, found := strings.Cut(string(body), "event: error\ndata: ")
	if !found {
		return "", false
	}
	line, _, _ := strings.Cut(after, "\n")
	var e struct {
		Error struct {
			Code string `json:"code"`
			Type string `json:"type"`
		} `json:"error"`
	}
	if err := json.Unmarshal([]byte(line), &e); err != nil {
		t.Fatalf("error event %q: %v", line, err)
	}
	return e.Error.Code, true
}

// TestShutdownEndsQueuedRequests: a shutting-down activator ends the
// requests no runner took at once, with an error the client can act on
// (activator_shutting_down, Retry-After), rather than hold them through
// the grace and then cut them; their jobs leave the queue, so no runner
// later generates for a client that was told to retry.
func TestShutdownEndsQueuedRequests(t *testing.T) {
	h := newHarness(t)
	h.deploy("cold", map[string]any{"parallel": 1}) // no runner: requests wait
	a := h.serveActivator(activator.Config{ShutdownGrace: 30 * time.Second})

	// A stream that began SSE (its cold-start comments) and a plain request.
	stream := openStream(t, a.url, `{"model":"cold","prompt":"Once upon a time","max_tokens":8,"stream":true}`)
	streamDone := readRest(stream.Body)
	type answer struct {
		status int
		header http.Header
		body   map[string]any
	}
	plain := make(chan answer, 1)
	go func() {
		status, header, body := call(t, a.url, adminKey, http.MethodPost, "/v1/completions", `{"model":"cold","prompt":"Once","max_tokens":8}`)
		plain <- answer{status, header, body}
	}()
	h.waitQueued("cold", 2)

	began := time.Now()
	a.shutdown()

	select {
	case r := <-streamDone:
		if r.err != nil {
			t.Fatalf("the queued stream was cut (%v) after %q; want an error event and a proper end", r.err, r.rest)
		}
		if code, ok := errorEvent(t, r.rest); !ok || code != "activator_shutting_down" {
			t.Errorf("queued stream ended with %q; want an SSE error event with code activator_shutting_down", r.rest)
		}
		if !strings.HasSuffix(string(r.rest), "data: [DONE]\n\n") {
			t.Errorf("queued stream does not end with [DONE] after its error event: %q", r.rest)
		}
		t.Logf("queued stream ended %s after shutdown began", r.at.Sub(began).Round(time.Millisecond))
	case <-time.After(10 * time.Second):
		t.Fatal("the queued stream is still open 10 s into the shutdown; want it ended at once")
	}
	select {
	case r := <-plain:
		if r.status != http.StatusServiceUnavailable || r.header.Get("Retry-After") == "" {
			t.Errorf("queued request: %d, Retry-After %q; want 503 with Retry-After", r.status, r.header.Get("Retry-After"))
		}
		if e, _ := r.body["error"].(map[string]any); e == nil || e["code"] != "activator_shutting_down" || e["type"] != "server_error" {
			t.Errorf("queued request's error: %v; want code activator_shutting_down", r.body)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the queued request has no answer 10 s into the shutdown")
	}
	select {
	case <-a.done:
		if a.err != nil {
			t.Errorf("Serve: %v", a.err)
		}
		// Nothing was generating: the 30 s grace is not spent.
		if d := time.Since(began); d > 10*time.Second {
			t.Errorf("Serve returned %s after shutdown began; nothing ran, want well under the grace", d)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("Serve has not returned 15 s into a shutdown with nothing running")
	}

	// The jobs were withdrawn: no runner will generate them.
	js, err := jetstream.New(h.nc)
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		d, err := queue.GetDepth(context.Background(), js, h.depID("cold"))
		if err != nil {
			t.Fatal(err)
		}
		if d.Total() == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("queue of cold after shutdown: %+v; want the withdrawn jobs gone", d)
		}
	}
}

// TestShutdownGrace: a stream that is generating when its activator shuts
// down keeps going for the grace; if it is still running when the grace
// ends it gets an SSE error event (never a bare cut), and its runner stops
// generating. One that finishes within the grace completes normally.
func TestShutdownGrace(t *testing.T) {
	h := newHarness(t)
	h.deploy("long", map[string]any{"parallel": 2})
	h.startRunnerWith(runner.Config{Deployment: "long", Engine: runner.EngineConfig{Parallel: 2, Context: 1 << 14}})
	usage := h.usageRecords("long")

	const grace = 2 * time.Second
	a := h.serveActivator(activator.Config{ShutdownGrace: grace})
	// Endless: it is running when the grace ends.
	stream := openStream(t, a.url, `{"model":"long","prompt":"Once upon a time","temperature":1.5,"seed":7,"stream":true}`)
	br := testenv.UntilFirstToken(t, stream.Body)
	streamDone := readRest(br)

	began := time.Now()
	a.shutdown()

	select {
	case r := <-streamDone:
		took := r.at.Sub(began)
		if r.err != nil {
			t.Fatalf("the running stream was cut (%v) %s into the shutdown; want an error event", r.err, took)
		}
		if code, ok := errorEvent(t, r.rest); !ok || code != "activator_shutting_down" {
			t.Fatalf("running stream ended without an activator_shutting_down error event: ...%q", tail(r.rest))
		}
		if took < grace-100*time.Millisecond {
			t.Errorf("running stream ended %s into the shutdown; want it to run for the %s grace", took, grace)
		}
		t.Logf("running stream ended %s into the shutdown (grace %s)", took.Round(time.Millisecond), grace)
	case <-time.After(grace + 15*time.Second):
		t.Fatal("the running stream is still open long after the grace")
	}
	select {
	case <-a.done:
		if a.err != nil {
			t.Errorf("Serve: %v", a.err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve has not returned 10 s after the grace")
	}
	select {
	case rec := <-usage:
		if rec.Status != "cancelled" {
			t.Errorf("the job ended %q (%s) after %d tokens; want it cancelled", rec.Status, rec.FinishReason, rec.CompletionTokens)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("the runner still generates 15 s after the grace ended its stream")
	}

	// A stream that finishes within the grace completes: [DONE], no error.
	b := h.serveActivator(activator.Config{ShutdownGrace: 20 * time.Second})
	stream = openStream(t, b.url, `{"model":"long","prompt":"Once upon a time","max_tokens":400,"stream":true}`)
	br = bufio.NewReader(stream.Body)
	if _, err := br.ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	streamDone = readRest(br)
	b.shutdown()
	select {
	case r := <-streamDone:
		if r.err != nil {
			t.Fatalf("stream finishing within the grace: %v", r.err)
		}
		if _, ok := errorEvent(t, r.rest); ok || !strings.Contains(string(r.rest), `"finish_reason":"length"`) || !strings.HasSuffix(string(r.rest), "data: [DONE]\n\n") {
			t.Errorf("stream finishing within the grace ended ...%q; want its last chunk and [DONE]", tail(r.rest))
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the stream did not finish")
	}
	select {
	case <-b.done:
		if b.err != nil {
			t.Errorf("Serve: %v", b.err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve has not returned 10 s after its last stream finished")
	}
}

func tail(b []byte) []byte { return b[max(0, len(b)-400):] }
