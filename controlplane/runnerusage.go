package controlplane

import (
	"context"
	"encoding/json"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/infer-run/infer/internal/wire"
)

// runnerEnded publishes a runner's lifetime to the usage stream, priced at
// its deployment's runner-second price as of the last tick (a deleted
// deployment's is remembered while it has runners), so idle and
// cold-start cost is billed. Only the leader publishes: a standby has no
// current prices. It is called with cp.mu held, once when the
// runner says it stopped or failed, or when its heartbeats are forgotten
// after it vanished; the runner ID is the message ID and the table's key,
// so a second publication (another control plane, a late heartbeat) is
// stored once.
func (cp *ControlPlane) runnerEnded(hb wire.Heartbeat, end time.Time) {
	if hb.RunnerID == "" || hb.StartedAt.IsZero() || !cp.leading {
		return
	}
	// By the deployment's ID, never its name: the name may belong to
	// another deployment (of another tenant) by now.
	d, ok := cp.deps[hb.DeploymentID]
	if !ok {
		d = cp.deleted[hb.DeploymentID]
	}
	rec := wire.RunnerUsageRecord{
		RunnerID:       hb.RunnerID,
		Deployment:     hb.Deployment,
		DeploymentID:   hb.DeploymentID,
		TenantID:       d.TenantID,
		StartedAt:      hb.StartedAt,
		EndedAt:        end,
		PricePerSecond: d.Prices.RunnerSecond,
	}
	data, err := json.Marshal(rec)
	if err != nil {
		cp.log.Error("encoding runner usage record", "err", err)
		return
	}
	go func() {
		backoff := 100 * time.Millisecond
		for attempt := 1; ; attempt++ {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_, err := cp.js.Publish(ctx, wire.RunnerUsageSubject(hb.DeploymentID), data, jetstream.WithMsgID("runner."+hb.RunnerID))
			cancel()
			if err == nil {
				return
			}
			if attempt == 5 {
				cp.log.Error("publishing runner usage record", "runner", hb.RunnerID, "err", err)
				return
			}
			time.Sleep(backoff)
			backoff *= 2
		}
	}()
}
