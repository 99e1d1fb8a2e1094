// Package controlplane decides how many runners each deployment has and
// makes it so through a Driver. It scales a deployment up from zero the
// moment work arrives (the activator pokes it), keeps
// ceil(work / parallel) runners within [min, max] while work waits, and
// stops idle runners one at a time after the deployment's idle timeout, so
// an unused model costs nothing.
package controlplane

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/infer-run/infer/internal/natsconn"
	"github.com/infer-run/infer/internal/queue"
	"github.com/infer-run/infer/internal/wire"
	"github.com/infer-run/infer/registry"
)

// Registry is what the control plane reads from the records store.
type Registry interface {
	ListDeployments(ctx context.Context, tenantID string) ([]registry.Deployment, error)
	GetArtifact(ctx context.Context, sha string) (registry.Artifact, error)
}

// Config configures a ControlPlane.
type Config struct {
	Registry Registry
	Driver   Driver
	NATS     *nats.Conn
	Logger   *slog.Logger
	// Tick is how often every deployment is reconciled; pokes reconcile
	// one deployment at once in between.
	Tick time.Duration
	// DeadAfter is how long a runner may go without a heartbeat before it
	// counts as dead (once it has sent one).
	DeadAfter time.Duration
	// StartTimeout bounds how long a runner may take to send its first
	// heartbeat.
	StartTimeout time.Duration
	// Registerer receives the control plane's metrics; nil drops them.
	Registerer prometheus.Registerer
	// Lease, when set, makes this one of several control planes: it
	// always listens to heartbeats but acts only while it holds the lease.
	// Nil means it is the only one.
	Lease Lease
}

// ControlPlane is the autoscaler.
type ControlPlane struct {
	cfg Config
	log *slog.Logger
	js  jetstream.JetStream

	pokes   chan string
	metrics *metrics
	// hearing is since when heartbeats could have arrived without a
	// break: from when the control plane subscribed, or its NATS
	// connection last came back. A runner silent for less than DeadAfter
	// of that proves nothing: a new leader adopting another's runners has
	// not heard them yet, and during a NATS outage nobody hears anyone.
	hearing *natsconn.Uptime

	mu       sync.Mutex
	beats    map[string]runnerState         // runner ID → last heartbeat
	readyAt  map[string]time.Time           // runner ID → when it was first seen ready
	failures map[string]failure             // deployment ID → runners failing to start
	started  map[string]time.Time           // runner ID → when the control plane started it
	deps     map[string]registry.Deployment // by ID, as of the last tick, for pokes and billing
	// deleted are deployments deleted while they still had runners, by
	// ID, until those are gone: see runnerEnded.
	deleted map[string]registry.Deployment
	// leading is what lead last returned (always true without a lease):
	// only the leader bills runner lifetimes (a standby's prices may be
	// stale or unknown) and answers pokes.
	leading bool
	// pokedAt is when a deployment without runners was first poked, and
	// coldStarts what is known of each runner's start: see coldstart.go.
	pokedAt    map[string]time.Time
	coldStarts map[string]*coldStart
	// sweptQueues is when orphan queues were last looked for (only the
	// reconcile loop touches it).
	sweptQueues time.Time
}

// failure counts a deployment's consecutive runner failures, so a model
// that cannot load is retried with backoff instead of in a tight loop.
type failure struct {
	count int
	last  time.Time
}

// backoff is how long to wait before starting another runner after n
// consecutive failures: 1 s doubling to a minute.
func backoff(n int) time.Duration {
	if n <= 0 {
		return 0
	}
	return min(time.Second<<min(n-1, 6), time.Minute)
}

type runnerState struct {
	hb   wire.Heartbeat
	seen time.Time
}

