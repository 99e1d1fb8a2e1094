package activator

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/infer-run/infer/internal/queue"
	"github.com/infer-run/infer/internal/wire"
	"github.com/infer-run/infer/registry"
)

// abandon stops a job nobody waits for: runners drop it (or stop it if it
// runs) on the cancel message, and a job still queued is removed so it no
// longer counts against the queue limit. deployment is the deployment's ID.
func (s *Server) abandon(deployment, id string, seq uint64, started bool) {
	s.nc.Publish(wire.CancelSubject(deployment), []byte(id))
	if started {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := queue.Remove(ctx, s.js, deployment, seq); err != nil {
		s.log.Warn("removing abandoned job from queue", "request", id, "err", err)
	}
}

// enqueue publishes a job, creating the deployment's queue if it is missing
// (for example after NATS lost its state) with the limits it was deployed
// with. While NATS is unreachable it holds the request and tries again once
// the connection is back, until the job's deadline: the job's ID is its
// JetStream message ID, so the copy the connection buffered during the
// outage and the retry are stored once. A job that reaches JetStream only
// after its deadline is skipped by the runners, so a request answered 503
// here is never run or billed.
func (s *Server) enqueue(ctx context.Context, dep registry.Deployment, id string, data []byte, deadline time.Time) (uint64, error) {
	// The queue is the deployment's ID's, not its name's: a name is reused.
	deployment, limit := dep.Name, dep.QueueLimit
	if e := s.checkJobSize(len(data)); e != nil {
		s.metrics.requests.WithLabelValues(deployment, "request_too_large").Inc()
		return 0, e
	}
	var seq uint64
	var err error
	for {
		seq, err = queue.Publish(ctx, s.js, dep.ID, id, data)
		if err != nil && !errors.Is(err, queue.ErrFull) && s.nc.Status() == nats.CONNECTED {
			if _, eerr := queue.Ensure(ctx, s.js, dep.ID, queue.DeploymentLimits(dep.QueueLimit, dep.QueueTimeout, s.replicas)); eerr == nil {
				seq, err = queue.Publish(ctx, s.js, dep.ID, id, data)
			}
		}
		if err == nil || !s.retryPublish(ctx, err, deadline) {
			break
		}
	}
	switch {
	case publishTooLarge(err):
		s.metrics.requests.WithLabelValues(deployment, "request_too_large").Inc()
		return 0, errJobTooLarge(len(data), s.nc.MaxPayload())
	case errors.Is(err, queue.ErrFull):
		s.metrics.requests.WithLabelValues(deployment, "queue_full").Inc()
		e := errStatus(http.StatusTooManyRequests, "rate_limit_error", "queue_full", "deployment %s has %d requests queued, its limit; retry later", deployment, limit)
		e.RetryAfter = 1
		return 0, e
	case err != nil:
		s.log.Error("queueing request", "deployment", deployment, "err", err)
		e := errStatus(http.StatusServiceUnavailable, "server_error", "queue_unavailable", "could not queue the request: %v", err)
		e.RetryAfter = 1
		return 0, e
	}
	// Tell the control plane now rather than at its next tick: a
	// deployment at zero starts its first runner at once.
	s.nc.Publish(wire.WorkSubject(dep.ID), nil)
	return seq, nil
}

// retryPublish decides whether a failed publish is tried again, and waits
// until NATS is connected if it is. JetStream refusing the job (an API
// error such as a full queue or store) is final; a timeout or a lost
// connection is not, while the client waits and the job's deadline is
// ahead.
func (s *Server) retryPublish(ctx context.Context, err error, deadline time.Time) bool {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) || errors.Is(err, queue.ErrFull) || publishTooLarge(err) {
		return false
	}
	// A shutdown ends the wait: the request is refused like the queued ones.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-s.draining:
			cancel()
		case <-ctx.Done():
		}
	}()
	return queue.WaitConnected(ctx, s.nc, deadline)
}
