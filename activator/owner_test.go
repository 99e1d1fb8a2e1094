package activator_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/infer-run/infer/internal/wire"
)

// fakeRunner plays a runner on the reply subject of one job.
type fakeRunner struct {
	t       *testing.T
	nc      *nats.Conn
	id      string
	subject string
	seq     uint32 // the next event's number

	mu  sync.Mutex
	log [][]byte // the events encoded, by number, for resends
	// ignore is how many resend requests go unanswered before one is
	// served, as if lost on the way.
	ignore int
}

// encode numbers the runner's next event and logs it.
func (r *fakeRunner) encode(ev *wire.Event) []byte {
	r.t.Helper()
	ev.Seq = r.seq
	r.seq++
	data, err := wire.AppendEvent(nil, ev)
	if err != nil {
		r.t.Fatal(err)
	}
	r.mu.Lock()
	for len(r.log) < int(ev.Seq) {
		r.log = append(r.log, nil) // skipped: never sent, not resendable
	}
	r.log = append(r.log[:ev.Seq], data)
	r.mu.Unlock()
	return data
}

// lose numbers and logs an event, as a runner that sent it, but does not
// send it: it is lost on the way.
func (r *fakeRunner) lose(ev *wire.Event) { r.encode(ev) }

// serveResends answers resend requests as a runner does, from the log.
func (r *fakeRunner) serveResends() {
	r.t.Helper()
	sub, err := r.nc.Subscribe(wire.ResendSubject(r.id), func(m *nats.Msg) {
		_, from, err := wire.ParseResend(m.Data)
		r.mu.Lock()
		defer r.mu.Unlock()
		if r.ignore > 0 {
			r.ignore--
			return
		}
		if err != nil || int(from) > len(r.log) || slices.ContainsFunc(r.log[from:], func(ev []byte) bool { return ev == nil }) {
			m.Respond([]byte(wire.ResendGone))
			return
		}
		for _, ev := range r.log[from:] {
			r.nc.Publish(r.subject, ev)
		}
		m.Respond([]byte(wire.ResendOK))
	})
	if err != nil {
		r.t.Fatal(err)
	}
	r.t.Cleanup(func() { sub.Unsubscribe() })
}

func (r *fakeRunner) send(ev *wire.Event) {
	r.t.Helper()
	if err := r.nc.Publish(r.subject, r.encode(ev)); err != nil {
		r.t.Fatal(err)
	}
}

func (r *fakeRunner) start() {
	r.send(&wire.Event{Type: wire.EventStart, Runner: r.id, Usage: &wire.Usage{PromptTokens: 3}})
}
func (r *fakeRunner) delta(text string) { r.send(&wire.Event{Type: wire.EventDelta, Text: text}) }
func (r *fakeRunner) done() {
	r.send(&wire.Event{Type: wire.EventDone, FinishReason: "stop", Usage: &wire.Usage{PromptTokens: 3, CompletionTokens: 1}})
}

// last sends a job's last event as a runner does: as a request, which the
// activator must acknowledge.
func (r *fakeRunner) last(ev *wire.Event) {
	r.t.Helper()
	if _, err := r.nc.Request(r.subject, r.encode(ev), 5*time.Second); err != nil {
		r.t.Errorf("last event %s #%d not acknowledged: %v", ev.Type, ev.Seq, err)
	}
}

// ping asks the activator what the runner would: alive, gone, superseded.
func (r *fakeRunner) ping() string {
	r.t.Helper()
	m := nats.NewMsg(r.subject)
	m.Header.Set(wire.PingHeader, "1")
	reply, err := r.nc.RequestMsg(m, 5*time.Second)
	if err != nil {
		r.t.Fatalf("ping as %s: %v", r.id, err)
	}
	return string(reply.Data)
}