// New creates a control plane.
func New(cfg Config) (*ControlPlane, error) {
	js, err := jetstream.New(cfg.NATS)
	if err != nil {
		return nil, err
	}
	if cfg.Tick <= 0 {
		cfg.Tick = time.Second
	}
	if cfg.DeadAfter <= 0 {
		cfg.DeadAfter = 10 * time.Second
	}
	if cfg.StartTimeout <= 0 {
		cfg.StartTimeout = 60 * time.Second
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	return &ControlPlane{
		cfg:      cfg,
		log:      log.With("component", "controlplane"),
		js:       js,
		pokes:    make(chan string, 1024),
		beats:    map[string]runnerState{},
		readyAt:  map[string]time.Time{},
		failures: map[string]failure{},
		started:  map[string]time.Time{},
		metrics:  newMetrics(cfg.Registerer),

		pokedAt:    map[string]time.Time{},
		coldStarts: map[string]*coldStart{},
		leading:    cfg.Lease == nil,
	}, nil
}

// Run reconciles until ctx is done.
func (cp *ControlPlane) Run(ctx context.Context) error {
	hbSub, err := cp.cfg.NATS.Subscribe(wire.HeartbeatSubjects, cp.onHeartbeat)
	if err != nil {
		return err
	}
	defer hbSub.Unsubscribe()
	cp.hearing = natsconn.NewUptime(cp.cfg.NATS)
	if cp.cfg.Lease != nil {
		defer cp.cfg.Lease.Release()
	}
	pokeSub, err := cp.cfg.NATS.Subscribe(wire.WorkSubjects, func(m *nats.Msg) {
		name := wire.WorkDeployment(m.Subject) // the deployment's ID
		cp.mu.Lock()
		if _, ok := cp.pokedAt[name]; !ok {
			cp.pokedAt[name] = time.Now()
		}
		cp.mu.Unlock()
		select {
		case cp.pokes <- name:
		default: // a full channel means a reconcile is coming anyway
		}
	})
	if err != nil {
		return err
	}
	defer pokeSub.Unsubscribe()

	tick := time.NewTicker(cp.cfg.Tick)
	defer tick.Stop()
	if cp.lead(ctx) {
		cp.reconcileAll(ctx)
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
			// Checked at every tick before acting: a control plane that
			// lost its lease stops at once.
			if cp.lead(ctx) {
				cp.reconcileAll(ctx)
			}
		case name := <-cp.pokes:
			// Every queued request pokes; take all pending pokes at once
			// and act on each deployment once.
			names := map[string]bool{name: true}
			for more := true; more; {
				select {
				case n := <-cp.pokes:
					names[n] = true
				default:
					more = false
				}
			}
			for n := range names {
				cp.scaleFromZero(ctx, n)
			}
		}
	}
}

func (cp *ControlPlane) onHeartbeat(m *nats.Msg) {
	var hb wire.Heartbeat
	if err := json.Unmarshal(m.Data, &hb); err != nil {
		return
	}
	now := time.Now()
	cp.mu.Lock()
	defer cp.mu.Unlock()
	cp.observeColdStart(hb, now)
	switch hb.Phase {
	case wire.PhaseFailed:
		cp.metrics.failures.WithLabelValues(hb.Deployment).Inc()
		delete(cp.started, hb.RunnerID)
		f := cp.failures[hb.DeploymentID]
		cp.failures[hb.DeploymentID] = failure{count: f.count + 1, last: now}
		cp.log.Warn("runner failed", "deployment", hb.Deployment, "runner", hb.RunnerID, "err", hb.Detail,
			"failures", f.count+1, "retry_in", backoff(f.count+1))
		fallthrough
	case wire.PhaseStopped:
		cp.runnerEnded(hb, now)
		delete(cp.beats, hb.RunnerID)
		delete(cp.readyAt, hb.RunnerID)
		return
	case wire.PhaseReady:
		delete(cp.failures, hb.DeploymentID)
		if t, ok := cp.started[hb.RunnerID]; ok {
			cp.metrics.coldStart.WithLabelValues(hb.Deployment).Observe(now.Sub(t).Seconds())
			delete(cp.started, hb.RunnerID)
		}
	}
	cp.beats[hb.RunnerID] = runnerState{hb: hb, seen: now}
	if hb.Phase == wire.PhaseReady {
		if _, ok := cp.readyAt[hb.RunnerID]; !ok {
			cp.readyAt[hb.RunnerID] = now
		}
	}
}

