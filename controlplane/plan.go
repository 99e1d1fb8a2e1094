package controlplane

import (
	"time"

	"github.com/infer-run/infer/internal/natsconn"
	"github.com/infer-run/infer/internal/queue"
	"github.com/infer-run/infer/internal/wire"
	"github.com/infer-run/infer/registry"
)

// The scaling decision for one deployment is a pure function of what the
// control plane knows and the time, in the manner of Knative's autoscaler
// (Scale(now) ScaleResult): reconcile gathers a PlanInput, Plan decides,
// and reconcile carries the Decision out. Everything the decision depends
// on is in the input, so each policy is tested with a table and a made-up
// clock (plan_test.go), and the Decision says when the deployment next
// needs looking at, so an idle deployment is not looked at every second.

// PlanInput is what one deployment's decision depends on.
type PlanInput struct {
	Deployment registry.Deployment
	// Depth is the deployment's queue: waiting and in-flight jobs.
	Depth queue.Depth
	// OldestQueued is when the oldest job no runner has taken was queued;
	// zero when none waits or it was not looked up.
	OldestQueued time.Time
	// Runners are the deployment's runners as its driver lists them, with
	// what their heartbeats said.
	Runners []RunnerStatus
	// LastRequest is the latest request any of the deployment's runners
	// reported serving (their heartbeats' LastRequest); zero when it has
	// served nothing since the control plane started. keep_warm counts
	// from it.
	LastRequest time.Time
	// Failures counts the deployment's consecutive runner failures, the
	// last at LastFailure: starts back off (see backoff).
	Failures    int
	LastFailure time.Time
	// Hearing is since when heartbeats could have been heard without a
	// break (natsconn.Uptime.Since): silence is judged only over it.
	Hearing time.Time
	// LastPoke is when the activator last said work was queued; zero if
	// not recently.
	LastPoke time.Time
	// Leading is whether this control plane holds the lease; a follower
	// decides nothing.
	Leading bool
	Limits  PlanLimits
}

// PlanLimits are the control plane's own settings the decision uses
// (Config's, defaults applied).
type PlanLimits struct {
	// DeadAfter: a runner silent this long (once heard) is killed.
	DeadAfter time.Duration
	// StartTimeout: a runner that never reported for this long is killed.
	StartTimeout time.Duration
	// ScaleUpAge: when the oldest waiting job has waited this long while
	// every ready runner's slots are busy, one more runner is planned
	// (within max). Zero turns the rule off.
	ScaleUpAge time.Duration
}

// RunnerStatus is one runner as the driver lists it plus what its
// heartbeats said.
type RunnerStatus struct {
	RunnerRef
	// Heard says a heartbeat arrived; Seen is when the last one did.
	Heard       bool
	Seen        time.Time
	Phase       wire.Phase
	Slots       int
	InFlight    int
	LastRequest time.Time
	// ReadyAt is when the runner was first heard ready; zero if never.
	ReadyAt time.Time
}

// Decision is what to do for one deployment now.
type Decision struct {
	// Live counts the runners that serve (not draining, not killed now);
	// Want is how many there should be.
	Live, Want int
	// Start is how many runners to start now.
	Start int
	// StartReason says why Want is what it is: "work" (queued and
	// in-flight jobs), "queue_age" (a job waited ScaleUpAge with every
	// slot busy), "min_runners" or "keep_warm".
	StartReason string
	// Drain are runners to stop gracefully (they finish their jobs);
	// Kill are runners to end at once.
	Drain []RunnerAction
	Kill  []RunnerAction
	// BackoffUntil is set while starts wait out a backoff after failures.
	BackoffUntil time.Time
	// NextWake is when the deployment needs deciding again even if
	// nothing happens to it (a runner's silence deadline, an idle
	// timeout, the end of a backoff or of keep_warm); zero means only an
	// event (a poke, a heartbeat that changes something, a runner ending)
	// or the safety sweep brings it back.
	NextWake time.Time
}

// RunnerAction is a runner to stop or kill and why (for the log).
type RunnerAction struct {
	ID     string
	Reason string
}

// Reasons runners are drained or killed.
const (
	ReasonOldArtifact   = "runner on an old artifact"
	ReasonSilent        = "runner stopped sending heartbeats"
	ReasonNeverReported = "runner never reported"
	ReasonIdle          = "runner idle past the idle timeout"
)

// pokeRecheck is how long after a poke a deployment without runners whose
// queue looks empty is looked at again every tick: JetStream counts a job
// in the consumer's pending a moment after acknowledging its publish, so
// the reconcile the poke triggers can see none (TestKeepWarm saw it about
// one time in ten on loopback). Without this, that job would wait for the
// sweep.
const pokeRecheck = 5 * time.Second

// wakeSlack is added to deadlines so the look at them comes after they
// passed, not on them (Silent is strict).
const wakeSlack = time.Millisecond

