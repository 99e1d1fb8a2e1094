package runner

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// TestCancelledIDs: a job cancelled before it ran is skipped if it comes
// within an hour, once; a running job is stopped instead of remembered;
// expired IDs are dropped at most once per cancelledSweep, not scanned for
// on every cancel.
func TestCancelledIDs(t *testing.T) {
	r := &Runner{running: map[string]context.CancelFunc{}, cancelled: map[string]time.Time{}}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

	stopped := false
	r.running["run"] = func() { stopped = true }
	r.cancel("run", t0)
	if !stopped || len(r.cancelled) != 0 {
		t.Errorf("cancelling a running job: stopped %v, remembered %v; want stopped, not remembered", stopped, r.cancelled)
	}

	const burst = 1000
	for i := range burst {
		r.cancel(fmt.Sprint("a", i), t0)
	}
	if !r.takeCancelled("a0", t0.Add(59*time.Minute)) {
		t.Error("a job cancelled 59 minutes ago is not skipped")
	}
	if r.takeCancelled("a0", t0.Add(59*time.Minute)) {
		t.Error("a cancelled job is skipped twice")
	}

	r.cancel("y", t0.Add(59*time.Minute+30*time.Second)) // sweeps: nothing expired
	r.cancel("z", t0.Add(60*time.Minute+10*time.Second)) // the burst expired, but the last sweep was 40 s ago
	if got := len(r.cancelled); got != burst+1 {
		t.Errorf("%d IDs remembered 40 s after a sweep, want %d (no sweep yet)", got, burst+1)
	}
	if r.takeCancelled("a1", t0.Add(60*time.Minute+10*time.Second)) {
		t.Error("a job cancelled over an hour ago is skipped (expired, not yet swept)")
	}
	r.cancel("w", t0.Add(60*time.Minute+40*time.Second)) // a minute after the last sweep
	if got := len(r.cancelled); got != 3 {
		t.Errorf("%d IDs remembered after the sweep, want 3 (y, z, w): %v", got, r.cancelled)
	}
}