// snapshot reads the deployments and the driver's runners, grouped by
// deployment ID.
func (cp *ControlPlane) snapshot(ctx context.Context) ([]registry.Deployment, []RunnerRef, map[string][]RunnerRef, bool) {
	deps, err := cp.cfg.Registry.ListDeployments(ctx, "")
	if err != nil {
		cp.log.Error("listing deployments", "err", err)
		return nil, nil, nil, false
	}
	runners, err := cp.cfg.Driver.Runners(ctx)
	if err != nil {
		cp.log.Error("listing runners", "err", err)
		return nil, nil, nil, false
	}
	byDep := map[string][]RunnerRef{}
	for _, r := range runners {
		byDep[r.DeploymentID] = append(byDep[r.DeploymentID], r)
	}
	return deps, runners, byDep, true
}

func (cp *ControlPlane) reconcileAll(ctx context.Context) {
	deps, runners, byDep, ok := cp.snapshot(ctx)
	if !ok {
		return
	}
	known := make(map[string]registry.Deployment, len(deps))
	for _, d := range deps {
		known[d.ID] = d
		cp.reconcile(ctx, d, byDep[d.ID])
	}
	cp.mu.Lock()
	// A deleted deployment is remembered while it has runners, so that
	// their lifetimes are billed to it (its tenant, at its price) and
	// never to a later deployment of the same name.
	deleted := map[string]registry.Deployment{}
	for _, m := range []map[string]registry.Deployment{cp.deps, cp.deleted} {
		for id, d := range m {
			if _, ok := known[id]; !ok && len(byDep[id]) > 0 {
				deleted[id] = d
			}
		}
	}
	cp.deps, cp.deleted = known, deleted
	cp.mu.Unlock()
	// Runners of deleted deployments drain and go (they stop by
	// themselves too once their queue is deleted). So do runners that
	// serve no deployment ID: started before queues were keyed by ID.
	for id, rs := range byDep {
		if _, ok := known[id]; ok {
			continue
		}
		for _, r := range rs {
			if !r.Stopping {
				cp.log.Info("stopping runner of a deleted deployment", "deployment", r.Deployment, "deployment_id", id, "runner", r.ID)
				cp.cfg.Driver.Stop(ctx, r.ID)
			}
		}
	}
	cp.forgetGone(runners)
	cp.countPhases(deps, runners)
	live := make(map[string]bool, len(deps))
	for _, d := range deps {
		live[d.ID] = true
	}
	cp.sweepQueues(ctx, live, runners, time.Now())
}

// countPhases sets the runners gauge from the driver's list and the
// runners' last heartbeats.
func (cp *ControlPlane) countPhases(deps []registry.Deployment, runners []RunnerRef) {
	cp.metrics.runners.Reset()
	for _, d := range deps {
		cp.metrics.runners.WithLabelValues(d.Name, string(wire.PhaseReady)).Set(0)
	}
	cp.mu.Lock()
	defer cp.mu.Unlock()
	for _, r := range runners {
		phase := wire.PhaseStarting
		if st, ok := cp.beats[r.ID]; ok {
			phase = st.hb.Phase
		}
		if r.Stopping {
			phase = wire.PhaseDraining
		}
		cp.metrics.runners.WithLabelValues(r.Deployment, string(phase)).Inc()
	}
}

// forgetGone drops heartbeat state of runners the driver no longer has.
func (cp *ControlPlane) forgetGone(runners []RunnerRef) {
	alive := make(map[string]bool, len(runners))
	for _, r := range runners {
		alive[r.ID] = true
	}
	cp.mu.Lock()
	defer cp.mu.Unlock()
	for id, st := range cp.beats {
		if !alive[id] && time.Since(st.seen) > cp.cfg.DeadAfter {
			cp.diedStarting(st.hb)
			cp.runnerEnded(st.hb, st.seen)
			delete(cp.beats, id)
			delete(cp.readyAt, id)
		}
	}
	for id, t := range cp.started {
		if !alive[id] && time.Since(t) > cp.cfg.StartTimeout {
			delete(cp.started, id)
		}
	}
	for id, cs := range cp.coldStarts {
		if !alive[id] && time.Since(cs.called) > cp.cfg.StartTimeout {
			delete(cp.coldStarts, id)
		}
	}
}

