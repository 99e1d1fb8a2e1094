package controlplane

import (
	"slices"
	"testing"
	"time"

	"github.com/infer-run/infer/internal/queue"
	"github.com/infer-run/infer/internal/wire"
	"github.com/infer-run/infer/registry"
)

// TestPlan covers every branch of the decision with a made-up clock.
func TestPlan(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	const sha = "aaaa"
	dep := func(f func(*registry.Deployment)) registry.Deployment {
		d := registry.Deployment{ID: "dep_x", Name: "x", ArtifactSHA256: sha, MinRunners: 0, MaxRunners: 3, Parallel: 4, IdleTimeout: time.Minute}
		if f != nil {
			f(&d)
		}
		return d
	}
	// ready is a runner started at -10 min, ready since -9 min, heard
	// just now, with inFlight of 4 slots busy and its last request at
	// lastReq.
	ready := func(id string, inFlight int, lastReq time.Duration) RunnerStatus {
		r := RunnerStatus{
			RunnerRef: RunnerRef{ID: id, DeploymentID: "dep_x", Deployment: "x", Artifact: sha, StartedAt: at(-10 * time.Minute)},
			Heard:     true, Seen: t0, Phase: wire.PhaseReady, Slots: 4, InFlight: inFlight,
			ReadyAt: at(-9 * time.Minute),
		}
		if lastReq != 0 {
			r.LastRequest = at(lastReq)
		}
		return r
	}
	with := func(r RunnerStatus, f func(*RunnerStatus)) RunnerStatus { f(&r); return r }
	limits := PlanLimits{DeadAfter: 10 * time.Second, StartTimeout: time.Minute, ScaleUpAge: 2 * time.Second}
	base := func(d registry.Deployment, depth int, rs ...RunnerStatus) PlanInput {
		return PlanInput{Deployment: d, Depth: queue.Depth{Queued: depth}, Runners: rs, Hearing: at(-time.Hour), Leading: true, Limits: limits}
	}
	edit := func(in PlanInput, f func(*PlanInput)) PlanInput { f(&in); return in }

	tests := []struct {
		name  string
		in    PlanInput
		start int
		why   string
		drain []RunnerAction
		kill  []RunnerAction
		// wake is the expected NextWake (zero: none); backoff the
		// expected BackoffUntil.
		wake, backoff time.Time
	}{
		{
			name: "idle deployment at zero does nothing and asks for no wake",
			in:   base(dep(nil), 0),
		},
		{
			name: "first request starts one runner", in: base(dep(nil), 1),
			start: 1, why: "work", wake: at(time.Minute + wakeSlack),
		},
		{
			name: "scale up within max: 100 jobs at parallel 4, max 3, one live",
			in:   base(dep(nil), 100, ready("r1", 4, -time.Second)),
			// r1's silence deadline comes before the new runners' start timeout.
			start: 2, why: "work", wake: at(10*time.Second + wakeSlack),
		},
		{
			name:  "min_runners kept warm without work",
			in:    base(dep(func(d *registry.Deployment) { d.MinRunners = 2 }), 0),
			start: 2, why: "min_runners", wake: at(time.Minute + wakeSlack),
		},
		{
			name:  "runner on an old artifact drains; a new one takes the queue",
			in:    base(dep(nil), 1, with(ready("old", 1, -time.Second), func(r *RunnerStatus) { r.Artifact = "bbbb" })),
			drain: []RunnerAction{{"old", ReasonOldArtifact}}, start: 1, why: "work", wake: at(time.Minute + wakeSlack),
		},
		{
			name: "silent runner is killed and replaced",
			in: base(dep(func(d *registry.Deployment) { d.MinRunners = 1 }), 0,
				with(ready("r1", 0, 0), func(r *RunnerStatus) { r.Seen = at(-11 * time.Second) })),
			kill: []RunnerAction{{"r1", ReasonSilent}}, start: 1, why: "min_runners", wake: at(time.Minute + wakeSlack),
		},
		{
			name: "a runner silent less than DeadAfter is woken for at its deadline",
			in: base(dep(func(d *registry.Deployment) { d.MinRunners = 1 }), 0,
				with(ready("r1", 0, 0), func(r *RunnerStatus) { r.Seen = at(-5 * time.Second) })),
			wake: at(5*time.Second + wakeSlack),
		},
		{
			name: "silence during a NATS outage proves nothing",
			in: edit(base(dep(func(d *registry.Deployment) { d.MinRunners = 1 }), 0,
				with(ready("r1", 0, 0), func(r *RunnerStatus) { r.Seen = at(-time.Minute) })),
				func(in *PlanInput) { in.Hearing = at(-3 * time.Second) }),
			wake: at(7*time.Second + wakeSlack),
		},
		{
			name: "runner that never reported within the start timeout is killed",
			in:   base(dep(nil), 1, RunnerStatus{RunnerRef: RunnerRef{ID: "mute", DeploymentID: "dep_x", Artifact: sha, StartedAt: at(-61 * time.Second)}}),
			kill: []RunnerAction{{"mute", ReasonNeverReported}}, start: 1, why: "work", wake: at(time.Minute + wakeSlack),
		},
		{
			name: "runner still within its start timeout is waited for",
			in:   base(dep(nil), 1, RunnerStatus{RunnerRef: RunnerRef{ID: "new", DeploymentID: "dep_x", Artifact: sha, StartedAt: at(-20 * time.Second)}}),
			wake: at(40*time.Second + wakeSlack),
		},
		{
			name:  "draining runners do not count and are left alone",
			in:    base(dep(nil), 1, with(ready("going", 0, 0), func(r *RunnerStatus) { r.Stopping = true; r.Seen = at(-time.Hour) })),
			start: 1, why: "work", wake: at(time.Minute + wakeSlack),
		},
		{
			name:    "backoff after failures holds starts",
			in:      edit(base(dep(nil), 1), func(in *PlanInput) { in.Failures, in.LastFailure = 3, at(-time.Second) }),
			backoff: at(3 * time.Second), wake: at(3 * time.Second),
		},
		{
			name:  "backoff over: start",
			in:    edit(base(dep(nil), 1), func(in *PlanInput) { in.Failures, in.LastFailure = 3, at(-5*time.Second) }),
			start: 1, why: "work", wake: at(time.Minute + wakeSlack),
		},
		{
			name:  "one idle runner stopped per decision after the idle timeout",
			in:    base(dep(nil), 0, ready("a", 0, -2*time.Minute), ready("b", 0, -2*time.Minute), ready("c", 0, -2*time.Minute)),
			drain: []RunnerAction{{"a", ReasonIdle}}, wake: at(wakeSlack), // b at the next tick
		},
		{
			name: "idle runner within its idle timeout is woken for at its end",
			in:   base(dep(nil), 0, ready("a", 0, -20*time.Second)),
			wake: at(10*time.Second + wakeSlack), // silence deadline first
		},
		{
			name: "idle timeout is the next wake when it comes before the silence deadline",
			in:   base(dep(nil), 0, ready("a", 0, -55*time.Second)),
			wake: at(5 * time.Second),
		},
		{
			name: "busy runner is not stopped",
			in:   base(dep(nil), 0, ready("busy", 1, -2*time.Minute)),
			wake: at(10*time.Second + wakeSlack),
		},
		{
			name: "runner not ready yet is not stopped",
			in:   base(dep(nil), 0, with(ready("loading", 0, 0), func(r *RunnerStatus) { r.Phase, r.ReadyAt = wire.PhaseLoading, time.Time{} })),
			wake: at(10*time.Second + wakeSlack),
		},
		{
			name: "follower decides nothing",
			in:   edit(base(dep(nil), 5), func(in *PlanInput) { in.Leading = false }),
		},
		{
			name: "queue age: a job waited past ScaleUpAge with every slot busy gets one more runner",
			// Depth says one runner is enough (4 jobs at parallel 4) but
			// the runner reports 2 slots, both busy.
			in: edit(base(dep(nil), 2, with(ready("r1", 2, -time.Second), func(r *RunnerStatus) { r.Slots = 2 })),
				func(in *PlanInput) { in.Depth.InFlight = 2; in.OldestQueued = at(-3 * time.Second) }),
			start: 1, why: "queue_age", wake: at(10*time.Second + wakeSlack),
		},
		{
			name: "queue age under ScaleUpAge: woken for when it is reached",
			in: edit(base(dep(nil), 2, with(ready("r1", 2, -time.Second), func(r *RunnerStatus) { r.Slots = 2 })),
				func(in *PlanInput) { in.Depth.InFlight = 2; in.OldestQueued = at(-500 * time.Millisecond) }),
			wake: at(1500 * time.Millisecond),
		},
		{
			name: "queue age: no runner past max",
			in: edit(base(dep(func(d *registry.Deployment) { d.MaxRunners = 1 }), 2, with(ready("r1", 2, -time.Second), func(r *RunnerStatus) { r.Slots = 2 })),
				func(in *PlanInput) { in.Depth.InFlight = 2; in.OldestQueued = at(-time.Minute) }),
			wake: at(10*time.Second + wakeSlack),
		},
		{
			name: "queue age: a runner with a free slot will take the job",
			in: edit(base(dep(nil), 1, ready("r1", 2, -time.Second)),
				func(in *PlanInput) { in.Depth.InFlight = 2; in.OldestQueued = at(-time.Minute) }),
			wake: at(10*time.Second + wakeSlack),
		},
		{
			name: "queue age: a starting runner will take the job",
			in: edit(base(dep(nil), 3, with(ready("r1", 2, -time.Second), func(r *RunnerStatus) { r.Slots = 2 }),
				RunnerStatus{RunnerRef: RunnerRef{ID: "new", DeploymentID: "dep_x", Artifact: sha, StartedAt: at(-time.Second)}}),
				func(in *PlanInput) { in.Depth.InFlight = 2; in.OldestQueued = at(-time.Minute) }),
			wake: at(10*time.Second + wakeSlack),
		},
		{
			name: "queue age: off when ScaleUpAge is zero",
			in: edit(base(dep(nil), 2, with(ready("r1", 2, -time.Second), func(r *RunnerStatus) { r.Slots = 2 })),
				func(in *PlanInput) {
					in.Depth.InFlight = 2
					in.OldestQueued = at(-time.Minute)
					in.Limits.ScaleUpAge = 0
				}),
			wake: at(10*time.Second + wakeSlack),
		},
		{
			name: "keep_warm holds the last runner past its idle timeout",
			in: edit(base(dep(func(d *registry.Deployment) { d.KeepWarm = 10 * time.Minute }), 0, ready("last", 0, -2*time.Minute)),
				func(in *PlanInput) { in.LastRequest = at(-2 * time.Minute) }),
			wake: at(10*time.Second + wakeSlack),
		},
		{
			name: "keep_warm over: the last runner goes",
			in: edit(base(dep(func(d *registry.Deployment) { d.KeepWarm = 10 * time.Minute }), 0, ready("last", 0, -11*time.Minute)),
				func(in *PlanInput) { in.LastRequest = at(-11 * time.Minute) }),
			drain: []RunnerAction{{"last", ReasonIdle}}, wake: at(10*time.Second + wakeSlack),
		},
		{
			name: "keep_warm keeps one, not all: the others stop after the idle timeout",
			in: edit(base(dep(func(d *registry.Deployment) { d.KeepWarm = 10 * time.Minute }), 0,
				ready("a", 0, -2*time.Minute), ready("b", 0, -2*time.Minute)),
				func(in *PlanInput) { in.LastRequest = at(-2 * time.Minute) }),
			drain: []RunnerAction{{"a", ReasonIdle}}, wake: at(10*time.Second + wakeSlack),
		},
		{
			name: "keep_warm without a request served is idle_timeout alone",
			in:   base(dep(func(d *registry.Deployment) { d.KeepWarm = 10 * time.Minute }), 0, ready("never", 0, 0)),
			// ready since -9 min: idle past the 1 min timeout.
			drain: []RunnerAction{{"never", ReasonIdle}}, wake: at(10*time.Second + wakeSlack),
		},
		{
			name: "poked but the queue looks empty yet: look again next tick",
			in:   edit(base(dep(nil), 0), func(in *PlanInput) { in.LastPoke = at(-time.Second) }),
			wake: at(wakeSlack),
		},
		{
			name: "a poke long past with nothing queued: nothing to do",
			in:   edit(base(dep(nil), 0), func(in *PlanInput) { in.LastPoke = at(-pokeRecheck) }),
		},
		{
			name: "keep_warm starts nothing at zero",
			in: edit(base(dep(func(d *registry.Deployment) { d.KeepWarm = 10 * time.Minute }), 0),
				func(in *PlanInput) { in.LastRequest = at(-time.Minute) }),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Plan(tt.in, t0)
			if got.Start != tt.start {
				t.Errorf("Start = %d, want %d (live %d, want %d)", got.Start, tt.start, got.Live, got.Want)
			}
			if tt.start > 0 && got.StartReason != tt.why {
				t.Errorf("StartReason = %q, want %q", got.StartReason, tt.why)
			}
			if !slices.Equal(got.Drain, tt.drain) {
				t.Errorf("Drain = %v, want %v", got.Drain, tt.drain)
			}
			if !slices.Equal(got.Kill, tt.kill) {
				t.Errorf("Kill = %v, want %v", got.Kill, tt.kill)
			}
			if !got.NextWake.Equal(tt.wake) {
				t.Errorf("NextWake = %v, want %v", got.NextWake.Sub(t0), tt.wake.Sub(t0))
			}
			if !got.BackoffUntil.Equal(tt.backoff) {
				t.Errorf("BackoffUntil = %v, want %v", got.BackoffUntil.Sub(t0), tt.backoff.Sub(t0))
			}
		})
	}
}

