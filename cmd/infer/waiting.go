//go:build !activatoronly

package main

import (
	"encoding/json"
	"errors"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/infer-run/infer/controlplane"
	"github.com/infer-run/infer/internal/wire"
)

// publishWaiting tells the activators why a deployment's runner could not
// start, in a heartbeat of the runner that does not exist yet: waiting
// for a GPU (PhaseWaiting; the control plane tries again at its next
// tick, and waiting streams' SSE comments say what they wait for), or
// never here (PhaseFailed: the host has fewer GPUs than the deployment
// asks for, and waiting requests get that error).
func publishWaiting(nc *nats.Conn) func(controlplane.RunnerSpec, error) {
	return func(spec controlplane.RunnerSpec, err error) {
		hb := wire.Heartbeat{
			// One per deployment: a new runner ID every tick would
			// leave a trail of runners that never were.
			RunnerID:     "waiting-" + spec.DeploymentID,
			Deployment:   spec.Deployment,
			DeploymentID: spec.DeploymentID,
			Artifact:     spec.Artifact,
			Phase:        wire.PhaseWaiting,
			Detail:       err.Error(),
			// No StartedAt: nothing started, and the control plane
			// bills a runner from its heartbeats' StartedAt to its
			// end only when it is set (runnerusage.go).
			Sent: time.Now(),
		}
		var few *controlplane.TooFewGPUsError
		if errors.As(err, &few) {
			hb.Phase = wire.PhaseFailed
		}
		data, jerr := json.Marshal(hb)
		if jerr != nil {
			return
		}
		nc.Publish(wire.HeartbeatSubject(spec.DeploymentID, hb.RunnerID), data)
	}
}
