package runner

import (
	"context"
	"encoding/json"
	"os"
	"time"

	"github.com/infer-run/infer/internal/wire"
)

func (r *Runner) setPhase(p wire.Phase, detail string) {
	r.mu.Lock()
	changed := r.phase != p || r.detail != detail
	r.phase, r.detail = p, detail
	r.mu.Unlock()
	if changed {
		r.publishHeartbeat()
	}
}

func (r *Runner) heartbeats(ctx context.Context) {
	t := time.NewTicker(r.cfg.Heartbeat)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			r.publishHeartbeat()
		case <-ctx.Done():
			return
		}
	}
}

func (r *Runner) publishHeartbeat() {
	r.mu.Lock()
	hb := wire.Heartbeat{
		RunnerID:     r.cfg.ID,
		Deployment:   r.cfg.Deployment,
		DeploymentID: r.cfg.DeploymentID,
		Artifact:     r.cfg.Artifact.SHA256,
		Host:         r.host,
		PID:          os.Getpid(),
		Phase:        r.phase,
		Detail:       r.detail,
		Retry:        r.retry,
		Slots:        r.cfg.Engine.Parallel,
		InFlight:     r.inFlight,
		LastRequest:  r.lastRequest,
		StartedAt:    r.started,
		Sent:         time.Now(),
		ColdStart:    r.coldStart,
		Devices:      r.devices,
		GPULayers:    r.gpuLayers,
	}
	r.mu.Unlock()
	data, err := json.Marshal(hb)
	if err != nil {
		return
	}
	if err := r.nc.Publish(wire.HeartbeatSubject(r.cfg.DeploymentID, r.cfg.ID), data); err != nil {
		r.log.Debug("publishing heartbeat", "err", err)
	}
	if hb.Phase == wire.PhaseStopped || hb.Phase == wire.PhaseFailed {
		r.nc.Flush()
	}
}
