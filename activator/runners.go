package activator

import (
	"encoding/json"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/infer-run/infer/internal/wire"
)

// runnerView follows runner heartbeats so that waiting clients can be told
// what a cold start is doing and GET /v1/deployments/{name} can show the
// runners. Any activator sees every runner; nothing here is authoritative
// (the control plane decides), it is what people are shown.
type runnerView struct {
	sub *nats.Subscription

	mu      sync.Mutex
	runners map[string]wire.Heartbeat
}

// staleAfter is when a runner that stopped sending heartbeats is no longer
// shown.
const staleAfter = 5 * time.Second

func newRunnerView(nc *nats.Conn) (*runnerView, error) {
	v := &runnerView{runners: map[string]wire.Heartbeat{}}
	sub, err := nc.Subscribe(wire.HeartbeatSubjects, v.onHeartbeat)
	if err != nil {
		return nil, fmt.Errorf("subscribing to runner heartbeats: %w", err)
	}
	v.sub = sub
	return v, nil
}

func (v *runnerView) close() { v.sub.Unsubscribe() }

func (v *runnerView) onHeartbeat(m *nats.Msg) {
	var hb wire.Heartbeat
	if err := json.Unmarshal(m.Data, &hb); err != nil {
		return
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if hb.Phase == wire.PhaseStopped {
		delete(v.runners, hb.RunnerID)
		return
	}
	hb.Sent = time.Now() // our clock decides staleness
	v.runners[hb.RunnerID] = hb
}

// list returns the live runners of a deployment, oldest first.
func (v *runnerView) list(deployment string) []wire.Heartbeat {
	v.mu.Lock()
	defer v.mu.Unlock()
	var out []wire.Heartbeat
	for id, hb := range v.runners {
		if time.Since(hb.Sent) > staleAfter {
			delete(v.runners, id)
			continue
		}
		if hb.Deployment == deployment {
			out = append(out, hb)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].StartedAt.Before(out[j].StartedAt) })
	return out
}

// coldStartPhase describes what a waiting request waits for: the progress
// of the runner furthest along in starting, or that no runner exists yet.
func (v *runnerView) coldStartPhase(deployment string) string {
	rs := v.list(deployment)
	if len(rs) == 0 {
		return "starting runner"
	}
	best := ""
	for _, hb := range rs {
		switch hb.Phase {
		case wire.PhaseReady:
			return "queued"
		case wire.PhaseLoading:
			best = "loading model"
		case wire.PhaseFetching:
			if best == "" || best == "starting runner" {
				best = hb.Detail
			}
		case wire.PhaseStarting:
			if best == "" {
				best = "starting runner"
			}
		}
	}
	if best == "" {
		best = "queued"
	}
	return best
}
