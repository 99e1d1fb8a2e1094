package activator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// The sweeper finishes async jobs that no event will ever finish: a job
// queued for a deployment that got no runner before its queue dropped it,
// or one whose runner died after its queue dropped it (see settle). GET
// already shows such a job failed; the sweeper stores that, so the record
// stops saying "queued" or "running", and calls the job's webhook.
//
// Every activator sweeps. Each watches the job bucket to know which jobs
// are queued, without reading the whole bucket every period; the record
// is then changed with a compare-and-swap write, so of several activators
// sweeping the same job only the one whose write wins calls the webhook.

// defaultWebhookClaim is how long a sweeping activator has to deliver a
// webhook before another takes it over: more than the retries take
// (webhookAttempts posts of up to 30 s, 15 s of backoff between them).
const defaultWebhookClaim = 3 * time.Minute

// defaultAsyncSweep is how often expired queued jobs are looked for.
// Queue timeouts are seconds to hours; a few seconds late is on time.
const defaultAsyncSweep = 5 * time.Second

// sweep runs the sweeper until the jobs are closed.
func (a *asyncJobs) sweep(every time.Duration) {
	defer a.wg.Done()
	for {
		err := a.sweepWatching(every)
		if a.ctx.Err() != nil {
			return
		}
		a.s.log.Warn("async job sweeper lost its watch of the job records; restarting it", "err", err)
		select {
		case <-time.After(time.Second):
		case <-a.ctx.Done():
			return
		}
	}
}

// sweepWatching keeps the queued and running jobs, from a watch of the
// bucket, and settles those past their drop time every period. It returns
// when the watch ends.
func (a *asyncJobs) sweepWatching(every time.Duration) error {
	w, err := a.kv.WatchAll(a.ctx)
	if err != nil {
		return fmt.Errorf("watching async job records: %w", err)
	}
	defer w.Stop()
	pending := map[string]time.Time{} // job ID → when its queue drops it (or its deadline, for one not queued yet)
	hooks := map[string]time.Time{}   // job ID → when its webhook was claimed
	held := map[string]time.Time{}    // job ID, not queued yet → when its holder's lease lapses
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-a.ctx.Done():
			return nil
		case e, ok := <-w.Updates():
			if !ok {
				return errors.New("the watch ended")
			}
			if e == nil {
				continue // the initial values are all in
			}
			var rec asyncRecord
			ok = e.Operation() == jetstream.KeyValuePut && json.Unmarshal(e.Value(), &rec) == nil
			delete(pending, e.Key())
			delete(hooks, e.Key())
			delete(held, e.Key())
			if ok {
				a.observe(e.Key(), &rec)
			} else {
				a.observe(e.Key(), nil)
			}
			switch {
			case ok && !rec.terminal() && !rec.DroppedAt.IsZero():
				due := rec.DroppedAt
				if rec.Unpublished && !rec.Deadline.IsZero() && rec.Deadline.Before(due) {
					due = rec.Deadline
				}
				pending[e.Key()] = due
				if rec.Unpublished && rec.Status == asyncQueued {
					held[e.Key()] = rec.HeldUntil
				}
			case ok && rec.Swept && rec.Webhook != "" && !rec.WebhookSent:
				hooks[e.Key()] = rec.WebhookClaimed
			}
		case now := <-tick.C:
			for id, dropped := range pending {
				if now.After(dropped) && a.settleStored(id, now) {
					delete(pending, id)
				}
			}
			for id, until := range held {
				if now.After(until) && a.takeOver(id, now) {
					delete(held, id)
				}
			}
			for id, claimed := range hooks {
				if now.Sub(claimed) > a.webhookClaim && a.reclaimWebhook(id, now) {
					delete(hooks, id)
				}
			}
		}
	}
}

// settleStored settles a job's stored record (see settle) and calls its
// webhook. It reports whether the job needs no more sweeping; a job
// running on a live runner past its drop time is checked again at the
// next sweep, since that runner may still die.
func (a *asyncJobs) settleStored(id string, now time.Time) bool {
	ctx, cancel := context.WithTimeout(a.ctx, 10*time.Second)
	defer cancel()
	outcome := ""
	rec, err := a.update(ctx, id, func(r *asyncRecord) bool {
		// Decided afresh on every try: after a lost compare-and-swap the
		// record may be running, finished, or settled by someone else.
		outcome = a.settle(r, now)
		return outcome != ""
	})
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return true // the record itself expired
	}
	if err != nil {
		a.s.log.Warn("failing an async job nothing will finish; retrying at the next sweep", "request", id, "err", err)
		return false
	}
	if outcome == "" {
		return rec.terminal()
	}
	// A job no runner took gives its budget hold back; one whose runner
	// was lost keeps it until that runner's usage record, if any, arrives.
	a.swept(rec, outcome, outcome != "timeout")
	return true
}

// swept finishes what failing a job in its stored record leaves to the
// activator whose write failed it: metrics, the budget hold, the webhook.
func (a *asyncJobs) swept(rec asyncRecord, outcome string, ran bool) {
	a.s.metrics.requests.WithLabelValues(rec.Model, outcome).Inc()
	a.s.log.Info("async job failed", "request", rec.ID, "deployment", rec.Model, "reason", outcome, "runner", rec.Runner)
	a.s.endHold(rec.ID, rec.KeyBudget != nil, nil, rec.Prices, ran)
	if rec.Webhook != "" && !rec.WebhookSent {
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			a.deliver(nil, rec)
		}()
	}
}

// reclaimWebhook takes over the webhook of a job the sweeper failed when
// the activator that claimed it has not delivered it in time (it died, or
// was stopped mid-retries), and delivers it. Delivery is at least once: a
// claimant that was only slow may deliver too. It reports whether the job
// needs no more watching.
func (a *asyncJobs) reclaimWebhook(id string, now time.Time) bool {
	ctx, cancel := context.WithTimeout(a.ctx, 10*time.Second)
	defer cancel()
	won := false
	rec, err := a.update(ctx, id, func(r *asyncRecord) bool {
		won = r.Swept && r.Webhook != "" && !r.WebhookSent && now.Sub(r.WebhookClaimed) > a.webhookClaim
		if won {
			r.WebhookClaimed = now
		}
		return won
	})
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		return true
	case err != nil:
		a.s.log.Warn("taking over an async job's webhook; retrying at the next sweep", "request", id, "err", err)
		return false
	case !won:
		return rec.WebhookSent
	}
	a.s.log.Info("delivering the webhook of a failed async job another activator did not deliver", "request", id)
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		a.deliver(nil, rec)
	}()
	return true
}
