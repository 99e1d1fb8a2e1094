package runner

import (
	"time"

	"github.com/nats-io/nats.go"
)

// rememberCancelled is how long a runner remembers a job cancelled before
// it ran: longer than any job waits in a queue.
const rememberCancelled = time.Hour

// cancelledSweep is how often at most expired cancelled IDs are dropped.
// A sweep scans every remembered ID, so sweeping on every cancel would
// make a mass disconnect quadratic; once per interval costs each cancel
// O(1) amortized.
const cancelledSweep = time.Minute

// onCancel stops a running job, or remembers the ID so the job is skipped
// if this runner takes it from the queue later.
func (r *Runner) onCancel(m *nats.Msg) { r.cancel(string(m.Data), time.Now()) }

func (r *Runner) cancel(id string, now time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if cancel, ok := r.running[id]; ok {
		cancel()
		return
	}
	if now.Sub(r.swept) >= cancelledSweep {
		for k, until := range r.cancelled {
			if now.After(until) {
				delete(r.cancelled, k)
			}
		}
		r.swept = now
	}
	r.cancelled[id] = now.Add(rememberCancelled)
}

// takeCancelled reports whether job id was cancelled (within
// rememberCancelled) and forgets it.
func (r *Runner) takeCancelled(id string, now time.Time) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	until, ok := r.cancelled[id]
	delete(r.cancelled, id)
	return ok && !now.After(until) // an expired ID may wait for its sweep
}
