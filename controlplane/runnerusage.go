package controlplane

import (
	"context"
	"encoding/json"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/infer-run/infer/internal/wire"
)

// runnerEnded publishes a runner's lifetime to the usage stream, priced at
// its deployment's runner-second price as of the last tick, so idle and
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
	rec := wire.RunnerUsageRecord{
		RunnerID:       hb.RunnerID,
		Deployment:     hb.Deployment,
		StartedAt:      hb.StartedAt,
		EndedAt:        end,
		PricePerSecond: cp.deps[hb.Deployment].Prices.RunnerSecond,
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
			_, err := cp.js.Publish(ctx, wire.RunnerUsageSubject(hb.Deployment), data, jetstream.WithMsgID("runner."+hb.RunnerID))
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