// heartbeat keeps a fake runner alive in the activators' view until the
// test ends.
func heartbeat(t *testing.T, nc *nats.Conn, deployment, id string) {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go func() {
		for {
			hb, _ := json.Marshal(wire.Heartbeat{RunnerID: id, Deployment: deployment, DeploymentID: deployment, Phase: wire.PhaseReady, Slots: 1, StartedAt: time.Now(), Sent: time.Now()})
			nc.Publish(wire.HeartbeatSubject(deployment, id), hb)
			select {
			case <-ctx.Done():
				return
			case <-time.After(300 * time.Millisecond):
			}
		}
	}()
}

// takeJob takes the next job off a deployment's queue, as a runner would,
// waiting for one to be queued.
func takeJob(t *testing.T, js jetstream.JetStream, deployment string) wire.Job {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		stream, err := js.Stream(context.Background(), wire.RequestStream(deployment))
		if err == nil {
			if m, err := stream.GetLastMsgForSubject(context.Background(), wire.RequestSubject(deployment)); err == nil {
				var job wire.Job
				if err := json.Unmarshal(m.Data, &job); err != nil {
					t.Fatal(err)
				}
				if err := stream.DeleteMsg(context.Background(), m.Sequence); err != nil {
					t.Fatal(err)
				}
				return job
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("the job never reached the queue")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// startRequest starts a completion on a deployment that has no runner
// and returns the job's reply subject, read from the queue, and the
// response's status and whole body once it ends.
func startRequest(t *testing.T, h *harness, js jetstream.JetStream, model string, stream bool) (replyTo string, body <-chan string) {
	t.Helper()
	out := make(chan string, 1)
	go func() {
		resp := h.do(http.MethodPost, "/v1/completions", fmt.Sprintf(`{"model":%q,"prompt":"Once","max_tokens":5,"stream":%t}`, model, stream))
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		out <- fmt.Sprintf("%d %s", resp.StatusCode, b)
	}()
	return takeJob(t, js, h.depID(model)).ReplyTo, out
}

// waitBody waits for what startRequest returns.
func waitBody(t *testing.T, body <-chan string) string {
	t.Helper()
	select {
	case b := <-body:
		return b
	case <-time.After(30 * time.Second):
		t.Fatal("the response did not end")
		return ""
	}
}

// TestJobOnTwoRunners: when JetStream hands a job to a second runner (the
// first stopped reporting progress: dead, or only frozen), the client gets
// one runner's answer, never a mix, and the other runner is told to stop.
// Two fake runners play the runners' side of the protocol against a real
// activator and NATS, since making a real runner freeze at exactly the
// right moment cannot be done reliably.
func TestJobOnTwoRunners(t *testing.T) {
	h := newHarness(t)
	h.deploy("two", map[string]any{"parallel": 1, "queue_timeout": "5s"})
	js, err := jetstream.New(h.nc)
	if err != nil {
		t.Fatal(err)
	}

	requestWith := func(stream bool) (string, <-chan string) { return startRequest(t, h, js, "two", stream) }
	request := func() (string, <-chan string) { return requestWith(true) }
	runner := func(replyTo, id string) *fakeRunner {
		return &fakeRunner{t: t, nc: h.nc, id: id, subject: wire.RunnerReplySubject(replyTo, id)}
	}
	wait := func(body <-chan string) string { return waitBody(t, body) }

	t.Run("the owner is alive", func(t *testing.T) {
		replyTo, body := request()
		a, b := runner(replyTo, "runnerA"), runner(replyTo, "runnerB")
		heartbeat(t, h.nc, h.depID("two"), a.id)
		a.start()
		// The events of one runner arrive in order; wait until the start
		// counts before the second runner shows up.
		deadline := time.Now().Add(10 * time.Second)
		for a.ping() != wire.PingAlive || b.ping() != wire.PingSuperseded {
			if time.Now().After(deadline) {
				t.Fatalf("pings after runnerA's start: A %q, B %q; want alive and superseded", a.ping(), b.ping())
			}
			time.Sleep(10 * time.Millisecond)
		}
		b.start()
		b.delta("GHOST")
		a.delta("real")
		a.done()
		got := wait(body)
		if !strings.Contains(got, `"real"`) || strings.Contains(got, "GHOST") || !strings.Contains(got, "[DONE]") {
			t.Errorf("stream %q: want runnerA's text only, then [DONE]", got)
		}
		if got := b.ping(); got != wire.PingGone {
			t.Errorf("ping after the request ended: %q, want %q", got, wire.PingGone)
		}
	})

	t.Run("the owner is given up for dead", func(t *testing.T) {
		replyTo, body := request()
		c, d := runner(replyTo, "runnerC"), runner(replyTo, "runnerD")
		c.start() // and no heartbeat: the activator gives C up
		deadline := time.Now().Add(20 * time.Second)
		for c.ping() != wire.PingSuperseded {
			if time.Now().After(deadline) {
				t.Fatal("a runner without heartbeats still owns the job")
			}
			time.Sleep(50 * time.Millisecond)
		}
		if got := d.ping(); got != wire.PingAlive {
			t.Fatalf("the next runner's ping: %q, want alive", got)
		}
		d.start()
		c.delta("GHOST") // C wakes up
		d.delta("second")
		d.done()
		got := wait(body)
		if !strings.Contains(got, `"second"`) || strings.Contains(got, "GHOST") || !strings.Contains(got, "[DONE]") {
			t.Errorf("stream %q: want runnerD's text only, then [DONE]", got)
		}
	})

	// A body is written only at the end, so a runner lost after some
	// text lost nothing the client saw: the next runner's answer is the
	// whole answer, with none of the lost runner's text.
	t.Run("the owner of a non-streaming request is given up for dead", func(t *testing.T) {
		replyTo, body := requestWith(false)
		f, g := runner(replyTo, "runnerF"), runner(replyTo, "runnerG")
		f.start() // and no heartbeat: the activator gives F up
		f.delta("LOST")
		deadline := time.Now().Add(20 * time.Second)
		for f.ping() != wire.PingSuperseded {
			select {
			case got := <-body:
				t.Fatalf("the request ended with %q instead of waiting for the next runner", got)
			default:
			}
			if time.Now().After(deadline) {
				t.Fatal("a runner without heartbeats still owns the job")
			}
			time.Sleep(50 * time.Millisecond)
		}
		g.start()
		g.delta("second")
		g.done()
		got := wait(body)
		if !strings.HasPrefix(got, "200 ") || !strings.Contains(got, `"text":"second"`) || strings.Contains(got, "LOST") {
			t.Errorf("response %q: want 200 with runnerG's text only", got)
		}
	})

	// The job left the queue with its lost runner (here: the test took
	// it), so no other runner ever starts it: the client gets an error
	// after the ack wait and the queue timeout, never a hang.
	t.Run("nobody takes over", func(t *testing.T) {
		replyTo, body := request()
		e := runner(replyTo, "runnerE")
		e.start() // and no heartbeat
		got := wait(body)
		if !strings.Contains(got, "event: error") || !strings.Contains(got, "runner_lost") {
			t.Errorf("stream %q: want an error event naming runner_lost", got)
		}
	})
}

// TestHangUpAfterAnswer: a client that goes away once its answer is
// complete cancels nothing. The runner is done with the job, so no cancel
// goes out, and the request counts as ok, not also as cancelled. To hang up
// at exactly that moment, the answer is made larger than the socket
// buffers and the client never reads it: the activator is stuck writing
// the finished body when the connection breaks.
func TestHangUpAfterAnswer(t *testing.T) {
	h := newHarness(t)
	h.deploy("late", map[string]any{"parallel": 1})
	js, err := jetstream.New(h.nc)
	if err != nil {
		t.Fatal(err)
	}
	cancels, err := h.nc.SubscribeSync(wire.CancelSubject(h.depID("late")))
	if err != nil {
		t.Fatal(err)
	}

	conn, err := net.Dial("tcp", strings.TrimPrefix(h.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	body := `{"model":"late","prompt":"Once","max_tokens":5}`
	fmt.Fprintf(conn, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", adminKey, len(body), body)

	job := takeJob(t, js, h.depID("late"))
	r := &fakeRunner{t: t, nc: h.nc, id: "runnerL", subject: wire.RunnerReplySubject(job.ReplyTo, "runnerL")}
	heartbeat(t, h.nc, h.depID("late"), r.id)
	r.start()
	chunk := strings.Repeat("x", 512<<10)
	for range 64 { // 32 MiB, far more than loopback socket buffers hold
		r.delta(chunk)
	}
	r.done()

	// The request is answered (counted ok) and its body being written.
	deadline := time.Now().Add(20 * time.Second)
	for h.metric(`infer_requests_total{deployment="late",status="ok"}`) != "1" {
		if time.Now().After(deadline) {
			t.Fatal("the request was never answered")
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond)
	conn.(*net.TCPConn).SetLinger(0) // reset: the stuck write fails at once
	conn.Close()
	for r.ping() != wire.PingGone {
		if time.Now().After(deadline) {
			t.Fatal("the request's handler did not return after the client left")
		}
		time.Sleep(20 * time.Millisecond)
	}

	h.nc.Flush()
	if m, err := cancels.NextMsg(200 * time.Millisecond); err == nil {
		t.Errorf("cancel published for %q after the request was answered", m.Data)
	}
	if got := h.metric(`infer_requests_total{deployment="late",status="cancelled"}`); got != "" {
		t.Errorf("an answered request also counted as cancelled (%s)", got)
	}
}

// metric returns the value of one series (name and labels, as /metrics
// prints them) of the harness's activator, or "" if it has none.
func (h *harness) metric(series string) string {
	h.t.Helper()
	rec := httptest.NewRecorder()
	promhttp.HandlerFor(h.metrics, promhttp.HandlerOpts{}).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	for line := range strings.Lines(rec.Body.String()) {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// TestLostEvents: runners number their events for a job. When they have
// a gap (NATS drops what a runner publishes while the activator's
// subscription is reconnecting), the relay asks the runner for them
// again; a runner that cannot resend them gets its request ended with
// output_lost and its job stopped, rather than an answer with text
// missing or a wait for a last event that will never come. A runner's last event is
// acknowledged, with a waiter or without (the request already over), so
// the runner stops repeating it; a repeated event counts once. Fake
// runners play the runner's side: a real runner cannot be made to lose
// one chosen event.
func TestLostEvents(t *testing.T) {
	h := newHarness(t)
	h.deploy("lossy", map[string]any{"parallel": 1, "queue_timeout": "5s"})
	js, err := jetstream.New(h.nc)
	if err != nil {
		t.Fatal(err)
	}
	cancels := make(chan string, 16)
	sub, err := h.nc.Subscribe(wire.CancelSubject(h.depID("lossy")), func(m *nats.Msg) { cancels <- string(m.Data) })
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()

	for _, tc := range []struct {
		name    string
		stream  bool
		resends bool // the runner takes resend requests
		run     func(r *fakeRunner)
		want    []string // in the response, in order
		absent  string
		lost    bool // the job is stopped
	}{
		{"a delta lost, stream", true, false, func(r *fakeRunner) {
			r.start()
			r.delta("one")
			r.seq++ // "two" never arrives
			r.delta("three")
			r.done()
		}, []string{"200 ", `"one"`, "event: error", `"output_lost"`, "[DONE]"}, "three", true},
		{"the start lost, body", false, false, func(r *fakeRunner) {
			r.seq++
			r.delta("one")
			r.done()
		}, []string{"502 ", `"output_lost"`}, "one", true},
		{"a repeated event counts once", false, false, func(r *fakeRunner) {
			r.start()
			r.delta("one")
			r.seq--
			r.delta("one")
			r.delta("two")
			r.last(&wire.Event{Type: wire.EventDone, FinishReason: "stop", Usage: &wire.Usage{PromptTokens: 3, CompletionTokens: 2}})
			// The request is over: its last event, repeated, is still
			// acknowledged.
			r.seq--
			r.last(&wire.Event{Type: wire.EventDone, FinishReason: "stop", Usage: &wire.Usage{PromptTokens: 3, CompletionTokens: 2}})
		}, []string{"200 ", `"text":"onetwo"`}, "oneone", false},
		{"a delta lost and resent, stream", true, true, func(r *fakeRunner) {
			r.start()
			r.delta("one")
			r.lose(&wire.Event{Type: wire.EventDelta, Text: "two"})
			r.delta("three")
			r.delta("four")
			r.done()
		}, []string{"200 ", `"one"`, `"two"`, `"three"`, `"four"`, `"finish_reason":"stop"`, "[DONE]"}, "error", false},
		{"the start lost and resent, body", false, true, func(r *fakeRunner) {
			r.lose(&wire.Event{Type: wire.EventStart, Runner: r.id, Usage: &wire.Usage{PromptTokens: 3}})
			r.delta("one")
			r.last(&wire.Event{Type: wire.EventDone, FinishReason: "stop", Usage: &wire.Usage{PromptTokens: 3, CompletionTokens: 1}})
		}, []string{"200 ", `"text":"one"`}, "oneone", false},
		{"the first resend request lost, after the last event, stream", true, true, func(r *fakeRunner) {
			r.ignore = 1
			r.start()
			r.delta("one")
			r.lose(&wire.Event{Type: wire.EventDelta, Text: "two"})
			// Acknowledged at once: nothing more comes to ask again on.
			r.last(&wire.Event{Type: wire.EventDone, FinishReason: "stop", Usage: &wire.Usage{PromptTokens: 3, CompletionTokens: 2}})
		}, []string{"200 ", `"one"`, `"two"`, `"finish_reason":"stop"`, "[DONE]"}, "error", false},
		{"the runner has the events no more, stream", true, true, func(r *fakeRunner) {
			r.start()
			r.delta("one")
			r.seq++ // "two" is not in the runner's log either
			r.delta("three")
			r.done()
		}, []string{"200 ", `"one"`, "event: error", `"output_lost"`, "[DONE]"}, "three", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			replyTo, body := startRequest(t, h, js, "lossy", tc.stream)
			r := &fakeRunner{t: t, nc: h.nc, id: "runnerL", subject: wire.RunnerReplySubject(replyTo, "runnerL")}
			heartbeat(t, h.nc, h.depID("lossy"), r.id)
			if tc.resends {
				r.serveResends()
			}
			id := replyTo[strings.LastIndex(replyTo, ".")+1:] // the request ID ends the subject
			resends := h.metric(`infer_event_resends_total{deployment="lossy"}`)
			tc.run(r)
			got := waitBody(t, body)
			// Every gap is asked about, whether the runner can answer
			// or not.
			if gap := tc.resends || tc.lost; gap && h.metric(`infer_event_resends_total{deployment="lossy"}`) == resends {
				t.Errorf("no resend request counted for a gap (%s before)", resends)
			}
			rest := got
			for _, w := range tc.want {
				i := strings.Index(rest, w)
				if i < 0 {
					t.Fatalf("response %q: want %q (after the previous part)", got, w)
				}
				rest = rest[i+len(w):]
			}
			if strings.Contains(got, tc.absent) {
				t.Errorf("response %q has %q", got, tc.absent)
			}
			select {
			case c := <-cancels:
				if !tc.lost || c != id {
					t.Errorf("job %s cancelled; want lost %v for %s", c, tc.lost, id)
				}
			case <-time.After(time.Second):
				if tc.lost {
					t.Errorf("the job of a request with lost output was not stopped")
				}
			}
		})
	}
}