// diedStarting reports a runner whose process is gone while its last
// heartbeat said it was still starting: it died without saying why, as
// when llama.cpp aborts on weights it cannot use (an assertion kills the
// process before the runner can report the error). Without this nothing
// counts the failure: the control plane would start runner after runner
// without backoff, and waiting clients would wait out their queue timeout.
// It publishes the failed heartbeat the runner could not, as one that
// starting again cannot fix; this control plane (through its own
// subscription) and every activator count it like any other. Called with
// cp.mu held.
func (cp *ControlPlane) diedStarting(hb wire.Heartbeat) {
	switch hb.Phase {
	case wire.PhaseStarting, wire.PhaseFetching, wire.PhaseLoading:
	default:
		return
	}
	what := "starting"
	if hb.Phase == wire.PhaseLoading {
		what = "loading the model"
	} else if hb.Phase == wire.PhaseFetching {
		what = "fetching the weights"
	}
	hb.Phase, hb.Retry, hb.Sent = wire.PhaseFailed, false, time.Now()
	hb.Detail = "the runner process exited while " + what + " without reporting an error (llama.cpp may have aborted on these weights)"
	data, err := json.Marshal(hb)
	if err != nil {
		return
	}
	if err := cp.cfg.NATS.Publish(wire.HeartbeatSubject(hb.DeploymentID, hb.RunnerID), data); err != nil {
		cp.log.Warn("reporting a runner that died starting", "runner", hb.RunnerID, "err", err)
	}
}

// scaleFromZero reconciles a poked deployment (by ID) at once if it has no
// runner.
// A deployment that has one is left to the next tick: pokes arrive with
// every request, and the request path must not cost a Postgres query each.
func (cp *ControlPlane) scaleFromZero(ctx context.Context, name string) {
	cp.mu.Lock()
	follower := !cp.leading
	cp.mu.Unlock()
	if follower {
		return // the leader got the same poke; no Postgres round trip per poke
	}
	runners, err := cp.cfg.Driver.Runners(ctx)
	if err != nil {
		cp.log.Error("listing runners", "err", err)
		return
	}
	var mine []RunnerRef
	for _, r := range runners {
		if r.DeploymentID == name {
			mine = append(mine, r)
			if !r.Stopping {
				// Not a cold start: the work waits for a warm runner.
				cp.mu.Lock()
				delete(cp.pokedAt, name)
				cp.mu.Unlock()
				return
			}
		}
	}
	cp.mu.Lock()
	d, ok := cp.deps[name]
	cp.mu.Unlock()
	if !ok {
		// Deployed since the last tick.
		deps, err := cp.cfg.Registry.ListDeployments(ctx, "")
		if err != nil {
			cp.log.Error("listing deployments", "err", err)
			return
		}
		for _, x := range deps {
			if x.ID == name {
				d, ok = x, true
			}
		}
	}
	if ok && cp.lead(ctx) {
		cp.reconcile(ctx, d, mine)
	}
}

// lead reports whether this control plane may act now.
func (cp *ControlPlane) lead(ctx context.Context) bool {
	ok := cp.cfg.Lease == nil || cp.cfg.Lease.Hold(ctx)
	if ok {
		cp.metrics.leader.Set(1)
	} else {
		cp.metrics.leader.Set(0)
	}
	cp.mu.Lock()
	cp.leading = ok
	cp.mu.Unlock()
	return ok
}

// Desired is the number of runners a deployment should have for its
// current work: enough slots for everything queued or running, within
// [min, max].
func Desired(d registry.Deployment, work int) int {
	parallel := max(1, d.Parallel)
	n := (work + parallel - 1) / parallel
	return min(max(n, d.MinRunners), max(d.MaxRunners, d.MinRunners))
}

