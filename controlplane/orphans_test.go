package controlplane

import (
	"slices"
	"testing"
	"time"

	"github.com/infer-run/infer/internal/queue"
)

func TestOrphanQueues(t *testing.T) {
	now := time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)
	old, young := now.Add(-2*orphanGrace), now.Add(-orphanGrace/2)
	queues := []queue.Existing{
		{Deployment: "dep_live", Created: old},       // a deployment's
		{Deployment: "dep_deleted", Created: old},    // deleted, nobody serves it
		{Deployment: "dep_draining", Created: old},   // deleted, its runner finishes
		{Deployment: "dep_new", Created: young},      // just created, not stored yet
		{Deployment: "foo", Created: old},            // named by name (an earlier version), an old runner on it
		{Deployment: "bar", Created: old},            // named by name, nobody on it
		{Deployment: "dep_other_name", Created: old}, // a runner of another deployment has this name
	}
	deployments := map[string]bool{"dep_live": true}
	runners := []RunnerRef{
		{ID: "r1", DeploymentID: "dep_live", Deployment: "live"},
		{ID: "r2", DeploymentID: "dep_draining", Deployment: "draining", Stopping: true},
		{ID: "r3", Deployment: "foo"},
		{ID: "r4", DeploymentID: "dep_x", Deployment: "dep_other_name"},
	}
	got := orphanQueues(queues, deployments, runners, now)
	slices.Sort(got)
	want := []string{"bar", "dep_deleted", "dep_other_name"}
	if !slices.Equal(got, want) {
		t.Errorf("orphanQueues = %v, want %v", got, want)
	}
}
