package controlplane

import (
	"context"
	"encoding/json"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/infer-run/infer/internal/queue"
	"github.com/infer-run/infer/internal/testenv"
	"github.com/infer-run/infer/internal/wire"
	"github.com/infer-run/infer/registry"
)

// swapRegistry serves deployments the test changes.
type swapRegistry struct {
	mu   sync.Mutex
	deps []registry.Deployment
}

func (r *swapRegistry) set(deps ...registry.Deployment) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.deps = deps
}

func (r *swapRegistry) ListDeployments(context.Context, string) ([]registry.Deployment, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]registry.Deployment(nil), r.deps...), nil
}

func (r *swapRegistry) GetArtifact(_ context.Context, sha string) (registry.Artifact, error) {
	return registry.Artifact{SHA256: sha, ObjectKey: "blobs/" + sha, Size: 1}, nil
}

// TestRecycledNameRunnerSeconds: tenant A's deployment "foo" has a runner;
// A deletes foo and tenant B deploys its own "foo". The control plane
// stops A's runner (and only A's), starts one for B's, and bills A's
// runner's lifetime to A's deployment, tenant and price. Keyed by name, it
// was priced and billed as B's.
func TestRecycledNameRunnerSeconds(t *testing.T) {
	nc, js := testenv.JetStream(t)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	if _, err := queue.EnsureUsage(ctx, js, 1); err != nil {
		t.Fatal(err)
	}
	records := make(chan *nats.Msg, 16)
	sub, err := nc.ChanSubscribe(wire.RunnerUsageSubject("*"), records)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()

	fooA := registry.Deployment{ID: "dep_fooa", TenantID: "tnt_a", Name: "foo", ArtifactSHA256: "aaaa",
		MinRunners: 1, MaxRunners: 1, Parallel: 1, IdleTimeout: time.Hour, Prices: registry.Prices{RunnerSecond: 1}}
	fooB := registry.Deployment{ID: "dep_foob", TenantID: "tnt_b", Name: "foo", ArtifactSHA256: "bbbb",
		MinRunners: 1, MaxRunners: 1, Parallel: 1, IdleTimeout: time.Hour, Prices: registry.Prices{RunnerSecond: 2}}
	reg := &swapRegistry{}
	reg.set(fooA)
	c := &cluster{runners: map[string]RunnerRef{}, starts: map[string]int{}}
	cp, err := New(Config{Registry: reg, Driver: clusterView{c, "cp"}, NATS: nc, Logger: slog.Default(), Tick: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cp.Run(ctx) }()
	defer func() { cancel(); <-done }()

	runnerOf := func(depID string, stopping bool) (RunnerRef, bool) {
		c.mu.Lock()
		defer c.mu.Unlock()
		for _, r := range c.runners {
			if r.DeploymentID == depID && r.Stopping == stopping {
				return r, true
			}
		}
		return RunnerRef{}, false
	}
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("no %s within 10 s", what)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	var runnerA RunnerRef
	waitFor("runner for A's foo", func() (ok bool) { runnerA, ok = runnerOf(fooA.ID, false); return ok })
	started := time.Now().Add(-10 * time.Second)
	beat := func(phase wire.Phase) {
		hb, _ := json.Marshal(wire.Heartbeat{RunnerID: runnerA.ID, Deployment: "foo", DeploymentID: fooA.ID, Artifact: "aaaa",
			Phase: phase, Slots: 1, StartedAt: started, Sent: time.Now()})
		if err := nc.Publish(wire.HeartbeatSubject(fooA.ID, runnerA.ID), hb); err != nil {
			t.Fatal(err)
		}
	}
	beat(wire.PhaseReady)

	reg.set(fooB)
	waitFor("A's runner stopped", func() bool { _, ok := runnerOf(fooA.ID, true); return ok })
	waitFor("runner for B's foo", func() bool { _, ok := runnerOf(fooB.ID, false); return ok })
	if _, ok := runnerOf(fooB.ID, true); ok {
		t.Error("a runner of B's foo was stopped")
	}
	// A's runner drains and says so.
	beat(wire.PhaseStopped)
	select {
	case m := <-records:
		var rec wire.RunnerUsageRecord
		if err := json.Unmarshal(m.Data, &rec); err != nil {
			t.Fatal(err)
		}
		if m.Subject != wire.RunnerUsageSubject(fooA.ID) || rec.RunnerID != runnerA.ID || rec.DeploymentID != fooA.ID ||
			rec.TenantID != fooA.TenantID || rec.PricePerSecond != 1 {
			t.Errorf("A's runner's lifetime published on %s as %+v; want deployment %s, tenant %s, price 1",
				m.Subject, rec, fooA.ID, fooA.TenantID)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no runner usage record for A's runner")
	}
}
