package controlplane

import (
	"context"
	"time"

	"github.com/infer-run/infer/internal/queue"
)

// Request queues nobody will serve are deleted. The activator deletes a
// deployment's queue when the deployment is deleted, but a queue can
// outlive its deployment: a runner started for a deployment deleted a
// moment before re-creates the queue it finds missing, an activator may
// die between the two deletions, and queues of earlier versions were named
// by deployment name rather than ID (see docs/operations.md, upgrading).

const (
	// queueSweepEvery is how often the leader looks for such queues.
	queueSweepEvery = time.Minute
	// orphanGrace spares young queues: the activator creates a new
	// deployment's queue just before it stores the deployment.
	orphanGrace = time.Minute
)

// orphanQueues returns the request streams (by the key they are named by)
// that belong to no current deployment, are older than orphanGrace and
// that no runner serves any more: a runner of a deleted deployment
// finishes its jobs first. A runner started before queues were keyed by ID
// has no deployment ID and serves the queue named by its deployment's
// name.
func orphanQueues(queues []queue.Existing, deployments map[string]bool, runners []RunnerRef, now time.Time) []string {
	served := map[string]bool{}
	for _, r := range runners {
		if r.DeploymentID != "" {
			served[r.DeploymentID] = true
		} else {
			served[r.Deployment] = true
		}
	}
	var out []string
	for _, q := range queues {
		if !deployments[q.Deployment] && !served[q.Deployment] && now.Sub(q.Created) >= orphanGrace {
			out = append(out, q.Deployment)
		}
	}
	return out
}

// sweepQueues deletes orphan request queues, at most every queueSweepEvery.
func (cp *ControlPlane) sweepQueues(ctx context.Context, runners []RunnerRef, now time.Time) {
	if now.Sub(cp.sweptQueues) < queueSweepEvery {
		return
	}
	cp.sweptQueues = now
	cp.mu.Lock()
	deployments := make(map[string]bool, len(cp.deps))
	for id := range cp.deps {
		deployments[id] = true
	}
	cp.mu.Unlock()
	queues, err := queue.List(ctx, cp.js)
	if err != nil {
		cp.log.Warn("listing request queues", "err", err)
		return
	}
	for _, key := range orphanQueues(queues, deployments, runners, now) {
		cp.log.Info("deleting the queue of a deleted deployment", "queue", key)
		if err := queue.Delete(ctx, cp.js, key); err != nil {
			cp.log.Warn("deleting queue", "queue", key, "err", err)
		}
	}
}
