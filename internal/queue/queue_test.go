package queue_test

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/infer-run/infer/internal/queue"
	"github.com/infer-run/infer/internal/testenv"
	"github.com/infer-run/infer/internal/wire"
)

func TestPublishAndRemove(t *testing.T) {
	ctx := context.Background()
	_, js := testenv.JetStream(t)
	s, err := queue.Ensure(ctx, js, "dep", queue.Limits{MaxJobs: 2, MaxAge: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	seq1, err := queue.Publish(ctx, js, "dep", "job-1", []byte("one"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := queue.Publish(ctx, js, "dep", "job-2", []byte("two")); err != nil {
		t.Fatal(err)
	}
	if _, err := queue.Publish(ctx, js, "dep", "job-3", []byte("three")); err != queue.ErrFull {
		t.Fatalf("publishing past the limit: %v, want ErrFull", err)
	}
	// Removing makes room; removing again is fine.
	for _, seq := range []uint64{seq1, seq1} {
		if err := queue.Remove(ctx, js, "dep", seq); err != nil {
			t.Fatalf("Remove(%d): %v", seq, err)
		}
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 1 {
		t.Errorf("%d jobs queued after removing one of two", info.State.Msgs)
	}
	if _, err := queue.Publish(ctx, js, "dep", "job-3", []byte("three")); err != nil {
		t.Fatalf("publishing after a removal: %v", err)
	}
	if err := queue.Remove(ctx, js, "missing", 1); err == nil {
		t.Error("Remove from a deployment without a queue succeeded")
	}
}

func TestEnsureAsync(t *testing.T) {
	ctx := context.Background()
	_, js := testenv.JetStream(t)
	// Idempotent, and a second call may change the TTL.
	for _, ttl := range []time.Duration{time.Hour, 2 * time.Hour} {
		if _, _, err := queue.EnsureAsync(ctx, js, ttl, 1); err != nil {
			t.Fatal(err)
		}
	}
	_, kv, err := queue.EnsureAsync(ctx, js, 2*time.Hour, 1)
	if err != nil {
		t.Fatal(err)
	}
	st, err := kv.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.TTL() != 2*time.Hour {
		t.Errorf("bucket TTL %s, want 2h", st.TTL())
	}
}

// A runner that finds only the consumer missing recreates it without
// touching the stream: the deployment's limits stay.
func TestEnsureConsumerKeepsLimits(t *testing.T) {
	ctx := context.Background()
	_, js := testenv.JetStream(t)
	s, err := queue.Ensure(ctx, js, "dep", queue.DeploymentLimits(7, 3*time.Minute, 1))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteConsumer(ctx, wire.RequestConsumer); err != nil {
		t.Fatal(err)
	}
	c, err := queue.EnsureConsumer(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	if got := c.CachedInfo().Config.AckWait; got != queue.AckWait {
		t.Errorf("consumer ack wait %s, want %s", got, queue.AckWait)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.Config.MaxMsgs != 7 || info.Config.MaxAge != 6*time.Minute {
		t.Errorf("stream limits after recreating the consumer: %d jobs, %s; want 7, 6m", info.Config.MaxMsgs, info.Config.MaxAge)
	}
}

// Create makes a missing stream and leaves an existing one as it is.
func TestCreateLeavesExistingStream(t *testing.T) {
	ctx := context.Background()
	_, js := testenv.JetStream(t)
	if _, err := queue.Ensure(ctx, js, "dep", queue.DeploymentLimits(7, 3*time.Minute, 1)); err != nil {
		t.Fatal(err)
	}
	s, err := queue.Create(ctx, js, "dep", 1)
	if err != nil {
		t.Fatal(err)
	}
	if cfg := s.CachedInfo().Config; cfg.MaxMsgs != 7 || cfg.MaxAge != 6*time.Minute {
		t.Errorf("existing stream after Create: %d jobs, %s; want 7, 6m", cfg.MaxMsgs, cfg.MaxAge)
	}
	s, err = queue.Create(ctx, js, "fresh", 1)
	if err != nil {
		t.Fatal(err)
	}
	if cfg := s.CachedInfo().Config; cfg.MaxMsgs != 1000 || cfg.Subjects[0] != wire.RequestSubject("fresh") {
		t.Errorf("new stream: %+v", cfg)
	}
}

// List finds the deployments' request streams, and no other stream.
func TestList(t *testing.T) {
	ctx := context.Background()
	_, js := testenv.JetStream(t)
	before := time.Now().Add(-time.Second)
	for _, key := range []string{"dep_one", "dep_two"} {
		if _, err := queue.Ensure(ctx, js, key, queue.Limits{}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := queue.EnsureUsage(ctx, js, 1); err != nil {
		t.Fatal(err)
	}
	got, err := queue.List(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, q := range got {
		keys = append(keys, q.Deployment)
		if q.Created.Before(before) {
			t.Errorf("%s created %v, before the test", q.Deployment, q.Created)
		}
	}
	slices.Sort(keys)
	if !slices.Equal(keys, []string{"dep_one", "dep_two"}) {
		t.Errorf("List = %v, want dep_one, dep_two", keys)
	}
}

// A single server refuses replicated queues, and the error says why, so an
// operator who set --queue-replicas 3 against one server learns it at start.
func TestReplicasOnSingleServer(t *testing.T) {
	ctx := context.Background()
	_, js := testenv.JetStream(t)
	_, err := queue.EnsureUsage(ctx, js, 3)
	if err == nil || !strings.Contains(err.Error(), "replicas") {
		t.Fatalf("EnsureUsage with 3 replicas on one server: %v; want an error naming replicas", err)
	}
	s, err := queue.EnsureUsage(ctx, js, 0)
	if err != nil {
		t.Fatal(err)
	}
	if r := s.CachedInfo().Config.Replicas; r != 1 {
		t.Errorf("replicas 0 made %d copies; want 1", r)
	}
}

// Update changes an existing queue's limits and leaves a deployment
// without a queue (no work yet) without one.
func TestUpdate(t *testing.T) {
	ctx := context.Background()
	_, js := testenv.JetStream(t)
	if err := queue.Update(ctx, js, "idle", queue.DeploymentLimits(5, time.Minute, 1)); err != nil {
		t.Fatalf("Update of a deployment without a queue: %v", err)
	}
	if _, err := js.Stream(ctx, wire.RequestStream("idle")); err == nil {
		t.Error("Update created a queue")
	}
	if _, err := queue.Ensure(ctx, js, "busy", queue.DeploymentLimits(7, 3*time.Minute, 1)); err != nil {
		t.Fatal(err)
	}
	if err := queue.Update(ctx, js, "busy", queue.DeploymentLimits(9, time.Minute, 1)); err != nil {
		t.Fatal(err)
	}
	s, err := js.Stream(ctx, wire.RequestStream("busy"))
	if err != nil {
		t.Fatal(err)
	}
	if cfg := s.CachedInfo().Config; cfg.MaxMsgs != 9 || cfg.MaxAge != 2*time.Minute {
		t.Errorf("after Update: %d jobs, %s; want 9, 2m", cfg.MaxMsgs, cfg.MaxAge)
	}
}
