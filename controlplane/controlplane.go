// Package controlplane decides how many runners each deployment has and
// makes it so through a Driver. It scales a deployment up from zero the
// moment work arrives (the activator pokes it), keeps
// ceil(work / parallel) runners within [min, max] while work waits, and
// stops idle runners one at a time after the deployment's idle timeout, so
// an unused model costs nothing.
//
// The decision is Plan (plan.go), a pure function of what is known about
// a deployment and the time; reconcile gathers its input and carries it
// out. Deployments are reconciled when something happens to them (a
// poke, a heartbeat that changes something, a runner ending, a change to
// the deployment, the time their last plan asked to be looked at again)
// and by a slow sweep that visits each at least every SweepEvery, spread
// evenly, in case an event was lost (schedule.go). A deployment at zero
// costs nothing between sweeps.
package controlplane

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
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

// Registry is what the control plane reads from the records store. A
// registry that also has a Postgres pool (registry.Store's Pool) is
// listened to for changes, so the deployment list is read when it
// changes rather than every tick; see changes.go.
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
	// Tick is how often the control plane looks at what is due: the
	// deployments something happened to, those whose plan asked to be
	// looked at by now, and the next share of the sweep. Pokes of a
	// deployment without runners are acted on at once in between.
	Tick time.Duration
	// SweepEvery is the longest any deployment goes without being
	// reconciled: the sweep visits every one in this period, spread
	// evenly over its ticks (a 1/30 share per second at the default
	// 30 s), so a lost poke or heartbeat delays a decision by at most
	// this. Each visit costs a queue-depth lookup in JetStream.
	SweepEvery time.Duration
	// RestSweepEvery is the same for a deployment at rest (no runners,
	// min_runners 0): the sweep looks at it on one pass in every
	// RestSweepEvery/SweepEvery, the passes sharing such deployments
	// evenly (by a hash of the ID). Zero means 5 minutes. At rest, only a lost poke
	// could leave work unnoticed, and the ways pokes get lost that the
	// control plane can see (its NATS connection broke, its subscription
	// dropped messages) make it look at every deployment at once; this
	// bounds the rest. 10,000 deployments at rest cost 33 lookups a
	// second at 5 minutes, 333 at 30 s (docs/performance.md).
	RestSweepEvery time.Duration
	// DeadAfter is how long a runner may go without a heartbeat before it
	// counts as dead (once it has sent one).
	DeadAfter time.Duration
	// StartTimeout bounds how long a runner may take to send its first
	// heartbeat.
	StartTimeout time.Duration
	// ScaleUpAge: a request that has waited this long while every ready
	// runner's slots are busy gets one more runner (within max_runners),
	// even where the queue depth says there are runners enough (runners
	// reporting fewer slots than the deployment's parallel). Zero means
	// 2 s; negative turns it off.
	ScaleUpAge time.Duration
	// Registerer receives the control plane's metrics; nil drops them.
	Registerer prometheus.Registerer
	// Lease, when set, makes this one of several control planes: it
	// always listens to heartbeats but acts only while it holds the lease.
	// Nil means it is the only one.
	Lease Lease
	// QueueReplicas is the copies of a request queue it re-creates.
	QueueReplicas int
	// Now is the clock; nil means time.Now. Tests drive it.
	Now func() time.Time
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
	// changed is signalled when the registry says deployments changed.
	changed chan struct{}

	mu       sync.Mutex
	beats    map[string]runnerState         // runner ID → last heartbeat
	readyAt  map[string]time.Time           // runner ID → when it was first seen ready
	failures map[string]failure             // deployment ID → runners failing to start
	started  map[string]time.Time           // runner ID → when the control plane started it
	deps     map[string]registry.Deployment // by ID, as last read, for pokes and billing
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
	// lastRequest is, by deployment ID, the latest request its runners
	// reported serving; keep_warm counts from it.
	lastRequest map[string]time.Time
	// lastPoke is when each deployment was last poked, for pokeRecheck.
	lastPoke map[string]time.Time
	// sched says which deployments are due; see schedule.go.
	sched schedule

	// Only the Run goroutine touches the rest.
	//
	// sweptQueues is when orphan queues were last looked for.
	sweptQueues time.Time
	// depsRead is when the deployment list was last read.
	depsRead time.Time
	// actedLast is whether the last tick acted (held the lease): a tick
	// that acts after one that did not reconciles every deployment.
	actedLast bool
	// runnerDep is, by runner ID, the deployment of each runner the
	// driver listed last tick: one missing now has ended.
	runnerDep map[string]string
	// gauges are the runner gauge's series set last tick.
	gauges map[[2]string]bool
	// subs are the heartbeat and poke subscriptions, dropped counts the
	// messages they had dropped, and heard the start of the connection's
	// unbroken stretch, all as of the last tick: see lostEvents.
	subs    []*nats.Subscription
	dropped int
	heard   time.Time
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
	if cfg.SweepEvery <= 0 {
		cfg.SweepEvery = 30 * time.Second
	}
	if cfg.RestSweepEvery <= 0 {
		cfg.RestSweepEvery = 5 * time.Minute
	}
	if cfg.DeadAfter <= 0 {
		cfg.DeadAfter = 10 * time.Second
	}
	if cfg.StartTimeout <= 0 {
		cfg.StartTimeout = 60 * time.Second
	}
	if cfg.ScaleUpAge == 0 {
		cfg.ScaleUpAge = 2 * time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
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
		changed:  make(chan struct{}, 1),
		hearing:  natsconn.NewUptime(cfg.NATS),
		beats:    map[string]runnerState{},
		readyAt:  map[string]time.Time{},
		failures: map[string]failure{},
		started:  map[string]time.Time{},
		deps:     map[string]registry.Deployment{},
		deleted:  map[string]registry.Deployment{},
		metrics:  newMetrics(cfg.Registerer),

		pokedAt:     map[string]time.Time{},
		coldStarts:  map[string]*coldStart{},
		lastRequest: map[string]time.Time{},
		lastPoke:    map[string]time.Time{},
		sched:       newSchedule(),
		leading:     cfg.Lease == nil,
		runnerDep:   map[string]string{},
		gauges:      map[[2]string]bool{},
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
		cp.onPoke(wire.WorkDeployment(m.Subject)) // the deployment's ID
	})
	if err != nil {
		return err
	}
	defer pokeSub.Unsubscribe()
	cp.subs = []*nats.Subscription{hbSub, pokeSub}
	watching := make(chan struct{})
	if src, ok := cp.cfg.Registry.(changeSource); ok {
		go func() {
			defer close(watching)
			cp.watchChanges(ctx, src)
		}()
	} else {
		close(watching)
	}
	defer func() { <-watching }()

	tick := time.NewTicker(cp.cfg.Tick)
	defer tick.Stop()
	cp.step(ctx)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
			cp.step(ctx)
		case name := <-cp.pokes:
			cp.servePokes(ctx, name)
		}
	}
}

