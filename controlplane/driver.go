package controlplane

import (
	"context"
	"strconv"
	"time"

	"github.com/infer-run/infer/registry"
)

// RunnerSpec is what a driver needs to start one runner.
type RunnerSpec struct {
	ID string
	// DeploymentID is the deployment's key: its queue and subjects. A
	// name is reused after a deployment is deleted; an ID never is.
	DeploymentID string
	// Deployment is the deployment's name, for logs, pod names and labels.
	Deployment   string
	Artifact     string // sha256
	ObjectKey    string
	Size         int64
	Parallel     int
	Context      int
	ChatTemplate string
	// Resources is where and with what the runner runs. Drivers that
	// place runners (Kubernetes) honour it; the local driver ignores it.
	Resources Resources
}

// Resources is a deployment's placement: what one runner is given and
// which nodes it may run on. It is stored with the deployment.
type Resources = registry.Resources

// Args is the runner's command line after "infer runner". Drivers add
// their own connection settings (NATS, object store, cache).
func (s RunnerSpec) Args() []string {
	args := []string{
		"--deployment-id", s.DeploymentID,
		"--deployment", s.Deployment,
		"--id", s.ID,
		"--artifact", s.Artifact,
		"--object-key", s.ObjectKey,
		"--size", strconv.FormatInt(s.Size, 10),
		"--parallel", strconv.Itoa(s.Parallel),
	}
	if s.Context > 0 {
		args = append(args, "--context", strconv.Itoa(s.Context))
	}
	if s.ChatTemplate != "" {
		args = append(args, "--chat-template", s.ChatTemplate)
	}
	return args
}

// RunnerRef is a runner as its driver knows it: it exists until it exits.
type RunnerRef struct {
	ID string
	// DeploymentID is the deployment it serves (empty for a runner started
	// before queues were keyed by ID: it serves no deployment now).
	DeploymentID string
	Deployment   string
	Artifact     string
	StartedAt    time.Time
	// Stopping is set once Stop was called.
	Stopping bool
}

// Driver starts and stops runners somewhere: local processes, Kubernetes
// pods. Implementations must be safe for concurrent use.
type Driver interface {
	// Start launches a runner and returns without waiting for it to be
	// ready; the runner reports its phases over NATS.
	Start(ctx context.Context, spec RunnerSpec) error
	// Stop asks a runner to drain (finish its requests, take no more) and
	// exit. Stopping a runner that is gone is not an error.
	Stop(ctx context.Context, id string) error
	// Kill ends a runner at once (it stopped answering).
	Kill(ctx context.Context, id string) error
	// Runners lists the runners that exist.
	Runners(ctx context.Context) ([]RunnerRef, error)
}
