package activator

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/infer-run/infer/internal/queue"
	"github.com/infer-run/infer/registry"
)

// Async jobs in the fair gate. An async job is shared fairly between keys
// as a sync request is (fair.go): it takes a place in its deployment's gate
// under its key and share before it is published to the queue, and gives
// it back when it ends (its result folded, failed, or expired). Unlike a
// sync request it has no client connection to wait on, so it must survive
// the activator that holds it:
//
//   - The job's record is stored first, with the encoded job, as
//     unpublished and held by this activator until HeldUntil; the client
//     gets its 202 then, and the record says "queued" throughout.
//   - While the job waits in the gate, its holder renews HeldUntil every
//     third of the lease (Config.AsyncLease, 30 s). Once the job is in the
//     queue the record says so and the lease no longer matters: JetStream
//     keeps the job.
//   - Every activator's sweep watches the records (async_sweep.go); a
//     record still unpublished after HeldUntil belongs to an activator that
//     died (or lost NATS), and the first sweeper whose compare-and-swap
//     write makes it the holder waits in its own gate and publishes it.
//   - A job is published under its ID as JetStream message ID, so two
//     activators publishing the same job (one that lost its lease while
//     publishing) store it once within the queue's duplicate window
//     (2 minutes); the holder also reads the record just before publishing
//     and leaves a job someone else published or took over.
//   - A job still waiting at its deadline (the deployment's queue timeout)
//     fails with queue_timeout, as a sync request would; its webhook is
//     called once, by whichever activator's write failed it.
//
// Where a job ends, the holding activator learns from its watch of the
// records (every activator sees every record change), so a result folded
// by another activator frees the place too.

// defaultAsyncLease is Config.AsyncLease's default: renewed every 10 s,
// a write per waiting job, so 200 waiting jobs cost 20 small writes a
// second; a dead activator's jobs move within 30 s plus a sweep.
const defaultAsyncLease = 30 * time.Second

// heldJob is an async job this activator holds in its fair gate.
type heldJob struct {
	id       string
	dep      registry.Deployment
	key      string
	share    int
	deadline time.Time
	data     []byte
}

// register makes the job this activator's to hold: ctx is done once the
// job ended (seen by the watch), lose ends the holding early, and done
// forgets the job. It comes before anything that may end the job, so its
// end is never missed.
func (a *asyncJobs) register(id string) (ctx context.Context, lose context.CancelFunc, done func()) {
	ctx, lose = context.WithCancel(a.ctx)
	a.heldMu.Lock()
	a.held[id] = lose
	a.heldMu.Unlock()
	return ctx, lose, func() {
		lose()
		a.heldMu.Lock()
		delete(a.held, id)
		a.heldMu.Unlock()
	}
}

// holds reports whether this activator holds the job.
func (a *asyncJobs) holds(id string) bool {
	a.heldMu.Lock()
	defer a.heldMu.Unlock()
	return a.held[id] != nil
}

// observe is told each record change the sweeper's watch sees (rec nil:
// the record was deleted): a job that ended gives its place back.
func (a *asyncJobs) observe(id string, rec *asyncRecord) {
	if rec != nil && !rec.terminal() {
		return
	}
	a.heldMu.Lock()
	lose := a.held[id]
	a.heldMu.Unlock()
	if lose != nil {
		lose()
	}
}

// run holds a job in the gate until it ends: it waits for a place
// (unless release says it has one), publishes the job (unless published)
// and then keeps the place until ctx is done.
func (a *asyncJobs) run(ctx context.Context, lose context.CancelFunc, done func(), j heldJob, release func(), t *fairTicket, published bool) {
	defer a.wg.Done()
	defer done()
	defer func() {
		if !published && a.ctx.Err() != nil {
			a.handOff(j.id)
		}
	}()
	stopRenewing := func() {}
	if !published {
		renewing, stop := context.WithCancel(ctx)
		renewed := make(chan struct{})
		go func() {
			defer close(renewed)
			a.renew(renewing, j.id, lose)
		}()
		stopRenewing = sync.OnceFunc(func() { stop(); <-renewed })
		defer stopRenewing()
	}
	if release == nil {
		var err error
		release, err = a.s.fair.await(ctx, t, j.deadline, nil, nil)
		if err != nil {
			if ctx.Err() == nil {
				// Its deadline passed while it waited.
				a.settleStored(j.id, time.Now().Add(time.Millisecond))
			}
			return
		}
	}
	defer release()
	if !published {
		published = a.publish(ctx, j)
		stopRenewing() // queued: JetStream keeps it now
		if !published {
			return
		}
	}
	<-ctx.Done()
}

// publish queues a job this activator holds and records that it did. It
// reports whether the job is in the queue.
func (a *asyncJobs) publish(ctx context.Context, j heldJob) bool {
	rec, _, err := a.get(ctx, j.id)
	switch {
	case err != nil:
		if ctx.Err() == nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
			a.s.log.Warn("reading an async job before queueing it; its lease lapses and an activator queues it", "request", j.id, "err", err)
		}
		return false
	case !rec.Unpublished:
		return !rec.terminal() // queued by another activator: the place is kept for it
	case rec.Holder != a.s.id || rec.terminal():
		return false
	}
	if _, err := a.s.enqueue(ctx, j.dep, j.id, j.data, j.deadline); err != nil {
		if ctx.Err() != nil {
			return false // stopping, or taken over: the holder queues it
		}
		ae := &apiError{}
		if !errors.As(err, &ae) {
			ae = errStatus(http.StatusServiceUnavailable, "server_error", "queue_unavailable", "could not queue the job: %v", err)
		}
		a.failStored(j.id, ae)
		return false
	}
	a.s.metrics.queued.WithLabelValues(j.dep.Name).Inc()
	if err := a.markPublished(j.id, j.dep, time.Now()); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		// The lease lapses and another activator queues it again, stored
		// once (same message ID).
		a.s.log.Warn("recording that an async job is queued", "request", j.id, "err", err)
	}
	return true
}

