//go:build !activatoronly

package main

import (
	"os"
	"syscall"

	"github.com/infer-run/infer/internal/hugepages"
)

// reexecWithHugePages replaces a runner started without the huge-page
// tunable (by hand, or by a driver that does not set it) with itself
// under it: same PID, arguments and parent-death signal. It returns only
// when there is nothing to do or the exec failed, and then the runner
// goes on without huge pages. The drivers set the tunable, so their
// runners skip this second start (~100 ms on a loaded host).
func reexecWithHugePages() error {
	env, changed := hugepages.Env(os.Environ())
	if !changed {
		return nil
	}
	return syscall.Exec("/proc/self/exe", os.Args, env)
}
