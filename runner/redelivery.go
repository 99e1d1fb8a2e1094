package runner

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/infer-run/infer/internal/queue"
	"github.com/infer-run/infer/internal/wire"
)

// Job admission for redelivered jobs.
//
// JetStream hands a job to the next runner when its runner stops
// reporting progress for the ack wait. Most of the time that runner was
// frozen, cut off from NATS, or died of something else (its host, an OOM
// kill of a neighbour), and running the job again is right. But a request
// that makes llama.cpp abort kills every runner it reaches, each ack wait
// apart, and every other request on them, until its queue timeout. So a
// runner that takes a redelivered job records that it holds it (a hold,
// wire.Hold) and releases the record whenever it stops holding it in any
// way other than dying (releaseHold). The runner of the next delivery asks the holder
// left in the record whether it is there: NATS itself answers "no
// responders" for a runner whose process exited.
//
// A first redelivery runs as usual: nothing was recorded about the first
// delivery (recording every job would cost every request a JetStream
// round trip), and the runner it killed may have died of anything. A job
// whose recorded holder died is a suspect: it runs alone, with no other job
// beside it on its runner, so that no other request can be blamed for, or
// die of, what it does. A suspect whose runner dies while it runs alone
// is refused: two runners are known to have died holding it, the last one
// with nothing else running (and the first delivery's runner most likely
// did too). That takes four of the five deliveries the queue allows
// (queue.EnsureConsumer), leaving one for a frozen runner or a NATS
// outage on the way.

// holderState is what a later delivery learns of a job's recorded holder.
type holderState int

const (
	// holderNone: no hold was recorded, or its runner handed the job
	// back.
	holderNone holderState = iota
	// holderAlive: it answered (a frozen runner woke up, or it was cut
	// off from NATS for a while), or it is this runner.
	holderAlive
	// holderSilent: it did not answer in time. A frozen process, or a
	// host gone without closing its connections: no proof of a death.
	holderSilent
	// holderDead: nobody subscribes to its hold subject any more, so its
	// process exited without letting go of the job.
	holderDead
)

// admission is how a runner takes a job.
type admission struct {
	track  bool // a redelivered job: record the hold
	alone  bool // run it with no other job beside it
	refuse bool // fail it without running it
	deaths int  // the job's holders known to have died holding it
}

// admit decides how to take a job delivered for the delivered-th time,
// given the hold the previous deliveries left (nil if none) and what its
// holder answered.
func admit(delivered uint64, prev *wire.Hold, holder holderState) admission {
	if delivered <= 1 {
		return admission{}
	}
	a := admission{track: true}
	if prev == nil {
		return a
	}
	a.deaths = prev.Deaths
	if holder == holderDead {
		a.deaths++
		// Only a death while the job ran alone is the job's doing; one
		// while it waited for its turn, or ran beside others, may not be.
		a.refuse = prev.Alone
	}
	a.alone = a.deaths > 0
	return a
}

// errCrashedRunner is the error a refused job ends with. 422 rather than
// a 5xx: OpenAI's SDKs retry a 5xx by themselves, and each retry of this
// request would stop more runners.
func errCrashedRunner(a admission) *wire.Error {
	return &wire.Error{Status: 422, Code: "request_crashed_runner", Message: fmt.Sprintf(
		"this request stopped the runner processing it %d times, the last time with no other request beside it, and was not retried again; "+
			"the model runtime likely fails on it: change the request (its parameters or its prompt), or report it to the operator", a.deaths)}
}

// How a holder is asked whether it is still there: a NATS reconnect (after
// a server restart, every client reconnects within about 250 ms) leaves a
// live runner without its subscriptions for a moment, so "no responders"
// counts only when every one of holderProbes answers, holderProbeEvery
// apart, says so. Only a redelivered job whose holder is gone pays it.
const (
	holderProbes     = 4
	holderProbeEvery = 500 * time.Millisecond
	holderProbeWait  = time.Second
	// holdTimeout bounds each read and write of a hold: a job is not held
	// up by a slow bucket, only run without the record.
	holdTimeout = 2 * time.Second
)

// probeHolder asks the runner holding job id whether it is there.
func (r *Runner) probeHolder(ctx context.Context, holder, id string) holderState {
	if holder == r.cfg.ID {
		return holderAlive // this runner had it before (a NATS outage, a handed back job)
	}
	for i := range holderProbes {
		if i > 0 {
			select {
			case <-time.After(holderProbeEvery):
			case <-ctx.Done():
				return holderSilent
			}
		}
		pctx, cancel := context.WithTimeout(ctx, holderProbeWait)
		_, err := r.nc.RequestWithContext(pctx, wire.HoldSubject(holder), []byte(id))
		cancel()
		switch {
		case err == nil:
			return holderAlive
		case !errors.Is(err, nats.ErrNoResponders):
			return holderSilent
		}
	}
	return holderDead
}

// onHold answers whether this runner holds a job (wire.HoldSubject).
func (r *Runner) onHold(m *nats.Msg) {
	r.mu.Lock()
	_, ok := r.running[string(m.Data)]
	r.mu.Unlock()
	answer := wire.HoldFree
	if ok {
		answer = wire.HoldHeld
	}
	m.Respond([]byte(answer))
}