// TestScheduleSweep: the sweep visits every deployment once per period,
// a share per tick, and resumes where it was when the set changes.
func TestScheduleSweep(t *testing.T) {
	s := newSchedule()
	deps := map[string]registry.Deployment{}
	for i := range 90 {
		id := string(rune('a'+i/26)) + string(rune('a'+i%26))
		deps[id] = registry.Deployment{ID: id}
	}
	s.setAll(deps)
	seen := map[string]int{}
	for range 30 { // one period of 30 ticks
		got := s.sweep(time.Second, 30*time.Second, nil)
		if len(got) != 3 {
			t.Fatalf("a tick swept %d deployments, want 3 (90 over 30 ticks)", len(got))
		}
		for _, id := range got {
			seen[id]++
		}
	}
	if len(seen) != 90 {
		t.Errorf("one period visited %d deployments, want all 90", len(seen))
	}
	for id, n := range seen {
		if n != 1 {
			t.Errorf("%s visited %d times in one period", id, n)
		}
	}
	// Few deployments: one visit each per period, not one per tick.
	s.setAll(map[string]registry.Deployment{"x": {}, "y": {}})
	n := 0
	for range 30 {
		n += len(s.sweep(time.Second, 30*time.Second, nil))
	}
	if n != 2 {
		t.Errorf("2 deployments got %d visits in one period, want 2", n)
	}

	// At rest, one pass in k: over k passes each is looked at once, and
	// each pass looks at about 1/k of them.
	s.setAll(deps)
	const k = 10
	visits := map[string]int{}
	perPass := make([]int, k)
	for p := range k {
		for _, id := range s.sweep(30*time.Second, 30*time.Second, func(id string, pass int) bool { return restPass(id, pass, k) }) {
			visits[id]++
			perPass[p]++
		}
	}
	for id := range deps {
		if visits[id] != 1 {
			t.Errorf("%s at rest visited %d times in %d passes, want once", id, visits[id], k)
		}
	}
	for p, n := range perPass {
		if n > 20 {
			t.Errorf("pass %d looked at %d of 90 deployments at rest, want about 9", p, n)
		}
	}

	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	s.due("x", now.Add(time.Second))
	s.due("x", now.Add(time.Minute)) // a later wake does not postpone an earlier one
	if got := s.takeDue(now); len(got) != 0 {
		t.Errorf("due before its time: %v", got)
	}
	if got := s.takeDue(now.Add(time.Second)); !slices.Equal(got, []string{"x"}) {
		t.Errorf("takeDue = %v, want [x]", got)
	}
	if got := s.takeDue(now.Add(time.Hour)); len(got) != 0 {
		t.Errorf("taken twice: %v", got)
	}
}