// servePokes acts on the pokes waiting (and first, if not ""): every
// queued request pokes, so all pending ones are taken at once and each
// deployment acted on once. It returns the deployments acted on.
func (cp *ControlPlane) servePokes(ctx context.Context, first string) map[string]bool {
	names := map[string]bool{}
	if first != "" {
		names[first] = true
	}
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
	return names
}

func (cp *ControlPlane) now() time.Time { return cp.cfg.Now() }

// onPoke notes that work was queued for a deployment (by ID).
func (cp *ControlPlane) onPoke(id string) {
	now := cp.now()
	cp.mu.Lock()
	if _, ok := cp.pokedAt[id]; !ok {
		cp.pokedAt[id] = now
	}
	cp.lastPoke[id] = now
	cp.sched.due(id, now)
	cp.mu.Unlock()
	select {
	case cp.pokes <- id:
	default: // a full channel means a reconcile is coming anyway
	}
}

func (cp *ControlPlane) onHeartbeat(m *nats.Msg) {
	var hb wire.Heartbeat
	if err := json.Unmarshal(m.Data, &hb); err != nil {
		return
	}
	now := cp.now()
	cp.mu.Lock()
	defer cp.mu.Unlock()
	cp.observeColdStart(hb, now)
	if hb.LastRequest.After(cp.lastRequest[hb.DeploymentID]) {
		cp.lastRequest[hb.DeploymentID] = hb.LastRequest
	}
	prev, known := cp.beats[hb.RunnerID]
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
		// Its work may need another runner, or a backoff starts.
		cp.sched.due(hb.DeploymentID, now)
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
	// A heartbeat that changes nothing the plan looks at is not an
	// event: the plan already asked to be woken by the runner's silence
	// deadline or idle timeout. Runners beat every second; deciding on
	// each would cost a queue lookup per runner per second.
	if !known || prev.hb.Phase != hb.Phase || prev.hb.InFlight != hb.InFlight || prev.hb.Slots != hb.Slots || prev.hb.Artifact != hb.Artifact {
		cp.sched.due(hb.DeploymentID, now)
	}
}

