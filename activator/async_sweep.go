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
// queued for a deployment that got no runner before its queue dropped it.
// GET already shows such a job failed; the sweeper stores that, so the
// record stops saying "queued", and calls the job's webhook.
//
// Every activator sweeps. Each watches the job bucket to know which jobs
// are queued, without reading the whole bucket every period; the record
// is then changed with a compare-and-swap write, so of several activators
// sweeping the same job only the one whose write wins calls the webhook.

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

// sweepWatching keeps the queued jobs, from a watch of the bucket, and
// expires those past their drop time every period. It returns when the
// watch ends.
func (a *asyncJobs) sweepWatching(every time.Duration) error {
	w, err := a.kv.WatchAll(a.ctx)
	if err != nil {
		return fmt.Errorf("watching async job records: %w", err)
	}
	defer w.Stop()
	queued := map[string]time.Time{} // job ID → when its queue drops it
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
			if e.Operation() == jetstream.KeyValuePut && json.Unmarshal(e.Value(), &rec) == nil &&
				rec.Status == asyncQueued && !rec.DroppedAt.IsZero() {
				queued[e.Key()] = rec.DroppedAt
			} else {
				delete(queued, e.Key())
			}
		case now := <-tick.C:
			for id, dropped := range queued {
				if now.After(dropped) && a.expire(id, now) {
					delete(queued, id)
				}
			}
		}
	}
}

// expire fails a job that is queued past its drop time, with the error
// GET shows for it, and calls its webhook. It reports whether the job
// needs no more sweeping.
func (a *asyncJobs) expire(id string, now time.Time) bool {
	ctx, cancel := context.WithTimeout(a.ctx, 10*time.Second)
	defer cancel()
	won := false
	rec, err := a.update(ctx, id, func(r *asyncRecord) bool {
		// Decided afresh on every try: after a lost compare-and-swap the
		// record may be running, finished, or expired by someone else.
		won = r.expired(now)
		if won {
			r.expire()
		}
		return won
	})
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return true // the record itself expired
	}
	if err != nil {
		a.s.log.Warn("failing an async job its queue dropped; retrying at the next sweep", "request", id, "err", err)
		return false
	}
	if !won {
		return true
	}
	a.s.metrics.requests.WithLabelValues(rec.Model, "timeout").Inc()
	a.s.log.Info("async job failed: no runner took it before its queue dropped it", "request", id, "deployment", rec.Model)
	if rec.Webhook != "" && !rec.WebhookSent {
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			a.deliver(nil, rec)
		}()
	}
	return true
}