// markPublished records that the job is in its deployment's queue since
// at, which drops it at at plus the queue's MaxAge.
func (a *asyncJobs) markPublished(id string, dep registry.Deployment, at time.Time) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(a.ctx), 10*time.Second)
	defer cancel()
	_, err := a.update(ctx, id, func(r *asyncRecord) bool {
		if !r.Unpublished {
			return false
		}
		r.Unpublished, r.Job, r.Holder, r.HeldUntil = false, nil, "", time.Time{}
		r.DroppedAt = at.Add(queue.DeploymentLimits(dep.QueueLimit, dep.QueueTimeout, a.s.replicas).MaxAge)
		return true
	})
	return err
}

// renew keeps this activator's lease on an unpublished job until ctx is
// done, and calls lose if another activator took the job over (or its
// record is gone).
func (a *asyncJobs) renew(ctx context.Context, id string, lose context.CancelFunc) {
	tick := time.NewTicker(a.lease / 3)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		lost := false
		_, err := a.update(ctx, id, func(r *asyncRecord) bool {
			if r.terminal() || !r.Unpublished {
				return false
			}
			if lost = r.Holder != a.s.id; lost {
				return false
			}
			r.HeldUntil = time.Now().Add(a.lease)
			return true
		})
		if lost || errors.Is(err, jetstream.ErrKeyNotFound) {
			lose()
			return
		}
		if err != nil && ctx.Err() == nil {
			a.s.log.Warn("renewing the hold on an async job", "request", id, "err", err)
		}
	}
}

// takeOver makes this activator the holder of an unpublished job whose
// holder's lease lapsed, and queues it through this activator's gate. It
// reports whether the job needs no more looking at.
func (a *asyncJobs) takeOver(id string, now time.Time) bool {
	if a.holds(id) {
		return true
	}
	hctx, lose, done := a.register(id)
	ctx, cancel := context.WithTimeout(a.ctx, 10*time.Second)
	defer cancel()
	won := false
	rec, err := a.update(ctx, id, func(r *asyncRecord) bool {
		won = r.Status == asyncQueued && r.Unpublished && now.After(r.HeldUntil)
		if won {
			r.Holder, r.HeldUntil = a.s.id, now.Add(a.lease)
		}
		return won
	})
	if err != nil || !won {
		done()
		if err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
			a.s.log.Warn("taking over an async job another activator held; retrying at the next sweep", "request", id, "err", err)
			return false
		}
		return true
	}
	dep, err := a.s.reg.GetDeployment(ctx, rec.TenantID, rec.Model)
	switch {
	case errors.Is(err, registry.ErrNotFound) || (err == nil && dep.ID != rec.DeploymentID):
		done()
		e := errStatus(http.StatusNotFound, "invalid_request_error", "model_not_found", "deployment %s was deleted before the job was queued", rec.Model)
		e.Param = strp("model")
		a.failStored(id, e)
		return true
	case err != nil:
		// Left for the lease to lapse again: the registry may be back by then.
		done()
		a.s.log.Warn("looking up the deployment of an async job taken over", "request", id, "err", err)
		return true
	}
	a.s.log.Info("queueing an async job whose activator stopped holding it", "request", id, "deployment", rec.Model, "holder", rec.Holder)
	release, t, err := a.s.fair.enter(dep, rec.KeyID, rec.KeyShare)
	if err != nil {
		done()
		ae := &apiError{}
		if !errors.As(err, &ae) {
			ae = errStatus(http.StatusServiceUnavailable, "server_error", "", "%v", err)
		}
		a.failStored(id, ae)
		return true
	}
	j := heldJob{id: id, dep: dep, key: rec.KeyID, share: rec.KeyShare, deadline: rec.Deadline, data: rec.Job}
	a.wg.Add(1)
	go a.run(hctx, lose, done, j, release, t, false)
	return true
}

// failStored fails a job that is not yet queued with e (the queue refused
// it, or its deployment is gone) and calls its webhook.
func (a *asyncJobs) failStored(id string, e *apiError) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(a.ctx), 10*time.Second)
	defer cancel()
	now := time.Now()
	won := false
	rec, err := a.update(ctx, id, func(r *asyncRecord) bool {
		won = !r.terminal() && r.Unpublished
		if won {
			r.Status, r.FinishedAt, r.Swept, r.WebhookClaimed, r.Error, r.Job = asyncFailed, now.Unix(), true, now, e, nil
		}
		return won
	})
	if err != nil {
		if !errors.Is(err, jetstream.ErrKeyNotFound) {
			a.s.log.Warn("failing an async job that could not be queued", "request", id, "err", err)
		}
		return
	}
	if won {
		a.swept(rec, deref(e.Code), false)
	}
}

// handOff lets another activator take over, at its next sweep rather than
// once the lease lapses, a job this one holds unpublished as it shuts
// down. (A crashed activator hands nothing off: its leases lapse.)
func (a *asyncJobs) handOff(id string) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(a.ctx), 2*time.Second)
	defer cancel()
	_, err := a.update(ctx, id, func(r *asyncRecord) bool {
		if r.terminal() || !r.Unpublished || r.Holder != a.s.id {
			return false
		}
		r.HeldUntil = time.Time{}
		return true
	})
	if err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		a.s.log.Warn("handing an async job over at shutdown; it moves once its lease lapses", "request", id, "err", err)
	}
}
