package activator

import (
	"encoding/json"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/infer-run/infer/internal/natsconn"
	"github.com/infer-run/infer/internal/wire"
)

// runnerView follows runner heartbeats so that waiting clients can be told
// what a cold start is doing and GET /v1/deployments/{name} can show the
// runners. Any activator sees every runner; nothing here is authoritative
// (the control plane decides), it is what people are shown.
type runnerView struct {
	sub *nats.Subscription
	// hearing keeps a NATS outage of this activator's own from making
	// every runner look stale: a relay would take its generating runner
	// for lost and end the stream, although the runner goes on once the
	// connection is back.
	hearing *natsconn.Uptime

	mu       sync.Mutex
	runners  map[string]wire.Heartbeat
	failures map[string]startFailure // deployment → its runners' last failed starts
	// changes holds, per deployment that a request waits on, a channel
	// closed at the next change of what its runners are doing, so that
	// waiting streams name each cold-start phase as it begins instead of
	// at their next keepalive (a model can load in less than one).
	changes map[string]chan struct{}
	phases  map[string]string // deployment → its phase as last named to waiters
}

// startFailure is why a deployment's runners keep failing to start.
type startFailure struct {
	// count is the failures in a row that starting again cannot fix
	// (Heartbeat.Retry unset). One that may pass (the object store is
	// down) starts the count again: the control plane keeps retrying,
	// and clients wait for it up to their queue timeout.
	count  int
	detail string
	at     time.Time
}

// staleAfter is when a runner that stopped sending heartbeats is no longer
// shown.
const staleAfter = 5 * time.Second

func newRunnerView(nc *nats.Conn) (*runnerView, error) {
	v := &runnerView{runners: map[string]wire.Heartbeat{}, failures: map[string]startFailure{}, changes: map[string]chan struct{}{}, phases: map[string]string{}, hearing: natsconn.NewUptime(nc)}
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
	v.apply(hb)
	if _, waiting := v.changes[hb.DeploymentID]; waiting {
		// Wake the deployment's waiting streams only when what they
		// would be told changes, not at every heartbeat or share of
		// the weights fetched by a runner nobody waits on.
		if p := v.phaseLocked(hb.DeploymentID); p != v.phases[hb.DeploymentID] {
			v.phases[hb.DeploymentID] = p
			close(v.changes[hb.DeploymentID])
			delete(v.changes, hb.DeploymentID)
		}
	}
}

// apply records a heartbeat. v.mu is held.
func (v *runnerView) apply(hb wire.Heartbeat) {
	// What a runner says of itself reaches clients (cold-start comments,
	// 503s, GET /v1/deployments); its server paths must not.
	hb.Detail = redactPaths(hb.Detail)
	switch hb.Phase {
	case wire.PhaseFailed:
		f := startFailure{count: v.failures[hb.DeploymentID].count + 1, detail: hb.Detail, at: time.Now()}
		if hb.Retry {
			f.count = 0
		}
		v.failures[hb.DeploymentID] = f
		fallthrough
	case wire.PhaseStopped:
		delete(v.runners, hb.RunnerID)
		return
	case wire.PhaseReady:
		delete(v.failures, hb.DeploymentID)
	}
	hb.Sent = time.Now() // our clock decides staleness
	v.runners[hb.RunnerID] = hb
}

// changed returns a channel closed when what coldStartPhase says of the
// deployment next changes.
func (v *runnerView) changed(deployment string) <-chan struct{} {
	v.mu.Lock()
	defer v.mu.Unlock()
	ch, ok := v.changes[deployment]
	if !ok {
		ch = make(chan struct{})
		v.changes[deployment] = ch
		v.phases[deployment] = v.phaseLocked(deployment)
	}
	return ch
}

// list returns the live runners of a deployment, oldest first.
func (v *runnerView) list(deployment string) []wire.Heartbeat {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.listLocked(deployment)
}

func (v *runnerView) listLocked(deployment string) []wire.Heartbeat {
	var out []wire.Heartbeat
	now := time.Now()
	since := v.hearing.Since(now)
	for id, hb := range v.runners {
		if natsconn.Silent(hb.Sent, since, staleAfter, now) {
			delete(v.runners, id)
			continue
		}
		if hb.DeploymentID == deployment {
			out = append(out, hb)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].StartedAt.Before(out[j].StartedAt) })
	return out
}

// coldStartPhase describes what a waiting request waits for: the progress
// of the runner furthest along in starting, or that no runner exists yet.
func (v *runnerView) coldStartPhase(deployment string) string {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.phaseLocked(deployment)
}

func (v *runnerView) phaseLocked(deployment string) string {
	rs := v.listLocked(deployment)
	if len(rs) == 0 {
		if f, ok := v.failureLocked(deployment); ok {
			return "runner failed (" + f.detail + "); retrying"
		}
		return "starting runner"
	}
	best, waiting := "", ""
	for _, hb := range rs {
		switch hb.Phase {
		case wire.PhaseWaiting:
			// Not a runner: its driver's word that none could start
			// yet (no GPU free), said only while no runner is on
			// its way.
			waiting = hb.Detail
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
	if best == "" && waiting != "" {
		best = waiting
	}
	if best == "" {
		best = "queued"
	}
	return best
}

// failure reports a deployment's recent failed starts (within the last
// minutes; older ones are history).
func (v *runnerView) failure(deployment string) (startFailure, bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.failureLocked(deployment)
}

func (v *runnerView) failureLocked(deployment string) (startFailure, bool) {
	f, ok := v.failures[deployment]
	if ok && time.Since(f.at) > 5*time.Minute {
		delete(v.failures, deployment)
		return startFailure{}, false
	}
	return f, ok
}

// cannotStartAfter is how many failed starts in a row, each one that
// starting again cannot fix, make the activator stop holding requests and
// answer 503.
const cannotStartAfter = 3

// alive reports whether a runner has sent a heartbeat recently, or could
// not have been heard since it last did.
func (v *runnerView) alive(id string) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	hb, ok := v.runners[id]
	now := time.Now()
	return ok && !natsconn.Silent(hb.Sent, v.hearing.Since(now), staleAfter, now)
}