// step is one tick: it refreshes the deployment list if it changed,
// reads the driver's runners, and reconciles what is due.
func (cp *ControlPlane) step(ctx context.Context) {
	// Checked at every tick before acting: a control plane that lost
	// its lease stops at once.
	if !cp.lead(ctx) {
		cp.actedLast = false
		return
	}
	now := cp.now()
	runners, err := cp.cfg.Driver.Runners(ctx)
	if err != nil {
		cp.log.Error("listing runners", "err", err)
		return
	}
	byDep := map[string][]RunnerRef{}
	for _, r := range runners {
		byDep[r.DeploymentID] = append(byDep[r.DeploymentID], r)
	}
	// A control plane that starts acting (at start, or on taking the
	// lease over) looks at every deployment at once: pokes that arrived
	// while it did not act were not acted on.
	everything := !cp.actedLast || cp.lostEvents(now)
	if !cp.refreshDeployments(ctx, now, everything, byDep) {
		return
	}
	cp.actedLast = true
	cp.noticeEnded(runners, now)
	cp.stopStrays(ctx, byDep)

	cp.mu.Lock()
	var ids, swept []string
	if everything {
		ids = cp.sched.all()
		cp.sched.takeDue(now) // all of them are looked at now
	} else {
		ids = cp.sched.takeDue(now)
		k := int(cp.cfg.RestSweepEvery / cp.cfg.SweepEvery)
		swept = cp.sched.sweep(cp.cfg.Tick, cp.cfg.SweepEvery, func(id string, pass int) bool {
			atRest := len(byDep[id]) == 0 && cp.deps[id].MinRunners == 0
			return !atRest || restPass(id, pass, k)
		})
	}
	deps := make([]registry.Deployment, 0, len(ids)+len(swept))
	seen := make(map[string]bool, len(ids)+len(swept))
	for _, id := range ids {
		if d, ok := cp.deps[id]; ok && !seen[id] {
			seen[id] = true
			deps = append(deps, d)
		}
	}
	for _, id := range swept {
		if d, ok := cp.deps[id]; ok && !seen[id] {
			seen[id] = true
			deps = append(deps, d)
		}
	}
	cp.mu.Unlock()
	// A cold start does not wait for the sweep: its reconciles are a
	// queue lookup each, one after another (33 a tick with 10,000
	// deployments at rest), and a poke that waited for all of them made
	// the first request to one of 10,000 deployments 6–11 % slower than
	// to one of a few (cmd/infer BenchmarkIdleProcess). Pokes are served
	// between reconciles; a deployment served so is not reconciled again
	// this tick with the runners as they were before it.
	served := map[string]bool{}
	for _, d := range deps {
		for id := range cp.servePokes(ctx, "") {
			served[id] = true
		}
		if !served[d.ID] {
			cp.reconcile(ctx, d, byDep[d.ID], now)
		}
	}
	if len(served) > 0 {
		if runners, err = cp.cfg.Driver.Runners(ctx); err != nil {
			cp.log.Error("listing runners", "err", err)
			return
		}
	}
	cp.forgetGone(runners, now)
	cp.countPhases(runners)
	cp.sweepQueues(ctx, runners, now)
}

