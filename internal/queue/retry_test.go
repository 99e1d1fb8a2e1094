package queue_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/infer-run/infer/internal/queue"
	"github.com/infer-run/infer/internal/testenv"
	"github.com/infer-run/infer/internal/wire"
)

// TestPublishRetryThroughOutage: a usage record published while NATS is
// down for longer than one publish attempt (5 s) is stored once NATS is
// back, once however many copies were sent; JetStream refusing a message
// is final at once.
func TestPublishRetryThroughOutage(t *testing.T) {
	ctx := context.Background()
	ns := testenv.StartRestartableNATS(t, server.Options{JetStream: true})
	nc, err := nats.Connect(fmt.Sprintf("nats://127.0.0.1:%d", ns.Port()), nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	s, err := queue.EnsureUsage(ctx, js, 1)
	if err != nil {
		t.Fatal(err)
	}
	subject := wire.UsageSubject("dep")

	ns.Stop()
	type result struct {
		ack *jetstream.PubAck
		err error
	}
	done := make(chan result, 1)
	go func() {
		ack, err := queue.PublishRetry(ctx, js, subject, "req-1", []byte(`{}`), time.Minute)
		done <- result{ack, err}
	}()
	time.Sleep(7 * time.Second)
	ns.Start()
	select {
	case r := <-done:
		if r.err != nil {
			t.Fatalf("publishing through a 7 s outage: %v", r.err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("PublishRetry still waiting 30 s after NATS came back")
	}
	// A record published again (its runner retrying) is the same one.
	ack, err := queue.PublishRetry(ctx, js, subject, "req-1", []byte(`{}`), time.Minute)
	if err != nil || !ack.Duplicate {
		t.Errorf("the same record again: %+v, %v; want a duplicate", ack, err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 1 {
		t.Errorf("usage stream holds %d records, want 1", info.State.Msgs)
	}

	// An API error is JetStream's answer, not an outage: no retries.
	began := time.Now()
	_, err = queue.PublishRetry(ctx, js, subject, "req-2", []byte(`{}`), time.Minute, jetstream.WithExpectLastSequence(999))
	var apiErr *jetstream.APIError
	if !errors.As(err, &apiErr) || time.Since(began) > 2*time.Second {
		t.Errorf("a refused publish: %v after %s; want an API error at once", err, time.Since(began))
	}
}
