package queue_test

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"syscall"
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

// idleCost measures what the embedded server (in this process) holds and
// burns once layout has set up n deployments' queues: heap in use after
// a GC, and CPU over idle seconds of nothing happening.
func idleCost(b *testing.B, n int, layout func(ctx context.Context, js jetstream.JetStream, i int) error) {
	_, js := embeddedJS(b)
	ctx := context.Background()
	heap := func() uint64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapInuse
	}
	before := heap()
	start := time.Now()
	for i := range n {
		if err := layout(ctx, js, i); err != nil {
			b.Fatal(err)
		}
	}
	created := time.Since(start)
	time.Sleep(2 * time.Second) // let creation settle
	after := heap()
	const idle = 10 * time.Second
	cpu0 := processCPU(b)
	time.Sleep(idle)
	cpu := processCPU(b) - cpu0
	b.ReportMetric(float64(created.Microseconds())/float64(n), "create-us/deployment")
	b.ReportMetric(float64(int64(after)-int64(before))/float64(n), "heap-B/deployment")
	b.ReportMetric(100*cpu.Seconds()/idle.Seconds(), "idle-%core")
}

// processCPU is this process's user and system CPU time so far.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkQueueLayout compares what n idle deployments cost NATS in the
// two layouts the scale issue weighs (results in docs/architecture.md):
// a stream and consumer per deployment (today's), and one work-queue
// stream with a subject per deployment, whose consumers exist only for
// deployments that have had work (none here: they are idle) and, as the
// worst case, for every one. Run it with -benchtime 1x;
// INFER_BENCH_LAYOUT_10K=1 adds 10,000 deployments.
func BenchmarkQueueLayout(b *testing.B) {
	l := queue.DeploymentLimits(100, 5*time.Minute, 1)
	sizes := []int{1000}
	if os.Getenv("INFER_BENCH_LAYOUT_10K") != "" { // ~3 more minutes
		sizes = append(sizes, 10000)
	}
	for _, n := range sizes {
		b.Run(fmt.Sprintf("stream-per-deployment/%d", n), func(b *testing.B) {
			idleCost(b, n, func(ctx context.Context, js jetstream.JetStream, i int) error {
				_, err := queue.Ensure(ctx, js, fmt.Sprintf("dep_%d", i), l)
				return err
			})
		})
		var shared jetstream.Stream
		one := func(ctx context.Context, js jetstream.JetStream) (jetstream.Stream, error) {
			if shared != nil {
				return shared, nil
			}
			s, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
				Name: "REQUESTS", Subjects: []string{"requests.>"},
				Retention: jetstream.WorkQueuePolicy, Storage: jetstream.FileStorage,
				MaxAge: time.Hour, Discard: jetstream.DiscardNew,
			})
			shared = s
			return s, err
		}
		b.Run(fmt.Sprintf("one-stream-idle/%d", n), func(b *testing.B) {
			shared = nil
			idleCost(b, n, func(ctx context.Context, js jetstream.JetStream, i int) error {
				_, err := one(ctx, js) // a deployment without work has nothing in NATS
				return err
			})
		})
		b.Run(fmt.Sprintf("one-stream-consumer-each/%d", n), func(b *testing.B) {
			shared = nil
			idleCost(b, n, func(ctx context.Context, js jetstream.JetStream, i int) error {
				s, err := one(ctx, js)
				if err != nil {
					return err
				}
				_, err = s.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{
					Durable: fmt.Sprintf("dep_%d", i), FilterSubject: fmt.Sprintf("requests.dep_%d", i),
					AckPolicy: jetstream.AckExplicitPolicy, AckWait: queue.AckWait, MaxDeliver: 5, MaxAckPending: -1,
				})
				return err
			})
		})
	}
}
