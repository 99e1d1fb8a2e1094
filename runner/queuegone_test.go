package runner

import (
	"context"
	"encoding/json"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/infer-run/infer/internal/queue"
	"github.com/infer-run/infer/internal/wire"
)

func TestFetchBackoff(t *testing.T) {
	for _, tc := range []struct {
		n    int
		want time.Duration
	}{
		{0, 0}, {1, 100 * time.Millisecond}, {2, 200 * time.Millisecond}, {3, 400 * time.Millisecond},
		{6, 3200 * time.Millisecond}, {7, 5 * time.Second}, {100, 5 * time.Second},
	} {
		if got := fetchBackoff(tc.n); got != tc.want {
			t.Errorf("fetchBackoff(%d) = %v, want %v", tc.n, got, tc.want)
		}
	}
}

// logLines records what a runner logs, and forwards it.
type logLines struct {
	next slog.Handler
	mu   *sync.Mutex
	recs *[]slog.Record
}

func (l logLines) Enabled(context.Context, slog.Level) bool { return true }
func (l logLines) Handle(ctx context.Context, r slog.Record) error {
	l.mu.Lock()
	*l.recs = append(*l.recs, r.Clone())
	l.mu.Unlock()
	if l.next.Enabled(ctx, r.Level) {
		return l.next.Handle(ctx, r)
	}
	return nil
}
func (l logLines) WithAttrs(as []slog.Attr) slog.Handler {
	return logLines{l.next.WithAttrs(as), l.mu, l.recs}
}
func (l logLines) WithGroup(g string) slog.Handler {
	return logLines{l.next.WithGroup(g), l.mu, l.recs}
}

// TestQueueDeletedStopsRunner: when a deployment is deleted (its queue
// with it) while its runner runs a job, the runner finishes the job, then
// stops by itself, cleanly and with a line or two of log. It used to log
// "job batch ended with an error: nats: no responders" 1,331 to 5,175
// times a second until something stopped it. A real runner, model and
// NATS; the test plays the activator.
func TestQueueDeletedStopsRunner(t *testing.T) {
	ctx := context.Background()
	art, store := storedModel(t)
	nc, js, deployment := testQueue(t, "dep_gone")
	id := wire.NewID(4)

	replyTo := "_INFER.reply.test." + wire.NewID(6)
	events := make(chan wire.Event, 1024)
	sub, err := nc.Subscribe(replyTo+".>", func(m *nats.Msg) {
		if m.Header.Get(wire.PingHeader) != "" {
			m.Respond([]byte(wire.PingAlive))
			return
		}
		if e, err := wire.DecodeEvent(m.Data); err == nil {
			events <- e
		}
		if m.Reply != "" {
			m.Respond(nil)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	beats := make(chan wire.Heartbeat, 1024)
	hbSub, err := nc.Subscribe(wire.HeartbeatSubject(deployment, id), func(m *nats.Msg) {
		var hb wire.Heartbeat
		if json.Unmarshal(m.Data, &hb) == nil {
			beats <- hb
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer hbSub.Unsubscribe()

	var mu sync.Mutex
	var recs []slog.Record
	log := slog.New(logLines{slog.Default().Handler(), &mu, &recs})
	r, err := New(Config{ID: id, DeploymentID: deployment, Deployment: "gone", Artifact: art,
		Cache: &Cache{Dir: t.TempDir(), Blobs: store}, Engine: EngineConfig{Parallel: 2, Context: 256}}, nc, log)
	if err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- r.Run(runCtx, nil) }()

	zero := float32(0)
	job := wire.Job{ID: "cmpl-" + wire.NewID(6), Deployment: "gone", DeploymentID: deployment, Kind: wire.KindCompletion,
		Prompt: "Once upon a time", MaxTokens: 200, Sampling: wire.Sampling{Temperature: &zero}, ReplyTo: replyTo,
		Deadline: time.Now().Add(time.Minute)}
	data, _ := json.Marshal(job)
	if _, err := queue.Publish(ctx, js, deployment, job.ID, data); err != nil {
		t.Fatal(err)
	}
	next := func(what string) wire.Event {
		t.Helper()
		select {
		case ev := <-events:
			return ev
		case <-time.After(60 * time.Second):
			t.Fatalf("no %s", what)
			return wire.Event{}
		}
	}
	if ev := next("start event"); ev.Type != wire.EventStart {
		t.Fatalf("first event %+v, want start", ev)
	}

	// The deployment is deleted while the job runs.
	mu.Lock()
	before := len(recs)
	mu.Unlock()
	if err := queue.Delete(ctx, js, deployment); err != nil {
		t.Fatal(err)
	}
	for {
		ev := next("end of the running job")
		if ev.Type == wire.EventError {
			t.Fatalf("the running job failed: %+v", ev.Error)
		}
		if ev.Type == wire.EventDone {
			break
		}
	}
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run = %v, want a clean stop", err)
		}
	case <-time.After(10 * time.Second):
		t.Error("the runner of a deleted deployment still runs 10 s later")
		cancel()
		<-done
	}
	// Its last heartbeat says it stopped (not failed), so nothing starts
	// it again or reports the deployment broken.
	var last wire.Heartbeat
	for drained := false; !drained; {
		select {
		case hb := <-beats:
			last = hb
		case <-time.After(200 * time.Millisecond):
			drained = true
		}
	}
	if last.Phase != wire.PhaseStopped {
		t.Errorf("last heartbeat phase %q, want %q", last.Phase, wire.PhaseStopped)
	}

	mu.Lock()
	after := recs[before:]
	mu.Unlock()
	if len(after) > 20 {
		after = after[:20] // enough to show
	}
	warnings := 0
	for _, rec := range after {
		if rec.Level >= slog.LevelWarn {
			warnings++
		}
	}
	mu.Lock()
	n := len(recs) - before
	mu.Unlock()
	t.Logf("%d log lines after the queue was deleted", n)
	// The job's own lines (finished, usage) and one saying why it stops.
	if warnings > 0 || n > 5 {
		for _, rec := range after {
			t.Logf("  %s %s", rec.Level, rec.Message)
		}
		t.Errorf("%d log lines (warnings among the first 20: %d) after the queue was deleted; want a few and no warnings", n, warnings)
	}
}
