//go:build !activatoronly

package main

import (
	"os"
	"strings"
	"syscall"
)

// A runner's cold start is mostly first touches of memory it allocates:
// llama.cpp zeroes each context's KV cache and scheduler tables and the
// first decode touches the compute buffer. Under a hypervisor each 4 KiB
// page fault is expensive (perf: ~70% of a stories260K context's 300 ms
// creation was memset page faults); with transparent huge pages one fault
// maps 2 MiB. glibc asks for them on the memory malloc maps when
// GLIBC_TUNABLES has glibc.malloc.hugetlb=1, which it reads only at
// process start, so the runner re-executes itself once with it set.
// Measured (a 960 MiB memset, alternating, same host): 1.1–3.3 s with the
// tunable against 3.7–5.7 s without.
const hugePagesTunable = "glibc.malloc.hugetlb=1"

// hugePagesEnv returns env with the tunable added, and whether it changed
// anything: not when the tunable (any value) is set already or when
// INFER_RUNNER_HUGEPAGES=0 turns it off.
func hugePagesEnv(env []string) ([]string, bool) {
	i := -1
	for j, kv := range env {
		switch {
		case kv == "INFER_RUNNER_HUGEPAGES=0":
			return env, false
		case strings.HasPrefix(kv, "GLIBC_TUNABLES="):
			if strings.Contains(kv, "glibc.malloc.hugetlb=") {
				return env, false
			}
			i = j
		}
	}
	out := append([]string(nil), env...)
	if i < 0 {
		return append(out, "GLIBC_TUNABLES="+hugePagesTunable), true
	}
	if v := strings.TrimPrefix(out[i], "GLIBC_TUNABLES="); v != "" {
		out[i] = "GLIBC_TUNABLES=" + v + ":" + hugePagesTunable
	} else {
		out[i] = "GLIBC_TUNABLES=" + hugePagesTunable
	}
	return out, true
}

// reexecWithHugePages replaces the process with itself under the tunable
// (same PID, arguments and parent-death signal). It returns only when it
// has nothing to do or the exec failed, and then the runner goes on
// without huge pages.
func reexecWithHugePages() error {
	env, changed := hugePagesEnv(os.Environ())
	if !changed {
		return nil
	}
	return syscall.Exec("/proc/self/exe", os.Args, env)
}
