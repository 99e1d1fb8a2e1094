package runner

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/infer-run/infer/internal/blob"
	"github.com/infer-run/infer/internal/queue"
	"github.com/infer-run/infer/internal/testenv"
	"github.com/infer-run/infer/internal/wire"
)

func TestLogRingDropsOldest(t *testing.T) {
	q := newLogRing(4)
	for i := range 10 {
		q.push(fmt.Appendf(nil, "%d", i))
	}
	lines, dropped := q.take(nil)
	var got []string
	for _, l := range lines {
		got = append(got, string(l))
	}
	if !slices.Equal(got, []string{"6", "7", "8", "9"}) || dropped != 6 {
		t.Fatalf("took %q, %d dropped; want the 4 newest and 6 dropped", got, dropped)
	}
	if lines, dropped := q.take(nil); len(lines) != 0 || dropped != 0 {
		t.Fatalf("second take: %d lines, %d dropped; want none", len(lines), dropped)
	}
	q.push([]byte("after"))
	if lines, _ := q.take(nil); len(lines) != 1 || string(lines[0]) != "after" {
		t.Fatalf("after emptying: %q", lines)
	}
}

// TestLogFloodNeverBlocks: with NATS stalled (the publisher stuck in a
// publish), a flood of log lines from many goroutines (as the decode
// loop and job handlers log) returns at once; the oldest lines are
// dropped, counted, and reported once NATS moves again.
func TestLogFloodNeverBlocks(t *testing.T) {
	q := newLogRing(logQueueLines)
	stall := make(chan struct{})
	var published []wire.LogLine // only the publisher's goroutine appends
	p := &logPublisher{q: q, subject: "s",
		ensure: func(context.Context) error { return nil },
		flush:  func(time.Duration) error { return nil },
		publish: func(_ string, data []byte) error {
			<-stall
			var l wire.LogLine
			if err := json.Unmarshal(data, &l); err != nil {
				t.Errorf("published line %q: %v", data, err)
			}
			published = append(published, l)
			return nil
		}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { p.run(ctx); close(done) }()
	log := slog.New(&teeHandler{inner: slog.NewTextHandler(io.Discard, nil), q: q})

	const writers, each = 8, 20000
	finished := make(chan struct{})
	var logged atomic.Int64
	go func() {
		defer close(finished)
		errs := make(chan struct{}, writers)
		for w := range writers {
			go func() {
				for i := range each {
					log.Info("flood", "writer", w, "i", i)
					logged.Add(1)
				}
				errs <- struct{}{}
			}()
		}
		for range writers {
			<-errs
		}
	}()
	select {
	case <-finished:
	case <-time.After(60 * time.Second):
		t.Fatalf("logging blocked with NATS stalled: %d of %d lines logged", logged.Load(), writers*each)
	}
	// The publisher holds at most one batch; the queue the newest lines.
	close(stall)
	cancel()
	<-done
	var warned uint64
	flood := 0
	for _, l := range published {
		if n, ok := strings.CutSuffix(l.Msg, " log lines dropped: the runner logged faster than NATS took them"); ok {
			var d uint64
			fmt.Sscan(n, &d)
			warned += d
		} else {
			flood++
		}
	}
	if uint64(flood)+warned != writers*each || warned != p.dropped || warned == 0 {
		t.Errorf("%d lines published, %d reported dropped (%d counted); want %d in all, some dropped", flood, warned, p.dropped, writers*each)
	}
	if flood > 2*logQueueLines {
		t.Errorf("%d lines published; the queue holds %d", flood, logQueueLines)
	}
}

func TestTeeHandlerRendersAndRedacts(t *testing.T) {
	q := newLogRing(16)
	var stderr strings.Builder
	log := slog.New(&teeHandler{inner: slog.NewTextHandler(&stderr, nil), q: q})
	log = log.With("runner", "r1", "deployment", "d", "deployment_id", "dep_x", "request", "req-1")
	log.WithGroup("kv").Warn("grown", "cells", 512, "prompt", "tell me a secret", "api_key", "sk-infer-abc",
		slog.Group("g", "a", 1))
	log.Info(strings.Repeat("é", 10000))
	lines, _ := q.take(nil)
	if len(lines) != 2 {
		t.Fatalf("%d lines queued, want 2", len(lines))
	}
	var l wire.LogLine
	if err := json.Unmarshal(lines[0], &l); err != nil {
		t.Fatal(err)
	}
	want := []wire.LogAttr{{Key: "request", Value: "req-1"}, {Key: "kv.cells", Value: "512"},
		{Key: "kv.prompt", Value: "[redacted]"}, {Key: "kv.api_key", Value: "[redacted]"}, {Key: "kv.g.a", Value: "1"}}
	if l.Msg != "grown" || l.Level != "WARN" || !slices.Equal(l.Attrs, want) || l.Time.IsZero() {
		t.Errorf("line %+v; want msg grown, WARN, attrs %v", l, want)
	}
	if strings.Contains(string(lines[0]), "tell me") || strings.Contains(string(lines[0]), "sk-infer") {
		t.Errorf("a secret reached the published line: %s", lines[0])
	}
	// stderr still gets everything, as before.
	if !strings.Contains(stderr.String(), "runner=r1") || !strings.Contains(stderr.String(), "kv.cells=512") {
		t.Errorf("stderr: %s", stderr.String())
	}
	if len(lines[1]) > queue.LogMaxLine {
		t.Errorf("a long line is %d bytes published; want at most %d", len(lines[1]), queue.LogMaxLine)
	}
	if err := json.Unmarshal(lines[1], &l); err != nil || !strings.HasSuffix(l.Msg, "é…") {
		t.Errorf("long line: %v, msg ends %q", err, l.Msg[max(0, len(l.Msg)-10):])
	}
}

// TestRunnerPublishesItsLog: a real runner's start, ready and stop lines
// reach the log stream on its own subject, in order.
func TestRunnerPublishesItsLog(t *testing.T) {
	art, dir := storedModel(t)
	nc, err := nats.Connect(testenv.NATS(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	deployment, id := "logs-"+wire.NewID(4), wire.NewID(4)
	cache := &Cache{Dir: t.TempDir(), Blobs: dir}
	r, err := New(Config{ID: id, DeploymentID: deployment, Deployment: deployment, Artifact: art, Cache: cache, Engine: EngineConfig{Parallel: 1, Context: 256}},
		// At info, unlike TestMain's default: what is published is what
		// the runner's own log level lets through.
		nc, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	drain := make(chan struct{})
	done := make(chan error, 1)
	go func() { done <- r.Run(context.Background(), drain) }()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	read := func() []wire.LogLine {
		s, err := js.Stream(context.Background(), wire.LogStream)
		if err != nil {
			return nil
		}
		c, err := s.OrderedConsumer(context.Background(), jetstream.OrderedConsumerConfig{FilterSubjects: []string{wire.LogFilter(deployment, "")}})
		if err != nil {
			t.Fatal(err)
		}
		var out []wire.LogLine
		for {
			b, err := c.FetchNoWait(100)
			if err != nil {
				t.Fatal(err)
			}
			n := 0
			for m := range b.Messages() {
				n++
				var l wire.LogLine
				if err := json.Unmarshal(m.Data(), &l); err != nil {
					t.Fatalf("line %q: %v", m.Data(), err)
				}
				if m.Subject() != wire.LogSubject(deployment, id) {
					t.Errorf("line on %s", m.Subject())
				}
				out = append(out, l)
			}
			if n == 0 {
				return out
			}
		}
	}
	msgs := func(ls []wire.LogLine) []string {
		var out []string
		for _, l := range ls {
			out = append(out, l.Msg)
		}
		return out
	}
	deadline := time.Now().Add(60 * time.Second)
	for !slices.Contains(msgs(read()), "model ready") {
		if time.Now().After(deadline) {
			s, err := js.Stream(context.Background(), wire.LogStream)
			if err == nil {
				info, _ := s.Info(context.Background())
				t.Logf("stream state %+v", info.State)
			}
			t.Fatalf("no \"model ready\" line within 60 s; got %q (%v)", msgs(read()), err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	close(drain)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// Run returns after its last lines are published.
	got := msgs(read())
	start, ready, stopped := slices.Index(got, "runner starting"), slices.Index(got, "model ready"), slices.Index(got, "runner stopped")
	if start < 0 || ready < start || stopped < ready {
		t.Errorf("lines %q; want runner starting, model ready, runner stopped in order", got)
	}
	for _, l := range read() {
		for _, a := range l.Attrs {
			if a.Key == "runner" || a.Key == "deployment_id" {
				t.Errorf("line %q repeats %s, which the subject says", l.Msg, a.Key)
			}
		}
	}
}

// TestLlamaLogSink: llama.cpp's warnings and errors are published one line
// per message, pieces and continuations joined; its info chatter goes to
// stderr only.
func TestLlamaLogSink(t *testing.T) {
	q := newLogRing(16)
	var stderr strings.Builder
	s := &llamaLogSink{stderr: &stderr, enabled: func(slog.Level) bool { return true }, q: q}
	s.write(ggmlInfo, "print_info: arch = llama\n")
	s.write(ggmlError, "llama_model_load: error loading model: ")
	s.write(ggmlCont, "tensor data is not within the file bounds\n")
	s.write(ggmlWarn, "first\nsecond\n")
	s.write(ggmlInfo, ".")
	s.write(ggmlCont, ".")
	s.write(ggmlWarn, "no newline")
	s.write(ggmlInfo, "next\n")
	lines, _ := q.take(nil)
	var got []string
	for _, b := range lines {
		var l wire.LogLine
		if err := json.Unmarshal(b, &l); err != nil {
			t.Fatal(err)
		}
		if len(l.Attrs) != 1 || l.Attrs[0] != (wire.LogAttr{Key: "source", Value: "llama.cpp"}) {
			t.Errorf("line %q attrs %v", l.Msg, l.Attrs)
		}
		got = append(got, l.Level+" "+l.Msg)
	}
	want := []string{"ERROR llama_model_load: error loading model: tensor data is not within the file bounds", "WARN first", "WARN second", "WARN no newline"}
	if !slices.Equal(got, want) {
		t.Errorf("published %q, want %q", got, want)
	}
	if !strings.HasPrefix(stderr.String(), "print_info: arch = llama\nllama_model_load") || !strings.HasSuffix(stderr.String(), "..no newlinenext\n") {
		t.Errorf("stderr %q: want everything as it came", stderr.String())
	}
}

// TestRunnerPublishesLlamaErrors: weights llama.cpp refuses make the
// runner fail, and its log, as published, says why in llama.cpp's words.
func TestRunnerPublishesLlamaErrors(t *testing.T) {
	model, err := os.ReadFile(testenv.ModelPath(t))
	if err != nil {
		t.Fatal(err)
	}
	cut := model[:len(model)*3/4] // the header whole, tensor data missing
	sum := sha256.Sum256(cut)
	dir, err := blob.NewDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if err := dir.Put(context.Background(), "uploads/cut.gguf", bytes.NewReader(cut), int64(len(cut))); err != nil {
		t.Fatal(err)
	}
	art := Artifact{SHA256: hex.EncodeToString(sum[:]), ObjectKey: "uploads/cut.gguf", Size: int64(len(cut))}
	nc, err := nats.Connect(testenv.NATS(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	deployment, id := "cut-"+wire.NewID(4), wire.NewID(4)
	r, err := New(Config{ID: id, DeploymentID: deployment, Deployment: deployment, Artifact: art,
		Cache: &Cache{Dir: t.TempDir(), Blobs: dir}, Engine: EngineConfig{Parallel: 1, Context: 256}},
		nc, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Run(context.Background(), nil); err == nil {
		t.Fatal("a runner of truncated weights started")
	}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	s, err := js.Stream(context.Background(), wire.LogStream)
	if err != nil {
		t.Fatal(err)
	}
	c, err := s.OrderedConsumer(context.Background(), jetstream.OrderedConsumerConfig{FilterSubjects: []string{wire.LogFilter(deployment, "")}})
	if err != nil {
		t.Fatal(err)
	}
	b, err := c.FetchNoWait(1000)
	if err != nil {
		t.Fatal(err)
	}
	var llama, failed []string
	for m := range b.Messages() {
		var l wire.LogLine
		json.Unmarshal(m.Data(), &l)
		if len(l.Attrs) > 0 && l.Attrs[len(l.Attrs)-1].Value == "llama.cpp" {
			llama = append(llama, l.Level+" "+l.Msg)
		}
		if l.Msg == "runner failed" || l.Msg == "llama.cpp could not load the model" {
			failed = append(failed, l.Msg)
		}
	}
	t.Logf("llama.cpp lines published: %q", llama)
	if len(failed) != 2 || !slices.ContainsFunc(llama, func(l string) bool { return strings.HasPrefix(l, "ERROR ") }) {
		t.Errorf("published: runner lines %q, llama.cpp lines %q; want the failure and llama.cpp's error", failed, llama)
	}
}

// BenchmarkLogLine is the cost of one log line (three attributes) with
// and without publishing to NATS (rendering it and queueing it; the
// queue's reader is not running, so it drops the oldest line each time).
func BenchmarkLogLine(b *testing.B) {
	for _, tee := range []bool{false, true} {
		name := "stderr"
		if tee {
			name = "stderr+nats"
		}
		b.Run(name, func(b *testing.B) {
			var h slog.Handler = slog.NewTextHandler(io.Discard, nil)
			if tee {
				h = &teeHandler{inner: h, q: newLogRing(logQueueLines)}
			}
			log := slog.New(h).With("runner", "r1", "request", "req-1")
			b.ReportAllocs()
			for b.Loop() {
				log.Info("KV cache grown", "from", 512, "to", 1024, "took", 3*time.Millisecond)
			}
		})
	}
}