// Plan decides what to do for one deployment at now.
func Plan(in PlanInput, now time.Time) Decision {
	var dec Decision
	if !in.Leading {
		return dec
	}
	d := in.Deployment
	wake := func(t time.Time) {
		if !t.IsZero() && (dec.NextWake.IsZero() || t.Before(dec.NextWake)) {
			dec.NextWake = t
		}
	}

	// Sort runners into those that count and those on their way out.
	var live []RunnerStatus
	for _, r := range in.Runners {
		if r.Stopping {
			continue // draining already; it says when it is gone
		}
		switch {
		case r.Artifact != d.ArtifactSHA256:
			// New weights: the old runner finishes what it has and goes;
			// a new one takes the queue.
			dec.Drain = append(dec.Drain, RunnerAction{r.ID, ReasonOldArtifact})
		case r.Heard && natsconn.Silent(r.Seen, in.Hearing, in.Limits.DeadAfter, now):
			dec.Kill = append(dec.Kill, RunnerAction{r.ID, ReasonSilent})
		case !r.Heard && now.Sub(r.StartedAt) > in.Limits.StartTimeout && natsconn.Silent(time.Time{}, in.Hearing, in.Limits.DeadAfter, now):
			dec.Kill = append(dec.Kill, RunnerAction{r.ID, ReasonNeverReported})
		default:
			live = append(live, r)
			if r.Heard {
				wake(later(r.Seen, in.Hearing).Add(in.Limits.DeadAfter + wakeSlack))
			} else {
				wake(later(r.StartedAt.Add(in.Limits.StartTimeout), in.Hearing.Add(in.Limits.DeadAfter)).Add(wakeSlack))
			}
		}
	}
	dec.Live = len(live)

	ceiling := max(d.MaxRunners, d.MinRunners)
	dec.Want = Desired(d, in.Depth.Total())
	dec.StartReason = "work"
	if parallel := max(1, d.Parallel); (in.Depth.Total()+parallel-1)/parallel < d.MinRunners {
		dec.StartReason = "min_runners"
	}
	// Queue age: depth assumes every runner has the deployment's parallel
	// slots; a runner that reports fewer (or slots that are slower than
	// expected) leaves jobs waiting although depth says there are
	// runners enough. A job waiting ScaleUpAge while every ready runner
	// is full gets one more runner.
	if age := in.Limits.ScaleUpAge; age > 0 && in.Depth.Queued > 0 && !in.OldestQueued.IsZero() && allSlotsBusy(live) && dec.Want <= len(live) && len(live) < ceiling {
		if now.Sub(in.OldestQueued) >= age {
			dec.Want, dec.StartReason = len(live)+1, "queue_age"
		} else {
			wake(in.OldestQueued.Add(age))
		}
	}
	// keep_warm holds the last runner for KeepWarm after the
	// deployment's last request, however short its idle timeout.
	if kw := d.KeepWarm; kw > 0 && !in.LastRequest.IsZero() && dec.Want == 0 && len(live) > 0 {
		if until := in.LastRequest.Add(kw); now.Before(until) {
			dec.Want, dec.StartReason = 1, "keep_warm"
			wake(until)
		}
	}

	if dec.Live == 0 && dec.Want == 0 && !in.LastPoke.IsZero() && now.Sub(in.LastPoke) < pokeRecheck {
		wake(now.Add(wakeSlack)) // the next tick
	}

	switch {
	case dec.Live < dec.Want:
		if until := in.LastFailure.Add(backoff(in.Failures)); in.Failures > 0 && now.Before(until) {
			// Backing off after failed starts.
			dec.BackoffUntil = until
			wake(until)
			break
		}
		dec.Start = dec.Want - dec.Live
		// The new runners report within StartTimeout or are killed.
		wake(now.Add(in.Limits.StartTimeout + wakeSlack))
	case dec.Live > dec.Want:
		// Stop one idle runner per decision: load that comes back finds
		// the rest still warm.
		for _, r := range live {
			since, idle := idleSince(r)
			if !idle {
				continue
			}
			if now.Sub(since) >= d.IdleTimeout {
				dec.Drain = append(dec.Drain, RunnerAction{r.ID, ReasonIdle})
				if dec.Live-1 > dec.Want {
					wake(now.Add(wakeSlack)) // the next one at the next tick
				}
				break
			}
			wake(since.Add(d.IdleTimeout))
		}
	}
	return dec
}

// idleSince is since when a ready runner has had nothing to do; a runner
// that is not ready yet, or busy, is not idle.
func idleSince(r RunnerStatus) (time.Time, bool) {
	if !r.Heard || r.ReadyAt.IsZero() || r.Phase != wire.PhaseReady || r.InFlight > 0 {
		return time.Time{}, false
	}
	return later(r.ReadyAt, r.LastRequest), true
}

// allSlotsBusy is whether every live runner is ready and holds as many
// jobs as it has slots: a runner still starting will take the waiting
// job soon, and one with a free slot will take it now.
func allSlotsBusy(live []RunnerStatus) bool {
	for _, r := range live {
		if r.Phase != wire.PhaseReady || r.Slots <= 0 || r.InFlight < r.Slots {
			return false
		}
	}
	return true
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
