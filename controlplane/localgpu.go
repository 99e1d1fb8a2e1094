package controlplane

import (
	"context"
	"errors"
)

// The local driver's GPU placement: which of the host's GPUs a runner
// gets (placement.go decides), handed to it as CUDA_VISIBLE_DEVICES.

// placeRunner claims GPUs for a runner about to start and returns the
// environment that confines it to them. A runner of a deployment without
// GPUs (resources.gpus 0) sees none, so that a CUDA build runs it on the
// CPU as its deployment says. When there is no room the start waits
// (*NoCapacityError) or cannot ever happen here (*TooFewGPUsError); either
// way Waiting hears why, so that waiting clients are told.
func (d *LocalDriver) placeRunner(ctx context.Context, spec RunnerSpec) ([]string, error) {
	want := spec.Resources.GPUs
	if want <= 0 {
		return d.cpuEnv(), nil
	}
	d.placeMu.Lock()
	defer d.placeMu.Unlock()
	var gpus []GPU
	if d.GPUs != nil {
		var err error
		if gpus, err = d.GPUs.GPUs(ctx); err != nil {
			// Not knowing the GPUs is not knowing there is room: wait.
			d.waiting(spec, err)
			return nil, errors.Join(&NoCapacityError{Want: want, Need: RunnerGPUBytes(spec)}, err)
		}
	}
	d.mu.Lock()
	claims := make([]GPUClaim, 0, len(d.claims))
	for _, c := range d.claims {
		claims = append(claims, c)
	}
	d.mu.Unlock()
	got, err := PlaceGPUs(gpus, claims, want, RunnerGPUBytes(spec))
	if err != nil {
		d.waiting(spec, err)
		return nil, err
	}
	c := GPUClaim{Runner: spec.ID, Bytes: (RunnerGPUBytes(spec) + int64(want) - 1) / int64(want)}
	for _, g := range got {
		c.UUIDs = append(c.UUIDs, g.UUID)
	}
	d.mu.Lock()
	if d.claims == nil {
		d.claims = map[string]GPUClaim{}
	}
	d.claims[spec.ID] = c
	d.mu.Unlock()
	d.logger().Info("runner placed on GPUs", "runner", spec.ID, "deployment", spec.Deployment, "gpus", VisibleDevices(got), "planned_bytes", c.Bytes)
	return []string{"CUDA_VISIBLE_DEVICES=" + VisibleDevices(got)}, nil
}

// cpuEnv hides the host's GPUs from a CPU runner (and from spares, which
// only ever become CPU runners: a GPU runner needs its devices in its
// environment from its first instruction).
func (d *LocalDriver) cpuEnv() []string {
	if d.GPUs == nil {
		return nil
	}
	return []string{"CUDA_VISIBLE_DEVICES="}
}

// release forgets a runner's GPU claim: it exited, or never started.
func (d *LocalDriver) release(id string) {
	d.mu.Lock()
	d.releaseLocked(id)
	d.mu.Unlock()
}

func (d *LocalDriver) releaseLocked(id string) { delete(d.claims, id) }

func (d *LocalDriver) waiting(spec RunnerSpec, err error) {
	d.logger().Warn("runner cannot start yet", "runner", spec.ID, "deployment", spec.Deployment, "err", err)
	if d.Waiting != nil {
		d.Waiting(spec, err)
	}
}

// IsNoCapacity reports whether a driver's Start error means "no room now,
// try again later" rather than a failure.
func IsNoCapacity(err error) bool {
	var e *NoCapacityError
	return errors.As(err, &e)
}
