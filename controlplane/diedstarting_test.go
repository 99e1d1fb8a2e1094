package controlplane

import (
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/infer-run/infer/internal/testenv"
	"github.com/infer-run/infer/internal/wire"
	"github.com/infer-run/infer/registry"
)

// TestRunnerDiedLoading: a runner whose process vanishes while it said it
// was loading (llama.cpp aborted on the weights: no failed heartbeat could
// be sent) is reported failed, as a failure starting again cannot fix, so
// the control plane backs off and activators stop holding requests after
// three, instead of runners being started in a loop.
func TestRunnerDiedLoading(t *testing.T) {
	nc, err := nats.Connect(testenv.NATS(t))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	dep := "died-" + wire.NewID(4)
	c := &cluster{runners: map[string]RunnerRef{}, starts: map[string]int{}}
	cp, err := New(Config{
		Registry:     staticRegistry{[]registry.Deployment{{ID: dep, Name: dep, ArtifactSHA256: "aaaa", MinRunners: 1, MaxRunners: 1, Parallel: 1, IdleTimeout: time.Hour}}},
		Driver:       clusterView{c, "cp"},
		NATS:         nc,
		Logger:       slog.Default(),
		Tick:         100 * time.Millisecond,
		DeadAfter:    300 * time.Millisecond,
		StartTimeout: time.Hour,
	})
	if err != nil {
		t.Fatal(err)
	}
	failed := make(chan wire.Heartbeat, 4)
	sub, err := nc.Subscribe(wire.HeartbeatSubject(dep, "*"), func(m *nats.Msg) {
		var hb wire.Heartbeat
		if json.Unmarshal(m.Data, &hb) == nil && hb.Phase == wire.PhaseFailed {
			failed <- hb
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { defer close(done); cp.Run(ctx) }()
	defer func() { cancel(); <-done }()

	// The control plane starts a runner; it says it is loading, then its
	// process is gone.
	var id string
	for deadline := time.Now().Add(10 * time.Second); id == ""; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no runner started")
		}
		c.mu.Lock()
		for rid := range c.runners {
			id = rid
		}
		c.mu.Unlock()
	}
	hb, _ := json.Marshal(wire.Heartbeat{RunnerID: id, DeploymentID: dep, Deployment: dep, Phase: wire.PhaseLoading, Detail: "loading model", StartedAt: time.Now(), Sent: time.Now()})
	nc.Publish(wire.HeartbeatSubject(dep, id), hb)
	nc.Flush()
	time.Sleep(200 * time.Millisecond) // the control plane hears it
	c.mu.Lock()
	delete(c.runners, id)
	c.mu.Unlock()

	select {
	case hb := <-failed:
		if hb.RunnerID != id || hb.Retry || !strings.Contains(hb.Detail, "exited while loading the model") {
			t.Errorf("failed heartbeat %+v; want runner %s, no retry, saying it died loading", hb, id)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no failed heartbeat for the runner that died loading")
	}
	// The control plane counted it, so the next start waits out a backoff.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		cp.mu.Lock()
		n := cp.failures[dep].count
		cp.mu.Unlock()
		if n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d failures counted, want 1", n)
		}
	}
}
