package queue_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/infer-run/infer/internal/queue"
	"github.com/infer-run/infer/internal/testenv"
)

// embeddedJS starts a fresh embedded JetStream server and connects to it.
func embeddedJS(b *testing.B) (*server.Server, jetstream.JetStream) {
	ns := testenv.StartNATS(b, &server.Options{})
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		b.Fatal(err)
	}
	return ns, js
}

// BenchmarkEnsure is what creating one deployment's queue costs (the
// stream and its runner consumer), one after another as PUT
// /v1/deployments does.
func BenchmarkEnsure(b *testing.B) {
	_, js := embeddedJS(b)
	ctx := context.Background()
	l := queue.DeploymentLimits(100, 5*time.Minute, 1)
	b.ResetTimer()
	for i := range b.N {
		if _, err := queue.Ensure(ctx, js, fmt.Sprintf("dep_%d", i), l); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "queues/s")
}

func BenchmarkEnsureParts(b *testing.B) {
	_, js := embeddedJS(b)
	ctx := context.Background()
	var streamT, consT time.Duration
	for i := range b.N {
		t0 := time.Now()
		s, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{Name: fmt.Sprintf("S_%d", i), Subjects: []string{fmt.Sprintf("s.%d", i)}, Retention: jetstream.WorkQueuePolicy, Storage: jetstream.FileStorage, MaxMsgs: 100, Discard: jetstream.DiscardNew, MaxAge: 10 * time.Minute})
		if err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		if _, err := s.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{Durable: "r", AckPolicy: jetstream.AckExplicitPolicy}); err != nil {
			b.Fatal(err)
		}
		streamT += t1.Sub(t0)
		consT += time.Since(t1)
	}
	b.ReportMetric(float64(streamT.Microseconds())/float64(b.N), "stream-us")
	b.ReportMetric(float64(consT.Microseconds())/float64(b.N), "consumer-us")
}