// lostEvents reports whether pokes or heartbeats may have been lost since
// the last tick: the NATS connection broke (what was published meanwhile
// was not delivered to this control plane) or a subscription dropped
// messages (a slow consumer). Then every deployment is looked at.
func (cp *ControlPlane) lostEvents(now time.Time) bool {
	lost := false
	if cp.cfg.NATS.Status() == nats.CONNECTED {
		if h := cp.hearing.Since(now); !h.Equal(cp.heard) {
			lost = !cp.heard.IsZero()
			cp.heard = h
		}
	}
	dropped := 0
	for _, sub := range cp.subs {
		if n, err := sub.Dropped(); err == nil {
			dropped += n
		}
	}
	if dropped > cp.dropped {
		cp.log.Warn("pokes or heartbeats were dropped (slow consumer); looking at every deployment", "dropped", dropped-cp.dropped)
		lost = true
	}
	cp.dropped = dropped
	if lost {
		cp.log.Info("events may have been lost; looking at every deployment")
	}
	return lost
}

// refreshDeployments reads the deployment list when it may have changed
// (the registry said so, or it has no way to say so), when everything is
// to be looked at, and once every SweepEvery in case a change
// notification was lost. Deployments that are new or changed are due at
// once. It reports false when the list could not be read.
func (cp *ControlPlane) refreshDeployments(ctx context.Context, now time.Time, everything bool, byDep map[string][]RunnerRef) bool {
	_, listens := cp.cfg.Registry.(changeSource)
	changed := false
	select {
	case <-cp.changed:
		changed = true
	default:
	}
	if listens && !changed && !everything && now.Sub(cp.depsRead) < cp.cfg.SweepEvery {
		cp.forgetDeleted(byDep)
		return true
	}
	deps, err := cp.cfg.Registry.ListDeployments(ctx, "")
	if err != nil {
		cp.log.Error("listing deployments", "err", err)
		if changed {
			cp.signalChanged() // read it next tick
		}
		return false
	}
	cp.depsRead = now
	known := make(map[string]registry.Deployment, len(deps))
	for _, d := range deps {
		known[d.ID] = d
	}
	cp.mu.Lock()
	for id, d := range known {
		if old, ok := cp.deps[id]; !ok || changedDeployment(old, d) {
			cp.sched.due(id, now)
		}
		if _, ok := cp.deps[id]; !ok {
			cp.metrics.runners.WithLabelValues(d.Name, string(wire.PhaseReady)).Set(0)
		}
	}
	// A deleted deployment is remembered while it has runners, so that
	// their lifetimes are billed to it (its tenant, at its price) and
	// never to a later deployment of the same name.
	for id, d := range cp.deps {
		if _, ok := known[id]; !ok {
			if len(byDep[id]) > 0 {
				cp.deleted[id] = d
			}
			cp.metrics.runners.DeleteLabelValues(d.Name, string(wire.PhaseReady))
			cp.sched.forget(id)
		}
	}
	cp.deps = known
	cp.sched.setAll(known)
	cp.mu.Unlock()
	cp.forgetDeleted(byDep)
	return true
}

// forgetDeleted drops deleted deployments whose runners are all gone.
func (cp *ControlPlane) forgetDeleted(byDep map[string][]RunnerRef) {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	for id := range cp.deleted {
		if _, live := cp.deps[id]; live || len(byDep[id]) == 0 {
			delete(cp.deleted, id)
		}
	}
}

