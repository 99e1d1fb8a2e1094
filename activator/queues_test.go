package activator

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/infer-run/infer/internal/queue"
	"github.com/infer-run/infer/internal/testenv"
	"github.com/infer-run/infer/internal/wire"
)

// TestQueueIndex checks that the index of request streams says "none" only
// for deployments without one: a stream that exists at the listing, one
// created after it (seen through the advisory) and one deleted after it,
// against real JetStream; and that it lists again once its listing is
// older than queueIndexTTL (a fake clock), finding a stream whose
// advisory it never heard.
func TestQueueIndex(t *testing.T) {
	nc, err := nats.Connect(testenv.NATS(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	ids := []string{wire.NewID(8), wire.NewID(8), wire.NewID(8), wire.NewID(8)}
	t.Cleanup(func() {
		for _, id := range ids {
			queue.Delete(ctx, js, id)
		}
	})
	ensure := func(id string) {
		t.Helper()
		if _, err := queue.Ensure(ctx, js, id, queue.DeploymentLimits(10, time.Minute, 1)); err != nil {
			t.Fatal(err)
		}
	}
	ensure(ids[0])
	ensure(ids[2])
	q, err := newQueueIndex(nc, js)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(q.close)
	now := time.Now()
	q.now = func() time.Time { return now }
	if !q.mayHave(ctx, ids[0]) || q.mayHave(ctx, ids[1]) {
		t.Fatalf("after listing: %v %v, want true false", q.mayHave(ctx, ids[0]), q.mayHave(ctx, ids[1]))
	}
	ensure(ids[1])
	queue.Delete(ctx, js, ids[2])
	wait := func(what string, ok func() bool) {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); !ok(); time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within 5 s", what)
			}
		}
	}
	wait("created stream seen", func() bool { return q.mayHave(ctx, ids[1]) })
	wait("deleted stream seen", func() bool { return !q.mayHave(ctx, ids[2]) })

	// An advisory this index never heard: found at the next listing.
	q.close()
	ensure(ids[3])
	if q.mayHave(ctx, ids[3]) {
		t.Fatal("a stream created unheard was known before the listing went stale")
	}
	now = now.Add(queueIndexTTL)
	if !q.mayHave(ctx, ids[3]) {
		t.Error("a stream created unheard was not found by the next listing")
	}
}