func (cp *ControlPlane) reconcile(ctx context.Context, d registry.Deployment, runners []RunnerRef) {
	log := cp.log.With("deployment", d.Name, "deployment_id", d.ID)
	depth, err := queue.GetDepth(ctx, cp.js, d.ID)
	if errors.Is(err, jetstream.ErrStreamNotFound) || errors.Is(err, jetstream.ErrConsumerNotFound) {
		_, err = queue.Ensure(ctx, cp.js, d.ID, queue.DeploymentLimits(d.QueueLimit, d.QueueTimeout))
	}
	if err != nil {
		log.Error("reading queue depth", "err", err)
		return
	}
	now := time.Now()

	heard := cp.hearing.Since(now)

	// Sort runners into those that count and those on their way out.
	var live []RunnerRef
	for _, r := range runners {
		if r.Stopping {
			continue
		}
		st, seen := cp.state(r.ID)
		switch {
		case r.Artifact != d.ArtifactSHA256:
			// New weights: the old runner finishes what it has and
			// goes; a new one takes the queue.
			log.Info("draining runner on old artifact", "runner", r.ID, "artifact", r.Artifact)
			cp.cfg.Driver.Stop(ctx, r.ID)
		case seen && natsconn.Silent(st.seen, heard, cp.cfg.DeadAfter, now):
			log.Warn("runner stopped sending heartbeats; killing it", "runner", r.ID, "last", st.seen)
			cp.cfg.Driver.Kill(ctx, r.ID)
		case !seen && now.Sub(r.StartedAt) > cp.cfg.StartTimeout && natsconn.Silent(time.Time{}, heard, cp.cfg.DeadAfter, now):
			log.Warn("runner never reported; killing it", "runner", r.ID)
			cp.cfg.Driver.Kill(ctx, r.ID)
		default:
			live = append(live, r)
		}
	}

	want := Desired(d, depth.Total())
	want = cp.capByTenant(ctx, d, len(live), want)
	cp.mu.Lock()
	f := cp.failures[d.ID]
	cp.mu.Unlock()
	switch {
	case len(live) < want && now.Before(f.last.Add(backoff(f.count))):
		// Backing off after failed starts.
	case len(live) < want && !cp.lead(ctx):
		// Lost the lease since the tick began: starting a runner now
		// could duplicate the new leader's.
	case len(live) < want:
		a, err := cp.cfg.Registry.GetArtifact(ctx, d.ArtifactSHA256)
		if err != nil {
			log.Error("looking up artifact", "err", err)
			return
		}
		for i := len(live); i < want; i++ {
			spec := RunnerSpec{
				ID:           wire.NewID(6),
				DeploymentID: d.ID,
				Deployment:   d.Name,
				Artifact:     a.SHA256,
				ObjectKey:    a.ObjectKey,
				Size:         a.Size,
				Parallel:     d.Parallel,
				Context:      d.ContextLength,
				ChatTemplate: d.ChatTemplate,
				Resources:    d.Resources,
			}
			log.Info("starting runner", "runner", spec.ID, "queued", depth.Queued, "in_flight", depth.InFlight, "runners", len(live), "want", want)
			cp.mu.Lock()
			cp.started[spec.ID] = time.Now()
			cp.noteStart(spec.ID, d, cp.started[spec.ID], depth.Total() > 0)
			cp.mu.Unlock()
			if err := cp.cfg.Driver.Start(ctx, spec); err != nil {
				log.Error("starting runner", "err", err)
				return
			}
			cp.metrics.starts.WithLabelValues(d.Name).Inc()
		}
	case len(live) > want:
		// Stop one idle runner per tick: load that comes back finds the
		// rest still warm.
		for _, r := range live {
			if cp.idleFor(r.ID, now) >= d.IdleTimeout {
				log.Info("stopping idle runner", "runner", r.ID, "idle_timeout", d.IdleTimeout, "runners", len(live), "want", want)
				cp.cfg.Driver.Stop(ctx, r.ID)
				break
			}
		}
	}
}

func (cp *ControlPlane) state(id string) (runnerState, bool) {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	st, ok := cp.beats[id]
	return st, ok
}

// idleFor is how long a ready runner has had nothing to do; a runner that
// is not ready yet, or busy, is not idle.
func (cp *ControlPlane) idleFor(id string, now time.Time) time.Duration {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	st, ok := cp.beats[id]
	ready, isReady := cp.readyAt[id]
	if !ok || !isReady || st.hb.Phase != wire.PhaseReady || st.hb.InFlight > 0 {
		return 0
	}
	last := ready
	if st.hb.LastRequest.After(last) {
		last = st.hb.LastRequest
	}
	return now.Sub(last)
}
