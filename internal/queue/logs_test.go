package queue_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/infer-run/infer/internal/queue"
	"github.com/infer-run/infer/internal/testenv"
	"github.com/infer-run/infer/internal/wire"
)

// TestLogStreamLimits checks that the runner log stream has its limits
// and that a runner flooding its log loses its own oldest lines, not
// another runner's, and that publishing past the limit is never refused.
func TestLogStreamLimits(t *testing.T) {
	ctx := context.Background()
	nc, js := testenv.JetStream(t)
	// Idempotent.
	for range 2 {
		if _, err := queue.EnsureLogs(ctx, js, 1); err != nil {
			t.Fatal(err)
		}
	}
	s, err := js.Stream(ctx, wire.LogStream)
	if err != nil {
		t.Fatal(err)
	}
	cfg := s.CachedInfo().Config
	if cfg.MaxAge != queue.LogMaxAge || cfg.MaxMsgsPerSubject != queue.LogMaxPerRunner || cfg.MaxBytes != queue.LogMaxBytes ||
		cfg.Discard != jetstream.DiscardOld || cfg.Retention != jetstream.LimitsPolicy {
		t.Fatalf("log stream config: age %s, per subject %d, bytes %d, discard %s, retention %s",
			cfg.MaxAge, cfg.MaxMsgsPerSubject, cfg.MaxBytes, cfg.Discard, cfg.Retention)
	}

	quiet := wire.LogSubject("dep_a", "quiet")
	loud := wire.LogSubject("dep_a", "loud")
	if err := nc.Publish(quiet, []byte("the quiet runner's only line")); err != nil {
		t.Fatal(err)
	}
	const extra = 25
	for i := range queue.LogMaxPerRunner + extra {
		if err := nc.Publish(loud, fmt.Appendf(nil, "line %d", i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	// JetStream stores what core NATS delivered after Flush returns:
	// wait for the last line.
	want := fmt.Sprintf("line %d", queue.LogMaxPerRunner+extra-1)
	deadline := time.Now().Add(10 * time.Second)
	for {
		m, err := s.GetLastMsgForSubject(ctx, loud)
		if err == nil && string(m.Data) == want {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the last line was not stored: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	info, err := s.Info(ctx, jetstream.WithSubjectFilter(wire.LogFilter("dep_a", "")))
	if err != nil {
		t.Fatal(err)
	}
	if got := info.State.Subjects[loud]; got != queue.LogMaxPerRunner {
		t.Errorf("the loud runner has %d lines stored, want %d", got, queue.LogMaxPerRunner)
	}
	if got := info.State.Subjects[quiet]; got != 1 {
		t.Errorf("the quiet runner has %d lines stored, want 1", got)
	}
	first, err := s.GetMsg(ctx, info.State.FirstSeq)
	if err != nil {
		t.Fatal(err)
	}
	if string(first.Data) != "the quiet runner's only line" {
		t.Errorf("oldest stored line %q: want the quiet runner's", first.Data)
	}
	// The loud runner's oldest stored line is the first one not dropped.
	last, err := s.GetLastMsgForSubject(ctx, loud)
	if err != nil {
		t.Fatal(err)
	}
	oldest, err := s.GetMsg(ctx, last.Sequence-queue.LogMaxPerRunner+1)
	if err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf("line %d", extra); string(oldest.Data) != want {
		t.Errorf("the loud runner's oldest stored line is %q, want %q", oldest.Data, want)
	}
}
