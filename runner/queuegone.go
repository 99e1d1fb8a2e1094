package runner

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/infer-run/infer/internal/wire"
)

// A runner's queue goes away when its deployment is deleted (the activator
// deletes the stream, and with it the runners' consumer). Every fetch then
// fails at once ("no responders", "consumer deleted"): a runner that logs
// and fetches again wrote 1,331 to 5,175 warnings a second before the
// control plane stopped it. Instead, a failed fetch asks JetStream whether
// the consumer still exists: if it says it does not, the runner finishes
// what it runs and exits with one log line; any other failure (NATS
// restarting, a slow server) is retried after a growing pause.

// fetchFailures counts a runner's fetches that failed in a row.
type fetchFailures struct{ n int }

// fetchBackoff is the pause after the n-th failed fetch in a row: 100 ms
// doubling to 5 s, so a lasting failure costs a log line every 5 s.
func fetchBackoff(n int) time.Duration {
	if n <= 0 {
		return 0
	}
	return min(100*time.Millisecond<<min(n-1, 6), 5*time.Second)
}

// queueMissing tells whether err says for certain that the runners'
// consumer or its stream does not exist (any more).
func queueMissing(err error) bool {
	return errors.Is(err, jetstream.ErrConsumerDeleted) ||
		errors.Is(err, jetstream.ErrConsumerNotFound) ||
		errors.Is(err, jetstream.ErrStreamNotFound)
}

// fetchFailed handles a failed fetch: it reports whether the queue is gone
// (the caller stops), and otherwise logs and waits before the next fetch.
func (r *Runner) fetchFailed(ctx context.Context, f *fetchFailures, err error) bool {
	if queueMissing(err) || r.consumerGone(ctx) {
		r.log.Info("the deployment's queue was deleted; stopping", "reason", err)
		return true
	}
	f.n++
	r.log.Warn("fetching jobs failed; retrying", "err", err, "failures", f.n, "retry_in", fetchBackoff(f.n))
	select {
	case <-time.After(fetchBackoff(f.n)):
	case <-ctx.Done():
	}
	return false
}

// consumerGone asks JetStream whether the runners' consumer exists; only a
// definite "not found" counts, not a timeout or a lost connection.
func (r *Runner) consumerGone(ctx context.Context) bool {
	cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	_, err := r.js.Consumer(cctx, wire.RequestStream(r.cfg.DeploymentID), wire.RequestConsumer)
	return queueMissing(err)
}

// queueGone stops a runner whose deployment was deleted: it takes no more
// work (there is none to take), finishes the jobs it runs and returns, so
// the runner exits cleanly.
func (r *Runner) queueGone(wg *sync.WaitGroup) error {
	r.setPhase(wire.PhaseDraining, "deployment deleted")
	wg.Wait()
	return nil
}
