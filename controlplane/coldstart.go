package controlplane

import (
	"time"

	"github.com/infer-run/infer/internal/wire"
	"github.com/infer-run/infer/registry"
)

// Cold starts are explained by phase, so a slow one can be blamed on the
// right thing:
//
//	decision     a request queued (the activator's poke arrived) → Start called
//	start        Start called → the runner process began fetching weights
//	fetch        weights fetched (or found in the host's cache)
//	load         model loaded into the engine
//	attach       queue consumer and usage stream opened; the runner is ready
//	first_token  ready → the first token of the runner's first request
//
// decision and start are measured on the control plane's clock and the
// runner's, which on one host are the same; on a cluster, skew between
// nodes shows in start (clamped at zero).
var coldStartPhases = []string{"decision", "start", "fetch", "load", "attach", "first_token"}

// coldStart is what the control plane knows of one runner's start.
type coldStart struct {
	deployment string
	called     time.Time     // Start called
	decision   time.Duration // -1 when the start was not for a queued request
	demand     bool          // work was waiting: wait for its first token
	fetchSeen  bool
	readySeen  time.Time // when the ready heartbeat arrived
}

// firstTokenWait bounds how long after ready a cold start waits for its
// runner's first token before it is logged without one (the request may
// have gone to another runner).
const firstTokenWait = 10 * time.Second

// noteStart records a runner start of deployment d; called with cp.mu
// held. Pokes are by deployment ID, metrics by name.
func (cp *ControlPlane) noteStart(id string, d registry.Deployment, called time.Time, queued bool) {
	cs := &coldStart{deployment: d.Name, called: called, decision: -1, demand: queued}
	if t, ok := cp.pokedAt[d.ID]; ok {
		cs.decision = max(0, called.Sub(t))
		cs.demand = true
		delete(cp.pokedAt, d.ID)
	}
	cp.coldStarts[id] = cs
}

// observeColdStart updates a runner's cold start from its heartbeat and,
// once it is complete, logs it, exports its phases and returns them;
// called with cp.mu held.
func (cp *ControlPlane) observeColdStart(hb wire.Heartbeat, now time.Time) map[string]time.Duration {
	cs, ok := cp.coldStarts[hb.RunnerID]
	if !ok {
		return nil
	}
	t := hb.ColdStart
	switch hb.Phase {
	case wire.PhaseFailed, wire.PhaseStopped:
		delete(cp.coldStarts, hb.RunnerID)
		return nil
	}
	if !cs.fetchSeen && !t.FetchDone.IsZero() && !t.FetchStarted.IsZero() {
		cs.fetchSeen = true
		cp.metrics.fetchSeconds.WithLabelValues(cs.deployment).Observe(t.FetchDone.Sub(t.FetchStarted).Seconds())
		cp.metrics.fetchedBytes.WithLabelValues(cs.deployment).Add(float64(t.FetchedBytes))
	}
	if t.Ready.IsZero() || t.LoadDone.IsZero() || t.FetchDone.IsZero() || t.FetchStarted.IsZero() {
		return nil
	}
	if cs.readySeen.IsZero() {
		cs.readySeen = now
	}
	if t.FirstToken.IsZero() && cs.demand && now.Sub(cs.readySeen) < firstTokenWait {
		return nil
	}
	delete(cp.coldStarts, hb.RunnerID)

	phases := map[string]time.Duration{
		"start":  max(0, t.FetchStarted.Sub(cs.called)),
		"fetch":  t.FetchDone.Sub(t.FetchStarted),
		"load":   t.LoadDone.Sub(t.FetchDone),
		"attach": t.Ready.Sub(t.LoadDone),
	}
	if cs.decision >= 0 {
		phases["decision"] = cs.decision
	}
	if !t.FirstToken.IsZero() {
		phases["first_token"] = max(0, t.FirstToken.Sub(t.Ready))
	}
	var total time.Duration
	attrs := []any{"deployment", cs.deployment, "runner", hb.RunnerID, "fetched_bytes", t.FetchedBytes}
	for _, p := range coldStartPhases {
		d, ok := phases[p]
		if !ok {
			continue
		}
		total += d
		cp.metrics.coldStartPhase.WithLabelValues(cs.deployment, p).Observe(d.Seconds())
		attrs = append(attrs, p+"_ms", ms(d))
	}
	attrs = append(attrs, "total_ms", ms(total))
	cp.log.Info("cold start", attrs...)
	return phases
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
