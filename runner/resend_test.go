package runner

import (
	"bytes"
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/infer-run/infer/internal/queue"
	"github.com/infer-run/infer/internal/testenv"
	"github.com/infer-run/infer/internal/wire"
)

// TestResend: a runner keeps a sync job's events and publishes them again,
// the same bytes in the same order, when asked from a sequence number (as
// the activator does on a gap), after the job ended too; it answers gone
// for a job it does not know and for numbers past what it sent. A real
// runner, model and NATS; the test plays the activator.
func TestResend(t *testing.T) {
	ctx := context.Background()
	art, store := storedModel(t)
	nc, js, deployment := testQueue(t, "resend-")
	id := wire.NewID(4)

	// The activator's side: every event, last events acknowledged, pings
	// answered.
	replyTo, events := playActivator(t, nc)

	runRunner(t, Config{ID: id, DeploymentID: deployment, Deployment: deployment, Artifact: art, Cache: &Cache{Dir: t.TempDir(), Blobs: store}, Engine: EngineConfig{Parallel: 1, Context: 256}}, nc)

	zero := float32(0)
	job := wire.Job{ID: "cmpl-" + wire.NewID(6), Deployment: deployment, Kind: wire.KindCompletion, Prompt: "Once upon a time",
		MaxTokens: 64, Sampling: wire.Sampling{Temperature: &zero}, ReplyTo: replyTo, Deadline: time.Now().Add(time.Minute)}
	data, _ := json.Marshal(job)
	if _, err := queue.Publish(ctx, js, deployment, job.ID, data); err != nil {
		t.Fatal(err)
	}
	// next returns the next event, or fails the test after a while.
	next := func(what string) []byte {
		t.Helper()
		select {
		case ev := <-events:
			return ev
		case <-time.After(60 * time.Second):
			t.Fatalf("no %s", what)
			return nil
		}
	}
	var sent [][]byte
	for {
		ev := next("event from the runner")
		sent = append(sent, ev)
		e, err := wire.DecodeEvent(ev)
		if err != nil {
			t.Fatal(err)
		}
		if e.Seq != uint32(len(sent)-1) {
			t.Fatalf("event %d numbered %d", len(sent)-1, e.Seq)
		}
		if e.Type == wire.EventDone || e.Type == wire.EventError {
			break
		}
	}
	if len(sent) < 3 {
		t.Fatalf("%d events; want start, deltas, done", len(sent))
	}

	ask := func(jobID string, from uint32) string {
		t.Helper()
		m, err := nc.Request(wire.ResendSubject(id), wire.AppendResend(nil, jobID, from), 5*time.Second)
		if err != nil {
			t.Fatalf("resend request: %v", err)
		}
		return string(m.Data)
	}
	// The job is over (its last event acknowledged): what it sent can be
	// had again all the same.
	for _, from := range []uint32{1, 0, uint32(len(sent) - 1)} {
		if got := ask(job.ID, from); got != wire.ResendOK {
			t.Fatalf("resend from %d: %q, want %q", from, got, wire.ResendOK)
		}
		for i := int(from); i < len(sent); i++ {
			if got := next("resent event"); !bytes.Equal(got, sent[i]) {
				t.Errorf("resent event %d: %q, want %q", i, got, sent[i])
			}
		}
	}
	if got := ask(job.ID, uint32(len(sent))); got != wire.ResendOK {
		t.Errorf("resend from the end: %q, want %q (nothing to send)", got, wire.ResendOK)
	}
	for _, tc := range []struct {
		job  string
		from uint32
	}{{job.ID, uint32(len(sent) + 1)}, {"cmpl-unknown", 0}} {
		if got := ask(tc.job, tc.from); got != wire.ResendGone {
			t.Errorf("resend of %s from %d: %q, want %q", tc.job, tc.from, got, wire.ResendGone)
		}
	}
	select {
	case ev := <-events:
		t.Errorf("an event nobody asked for: %q", ev)
	case <-time.After(100 * time.Millisecond):
	}
}

// testQueue connects to a test NATS server and creates a request queue
// for a deployment whose ID starts with prefix; both go when the test
// ends.
func testQueue(t *testing.T, prefix string) (*nats.Conn, jetstream.JetStream, string) {
	t.Helper()
	nc, err := nats.Connect(testenv.NATS(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	deployment := prefix + wire.NewID(4)
	if _, err := queue.Ensure(t.Context(), js, deployment, queue.DeploymentLimits(10, time.Minute, 1)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { queue.Delete(context.Background(), js, deployment) })
	return nc, js, deployment
}

// playActivator subscribes as the activator holding a test's jobs would:
// every event a runner sends to replyTo (plus its ID) arrives on events,
// last events are acknowledged and pings answered alive. The subscription
// ends with the test.
func playActivator(t *testing.T, nc *nats.Conn) (replyTo string, events chan []byte) {
	t.Helper()
	replyTo = "_INFER.reply.test." + wire.NewID(6)
	events = make(chan []byte, 1024)
	sub, err := nc.Subscribe(replyTo+".>", func(m *nats.Msg) {
		if m.Header.Get(wire.PingHeader) != "" {
			m.Respond([]byte(wire.PingAlive))
			return
		}
		events <- bytes.Clone(m.Data)
		if m.Reply != "" {
			m.Respond(nil)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sub.Unsubscribe() })
	return replyTo, events
}