// stopStrays drains runners of deleted deployments (they stop by
// themselves too once their queue is deleted) and runners that serve no
// deployment ID (started before queues were keyed by ID).
func (cp *ControlPlane) stopStrays(ctx context.Context, byDep map[string][]RunnerRef) {
	for id, rs := range byDep {
		cp.mu.Lock()
		_, ok := cp.deps[id]
		cp.mu.Unlock()
		if ok {
			continue
		}
		for _, r := range rs {
			if !r.Stopping {
				cp.log.Info("stopping runner of a deleted deployment", "deployment", r.Deployment, "deployment_id", id, "runner", r.ID)
				cp.cfg.Driver.Stop(ctx, r.ID)
			}
		}
	}
}

// noticeEnded makes the deployment of every runner the driver no longer
// lists due: its work may need another runner.
func (cp *ControlPlane) noticeEnded(runners []RunnerRef, now time.Time) {
	current := make(map[string]string, len(runners))
	for _, r := range runners {
		current[r.ID] = r.DeploymentID
	}
	cp.mu.Lock()
	for id, dep := range cp.runnerDep {
		if _, ok := current[id]; !ok {
			cp.sched.due(dep, now)
		}
	}
	cp.mu.Unlock()
	cp.runnerDep = current
}

// countPhases sets the runners gauge from the driver's list and the
// runners' last heartbeats. Only series of deployments with runners
// change per tick; every deployment's ready series is set to 0 when it is
// first read (refreshDeployments).
func (cp *ControlPlane) countPhases(runners []RunnerRef) {
	counts := map[[2]string]int{}
	cp.mu.Lock()
	for _, r := range runners {
		phase := wire.PhaseStarting
		if st, ok := cp.beats[r.ID]; ok {
			phase = st.hb.Phase
		}
		if r.Stopping {
			phase = wire.PhaseDraining
		}
		counts[[2]string{r.Deployment, string(phase)}]++
	}
	cp.mu.Unlock()
	for key := range cp.gauges {
		if _, ok := counts[key]; !ok {
			if key[1] == string(wire.PhaseReady) {
				cp.metrics.runners.WithLabelValues(key[0], key[1]).Set(0)
			} else {
				cp.metrics.runners.DeleteLabelValues(key[0], key[1])
			}
		}
	}
	gauges := make(map[[2]string]bool, len(counts))
	for key, n := range counts {
		cp.metrics.runners.WithLabelValues(key[0], key[1]).Set(float64(n))
		gauges[key] = true
	}
	cp.gauges = gauges
}