// admitJob decides how to take a job and, for a redelivered one, records
// this runner as its holder; rev is the revision of the record to release
// when the job ends (releaseHold; 0 if none). The bucket failing costs
// the job its record, never its run.
func (r *Runner) admitJob(ctx context.Context, id string, delivered uint64, log *slog.Logger) (a admission, rev uint64) {
	if delivered <= 1 || r.holds == nil {
		return admit(delivered, nil, holderNone), 0
	}
	var prev *wire.Hold
	var prevRev uint64
	gctx, cancel := context.WithTimeout(ctx, holdTimeout)
	e, err := r.holds.Get(gctx, id)
	cancel()
	switch {
	case err == nil:
		var h wire.Hold
		if json.Unmarshal(e.Value(), &h) == nil {
			prev, prevRev = &h, e.Revision()
		}
	case !errors.Is(err, jetstream.ErrKeyNotFound):
		log.Warn("reading the hold of a redelivered job", "err", err)
	}
	state := holderNone
	if prev != nil && prev.Runner != "" {
		state = r.probeHolder(ctx, prev.Runner, id)
	}
	a = admit(delivered, prev, state)
	if prev != nil && state == holderDead {
		log.Warn("the runner that last held this job died holding it", "holder", prev.Runner, "deaths", a.deaths, "alone", prev.Alone)
	}
	if a.refuse {
		// Acknowledged at once: its record goes with it.
		return a, prevRev
	}
	if !a.track {
		return a, 0
	}
	// Alone only once it runs alone (markAlone): a death while it waits
	// for its turn is not the job's doing.
	data, err := json.Marshal(wire.Hold{Runner: r.cfg.ID, Deaths: a.deaths})
	if err != nil {
		return a, 0
	}
	wctx, cancel := context.WithTimeout(ctx, holdTimeout)
	defer cancel()
	if prev != nil {
		rev, err = r.holds.Update(wctx, id, data, prevRev)
	} else {
		rev, err = r.holds.Create(wctx, id, data)
	}
	if err != nil {
		// Another runner holds it now (a frozen one woke up), or the
		// bucket is out of reach: run it without the record.
		log.Warn("recording the hold of a redelivered job", "err", err)
		return a, 0
	}
	return a, rev
}

// markAlone records that this runner now runs the job alone (see admit);
// it returns the hold's new revision.
func (r *Runner) markAlone(id string, a admission, rev uint64) uint64 {
	if rev == 0 {
		return 0
	}
	data, err := json.Marshal(wire.Hold{Runner: r.cfg.ID, Alone: true, Deaths: a.deaths})
	if err != nil {
		return rev
	}
	ctx, cancel := context.WithTimeout(context.Background(), holdTimeout)
	defer cancel()
	next, err := r.holds.Update(ctx, id, data, rev)
	if err != nil {
		r.log.Warn("recording that a job runs alone", "request", id, "err", err)
		return rev
	}
	return next
}

// releaseHold ends this runner's hold of a job, unless another runner
// recorded its own since: the record is deleted with an acknowledged job,
// and kept without a holder, with the deaths counted so far, for a job
// that will be delivered again (handed back by a runner that stops).
func (r *Runner) releaseHold(id string, rev uint64, a admission, acked bool) {
	if rev == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), holdTimeout)
	defer cancel()
	var err error
	if acked {
		err = r.holds.Delete(ctx, id, jetstream.LastRevision(rev))
	} else {
		var data []byte
		if data, err = json.Marshal(wire.Hold{Deaths: a.deaths}); err == nil {
			_, err = r.holds.Update(ctx, id, data, rev)
		}
	}
	if err != nil {
		r.log.Debug("releasing the hold of a job", "request", id, "err", err)
	}
}

// gate lets jobs run side by side, or a suspect job alone (see admit).
// A suspect waits for the jobs running to finish, and jobs taken after it
// wait for it: the other slots stay idle while it runs. Suspects are rare
// (a job whose holder died after it had been redelivered once), so every
// other job pays only a mutex.
type gate struct {
	mu      sync.Mutex
	running int           // jobs inside
	alone   bool          // the job inside runs alone
	queued  int           // suspects waiting to run alone
	opened  chan struct{} // closed when the gate may admit more; nil until someone waits
}

// enter waits until the job may run (alone, if so asked), calling progress
// every third of the ack wait meanwhile so that JetStream does not hand
// the waiting job to another runner. It fails only when ctx ends.
func (g *gate) enter(ctx context.Context, alone bool, progress func()) error {
	g.mu.Lock()
	if alone {
		g.queued++
	}
	var tick *time.Ticker
	for !g.admits(alone) {
		if g.opened == nil {
			g.opened = make(chan struct{})
		}
		opened := g.opened
		g.mu.Unlock()
		if tick == nil {
			tick = time.NewTicker(queue.AckWait / 3)
			defer tick.Stop()
		}
		select {
		case <-opened:
		case <-tick.C:
			progress()
		case <-ctx.Done():
			g.mu.Lock()
			if alone {
				g.queued--
				g.wake() // jobs behind it may go now
			}
			g.mu.Unlock()
			return ctx.Err()
		}
		g.mu.Lock()
	}
	if alone {
		g.queued--
		g.alone = true
	}
	g.running++
	g.mu.Unlock()
	return nil
}

func (g *gate) admits(alone bool) bool {
	switch {
	case g.alone:
		return false
	case alone:
		return g.running == 0
	default:
		return g.queued == 0
	}
}

// leave lets the next jobs in.
func (g *gate) leave(alone bool) {
	g.mu.Lock()
	g.running--
	if alone {
		g.alone = false
	}
	g.wake()
	g.mu.Unlock()
}

func (g *gate) wake() {
	if g.opened != nil {
		close(g.opened)
		g.opened = nil
	}
}
