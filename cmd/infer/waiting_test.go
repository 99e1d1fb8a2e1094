//go:build !activatoronly

package main

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/infer-run/infer/controlplane"
	"github.com/infer-run/infer/internal/testenv"
	"github.com/infer-run/infer/internal/wire"
)

// TestPublishWaiting: the local driver's word on a start that cannot
// happen reaches the activators as a heartbeat of a runner that never ran:
// "waiting" while no GPU has room, "failed" when the host has too few, and
// never with a start time (which would bill runner-seconds).
func TestPublishWaiting(t *testing.T) {
	nc, err := nats.Connect(testenv.NATS(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	dep := "waiting-test-" + wire.NewID(4)
	beats := make(chan wire.Heartbeat, 4)
	sub, err := nc.Subscribe(wire.HeartbeatSubject(dep, "*"), func(m *nats.Msg) {
		var hb wire.Heartbeat
		if json.Unmarshal(m.Data, &hb) == nil {
			beats <- hb
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	nc.Flush()
	publish := publishWaiting(nc)
	spec := controlplane.RunnerSpec{ID: "r1", DeploymentID: dep, Deployment: "d"}
	for _, tt := range []struct {
		err   error
		phase wire.Phase
	}{
		{&controlplane.NoCapacityError{Want: 1, Need: 1 << 30, Free: []int64{0}, Names: []string{"GPU 0"}}, wire.PhaseWaiting},
		{&controlplane.TooFewGPUsError{Want: 2, Have: 1}, wire.PhaseFailed},
	} {
		publish(spec, tt.err)
		select {
		case hb := <-beats:
			if hb.Phase != tt.phase || hb.Detail != tt.err.Error() || hb.RunnerID != "waiting-"+dep || !hb.StartedAt.IsZero() {
				t.Errorf("heartbeat %+v for %v", hb, tt.err)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("no heartbeat for %v", tt.err)
		}
	}
}