// forgetGone drops heartbeat state of runners the driver no longer has.
func (cp *ControlPlane) forgetGone(runners []RunnerRef, now time.Time) {
	alive := make(map[string]bool, len(runners))
	for _, r := range runners {
		alive[r.ID] = true
	}
	cp.mu.Lock()
	defer cp.mu.Unlock()
	for id, st := range cp.beats {
		if !alive[id] && now.Sub(st.seen) > cp.cfg.DeadAfter {
			cp.diedStarting(st.hb)
			cp.runnerEnded(st.hb, st.seen)
			delete(cp.beats, id)
			delete(cp.readyAt, id)
		}
	}
	for id, t := range cp.started {
		if !alive[id] && now.Sub(t) > cp.cfg.StartTimeout {
			delete(cp.started, id)
		}
	}
	for id, cs := range cp.coldStarts {
		if !alive[id] && now.Sub(cs.called) > cp.cfg.StartTimeout {
			delete(cp.coldStarts, id)
		}
	}
	// keep_warm's last request matters only while the deployment has a
	// runner to keep.
	has := map[string]bool{}
	for _, r := range runners {
		has[r.DeploymentID] = true
	}
	for id := range cp.lastRequest {
		if !has[id] {
			delete(cp.lastRequest, id)
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
// runner. A deployment that has one is left to the next tick (the poke
// made it due): pokes arrive with every request, and the request path
// must not cost a Postgres query each.
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
		// Deployed since the list was read.
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
		if ok {
			cp.signalChanged() // the list is stale: read it at the next tick
		}
	}
	if ok && cp.lead(ctx) {
		cp.reconcile(ctx, d, mine, cp.now())
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

// reconcile gathers one deployment's PlanInput, plans, and carries the
// Decision out.
func (cp *ControlPlane) reconcile(ctx context.Context, d registry.Deployment, runners []RunnerRef, now time.Time) {
	log := cp.log.With("deployment", d.Name, "deployment_id", d.ID)
	depth, err := queue.GetDepth(ctx, cp.js, d.ID)
	// A deployment has no queue until its first request (or its first
	// runner, below): an empty queue, not one to create. Creating them
	// here would give every idle deployment a stream again (~84 KB of
	// NATS heap each, docs/architecture.md "Queue layout").
	noQueue := errors.Is(err, jetstream.ErrStreamNotFound) || errors.Is(err, jetstream.ErrConsumerNotFound)
	if noQueue {
		depth, err = queue.Depth{}, nil
	}
	if err != nil {
		log.Error("reading queue depth", "err", err)
		cp.wakeAt(d.ID, now.Add(cp.cfg.Tick)) // try again
		return
	}
	in := cp.planInput(d, runners, depth, now)
	if in.Limits.ScaleUpAge > 0 && depth.Queued > 0 && countServing(runners) < max(d.MaxRunners, d.MinRunners) {
		// Only looked up when it could matter: it costs two JetStream
		// round trips.
		if t, err := oldestQueued(ctx, cp.js, d.ID); err != nil {
			log.Warn("reading the age of the oldest queued request", "err", err)
		} else {
			in.OldestQueued = t
		}
	}
	dec := Plan(in, now)

	if dec.Start > 0 {
		// The tenant's runner quota (quota.go) is the one input Plan does
		// not have: it spans the tenant's other deployments.
		if allowed := cp.capByTenant(ctx, d, dec.Live, dec.Live+dec.Start) - dec.Live; allowed < dec.Start {
			dec.Start = max(0, allowed)
			// Nothing of this deployment's own says when a runner of
			// another one stops: look again.
			cp.wakeAt(d.ID, now.Add(cp.cfg.Tick))
		}
	}
	for _, a := range dec.Drain {
		log.Info("stopping runner: "+a.Reason, "runner", a.ID, "runners", dec.Live, "want", dec.Want, "idle_timeout", d.IdleTimeout)
		cp.cfg.Driver.Stop(ctx, a.ID)
	}
	for _, a := range dec.Kill {
		log.Warn("killing runner: "+a.Reason, "runner", a.ID)
		cp.cfg.Driver.Kill(ctx, a.ID)
	}
	if dec.Start > 0 && !cp.lead(ctx) {
		// Lost the lease since the tick began: starting a runner now
		// could duplicate the new leader's.
		return
	}
	if dec.Start > 0 && noQueue {
		// A runner (min_runners, keep_warm) would otherwise make the
		// queue itself, without the deployment's limits.
		if _, err := queue.Ensure(ctx, cp.js, d.ID, queue.DeploymentLimits(d.QueueLimit, d.QueueTimeout, cp.cfg.QueueReplicas)); err != nil {
			log.Error("creating queue", "err", err)
			cp.wakeAt(d.ID, now.Add(cp.cfg.Tick))
			return
		}
	}
	if dec.Start > 0 {
		if err := cp.start(ctx, d, dec, depth, now); err != nil {
			if IsNoCapacity(err) {
				// No GPU has room now: not a failure (no backoff), the
				// driver tells the waiting clients why; look again.
				log.Info("waiting for capacity to start a runner", "err", err)
			} else {
				log.Error("starting runner", "err", err)
			}
			cp.wakeAt(d.ID, now.Add(cp.cfg.Tick))
			return
		}
	}
	if !dec.NextWake.IsZero() {
		cp.wakeAt(d.ID, dec.NextWake)
	}
}

// start starts dec.Start runners of d.
func (cp *ControlPlane) start(ctx context.Context, d registry.Deployment, dec Decision, depth queue.Depth, now time.Time) error {
	a, err := cp.cfg.Registry.GetArtifact(ctx, d.ArtifactSHA256)
	if err != nil {
		return fmt.Errorf("looking up artifact: %w", err)
	}
	for range dec.Start {
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
		cp.log.Info("starting runner", "deployment", d.Name, "deployment_id", d.ID, "runner", spec.ID, "why", dec.StartReason,
			"queued", depth.Queued, "in_flight", depth.InFlight, "runners", dec.Live, "want", dec.Want)
		cp.mu.Lock()
		cp.started[spec.ID] = now
		cp.noteStart(spec.ID, d, now, depth.Total() > 0)
		cp.mu.Unlock()
		if err := cp.cfg.Driver.Start(ctx, spec); err != nil {
			return err
		}
		cp.metrics.starts.WithLabelValues(d.Name).Inc()
	}
	return nil
}

// planInput gathers what Plan needs from the control plane's state.
func (cp *ControlPlane) planInput(d registry.Deployment, runners []RunnerRef, depth queue.Depth, now time.Time) PlanInput {
	in := PlanInput{
		Deployment: d,
		Depth:      depth,
		Hearing:    cp.hearing.Since(now),
		Limits: PlanLimits{
			DeadAfter:    cp.cfg.DeadAfter,
			StartTimeout: cp.cfg.StartTimeout,
			ScaleUpAge:   max(0, cp.cfg.ScaleUpAge),
		},
	}
	cp.mu.Lock()
	defer cp.mu.Unlock()
	in.Leading = cp.leading
	f := cp.failures[d.ID]
	in.Failures, in.LastFailure = f.count, f.last
	in.LastRequest = cp.lastRequest[d.ID]
	if t, ok := cp.lastPoke[d.ID]; ok {
		if now.Sub(t) < pokeRecheck {
			in.LastPoke = t
		} else {
			delete(cp.lastPoke, d.ID)
		}
	}
	for _, r := range runners {
		rs := RunnerStatus{RunnerRef: r}
		if st, ok := cp.beats[r.ID]; ok {
			rs.Heard, rs.Seen = true, st.seen
			rs.Phase, rs.Slots, rs.InFlight, rs.LastRequest = st.hb.Phase, st.hb.Slots, st.hb.InFlight, st.hb.LastRequest
		}
		rs.ReadyAt = cp.readyAt[r.ID]
		in.Runners = append(in.Runners, rs)
	}
	return in
}

// wakeAt asks for a deployment to be reconciled at t.
func (cp *ControlPlane) wakeAt(id string, t time.Time) {
	cp.mu.Lock()
	cp.sched.due(id, t)
	cp.mu.Unlock()
}

// signalChanged says the deployment list needs reading.
func (cp *ControlPlane) signalChanged() {
	select {
	case cp.changed <- struct{}{}:
	default:
	}
}

// countServing counts the runners not draining.
func countServing(runners []RunnerRef) int {
	n := 0
	for _, r := range runners {
		if !r.Stopping {
			n++
		}
	}
	return n
}

// changedDeployment tells whether a deployment read again differs from
// what was read before.
func changedDeployment(old, d registry.Deployment) bool {
	if !old.UpdatedAt.Equal(d.UpdatedAt) {
		return true
	}
	old.CreatedAt, old.UpdatedAt, d.CreatedAt, d.UpdatedAt = time.Time{}, time.Time{}, time.Time{}, time.Time{}
	return !reflect.DeepEqual(old, d)
}
