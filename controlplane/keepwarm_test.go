package controlplane

import (
	"context"
	"encoding/json"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/infer-run/infer/internal/queue"
	"github.com/infer-run/infer/internal/testenv"
	"github.com/infer-run/infer/internal/wire"
	"github.com/infer-run/infer/registry"
)

// fakeClock is a clock the test moves.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// waitQueued waits until the consumer counts n jobs waiting: JetStream
// updates the count a moment after the publish is acknowledged.
func waitQueued(t *testing.T, js jetstream.JetStream, id string, n int) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if d, err := queue.GetDepth(t.Context(), js, id); err == nil && d.Queued == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the queue of %s never showed %d jobs waiting", id, n)
		}
	}
}

// TestKeepWarm runs the control plane's executor (ticks, heartbeats,
// wakes, a real JetStream queue) on a made-up clock: a request arrives at
// a deployment at zero, a runner starts and serves it, and then
//   - with keep_warm 0, the runner is stopped once idle_timeout has
//     passed, as before keep_warm existed;
//   - with keep_warm 2m, it is still there after idle_timeout, is stopped
//     once keep_warm has passed since the request, and the control plane
//     was woken for that by its plan's NextWake, not by a heartbeat.
func TestKeepWarm(t *testing.T) {
	nc, js := testenv.JetStream(t)
	for _, tt := range []struct {
		name     string
		keepWarm time.Duration
		// stopAfter is how long after the request the runner is stopped.
		stopAfter time.Duration
	}{
		{"off: idle_timeout alone", 0, 10 * time.Second},
		{"2m", 2 * time.Minute, 2 * time.Minute},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ctx := t.Context()
			id := "dep_kw" + wire.NewID(4)
			d := registry.Deployment{ID: id, Name: "kw", ArtifactSHA256: "aaaa", MaxRunners: 2, Parallel: 4,
				IdleTimeout: 10 * time.Second, KeepWarm: tt.keepWarm, QueueLimit: 10, QueueTimeout: time.Minute}
			if _, err := queue.Ensure(ctx, js, id, queue.DeploymentLimits(d.QueueLimit, d.QueueTimeout, 1)); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { queue.Delete(context.Background(), js, id) })
			clock := &fakeClock{now: time.Now()}
			c := &cluster{runners: map[string]RunnerRef{}, starts: map[string]int{}}
			cp, err := New(Config{
				Registry: staticRegistry{[]registry.Deployment{d}}, Driver: clusterView{c, "cp"}, NATS: nc,
				Logger: slog.Default(), Now: clock.Now,
				// Silence is not what this test is about, and no sweep
				// comes by in its three minutes: the wakes must.
				DeadAfter: time.Hour, StartTimeout: time.Hour, SweepEvery: time.Hour,
			})
			if err != nil {
				t.Fatal(err)
			}
			runner := func() (RunnerRef, bool) {
				c.mu.Lock()
				defer c.mu.Unlock()
				for _, r := range c.runners {
					return r, true
				}
				return RunnerRef{}, false
			}
			beat := func(r RunnerRef, inFlight int, last time.Time) {
				hb, _ := json.Marshal(wire.Heartbeat{RunnerID: r.ID, DeploymentID: id, Deployment: "kw", Artifact: "aaaa",
					Phase: wire.PhaseReady, Slots: 4, InFlight: inFlight, LastRequest: last, StartedAt: r.StartedAt, Sent: clock.Now()})
				cp.onHeartbeat(&nats.Msg{Data: hb})
			}

			// A request is queued: the first tick starts a runner.
			seq, err := queue.Publish(ctx, js, id, "job1", []byte("{}"))
			if err != nil {
				t.Fatal(err)
			}
			waitQueued(t, js, id, 1)
			cp.step(ctx)
			r, ok := runner()
			if !ok {
				t.Fatal("no runner started for the queued request")
			}
			// It serves the request and is done with it.
			beat(r, 1, time.Time{})
			if err := queue.Remove(ctx, js, id, seq); err != nil {
				t.Fatal(err)
			}
			served := clock.Now()
			beat(r, 0, served)
			cp.step(ctx)

			// Tick through the next three minutes, the runner beating
			// every 5 s (heartbeats that change nothing are not events:
			// only the plan's wakes and the sweep bring it back).
			var stoppedAt time.Duration
			for elapsed := time.Duration(0); elapsed < 3*time.Minute && stoppedAt == 0; {
				clock.Add(time.Second)
				elapsed += time.Second
				if elapsed%(5*time.Second) == 0 {
					beat(r, 0, served)
				}
				cp.step(ctx)
				if cur, _ := runner(); cur.Stopping {
					stoppedAt = elapsed
				}
			}
			if stoppedAt == 0 {
				t.Fatalf("the runner was never stopped (keep_warm %s)", tt.keepWarm)
			}
			// Stopped at the first tick past the deadline.
			if stoppedAt < tt.stopAfter || stoppedAt > tt.stopAfter+time.Second {
				t.Errorf("runner stopped %s after its last request, want %s (keep_warm %s, idle_timeout 10s)", stoppedAt, tt.stopAfter, tt.keepWarm)
			}
		})
	}
}

// TestSweepFindsLostPoke: work queued at a deployment at rest without a
// poke (a lost one) is found by the sweep: after RestSweepEvery, not at
// every tick, since at rest a deployment costs nothing between sweeps.
func TestSweepFindsLostPoke(t *testing.T) {
	nc, js := testenv.JetStream(t)
	ctx := t.Context()
	id := "dep_lost" + wire.NewID(4)
	d := registry.Deployment{ID: id, Name: "lost", ArtifactSHA256: "aaaa", MaxRunners: 1, Parallel: 1,
		IdleTimeout: time.Minute, QueueLimit: 10, QueueTimeout: time.Hour}
	if _, err := queue.Ensure(ctx, js, id, queue.DeploymentLimits(d.QueueLimit, d.QueueTimeout, 1)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { queue.Delete(context.Background(), js, id) })
	clock := &fakeClock{now: time.Now()}
	c := &cluster{runners: map[string]RunnerRef{}, starts: map[string]int{}}
	cp, err := New(Config{
		Registry: staticRegistry{[]registry.Deployment{d}}, Driver: clusterView{c, "cp"}, NATS: nc,
		Logger: slog.Default(), Now: clock.Now, DeadAfter: time.Hour, StartTimeout: time.Hour,
		SweepEvery: 30 * time.Second, RestSweepEvery: 5 * time.Minute,
	})
	if err != nil {
		t.Fatal(err)
	}
	cp.step(ctx) // the first tick looks at everything: nothing queued
	if _, err := queue.Publish(ctx, js, id, "job1", []byte("{}")); err != nil {
		t.Fatal(err)
	}
	waitQueued(t, js, id, 1)
	var startedAt time.Duration
	for elapsed := time.Duration(0); elapsed < 10*time.Minute && startedAt == 0; {
		clock.Add(time.Second)
		elapsed += time.Second
		cp.step(ctx)
		if n, _ := c.snapshot(); n["lost"] > 0 {
			startedAt = elapsed
		}
	}
	// The pass that looks at it depends on its ID's hash: within
	// RestSweepEvery and a pass, and not at the next ticks.
	if startedAt < 30*time.Second || startedAt > 5*time.Minute+30*time.Second {
		t.Errorf("the unpoked job got a runner %s after it was queued (0: never), want between SweepEvery (30s) and RestSweepEvery + SweepEvery (5m30s)", startedAt)
	}
}
