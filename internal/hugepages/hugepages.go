// Package hugepages asks glibc for transparent huge pages in runner
// processes.
//
// A runner's cold start is mostly first touches of memory it allocates:
// llama.cpp zeroes each context's KV cache and scheduler tables, and the
// first decode touches the compute buffer. Under a hypervisor each 4 KiB
// page fault is expensive (perf on a stories260K context creation: ~70%
// of its 300 ms in memset page faults); with transparent huge pages one
// fault maps 2 MiB. glibc asks for them on the memory malloc maps when
// GLIBC_TUNABLES has glibc.malloc.hugetlb=1, which it reads only at
// process start, so whoever starts a runner sets it (the drivers), and
// a runner started without it re-executes itself once with it.
// Measured (a 960 MiB memset, alternating, same loaded host): 1.1–3.3 s
// with the tunable against 3.7–5.7 s without.
package hugepages

import "strings"

// Tunable is the glibc tunable that turns them on.
const Tunable = "glibc.malloc.hugetlb=1"

// Off is the environment entry that keeps runners off huge pages.
const Off = "INFER_RUNNER_HUGEPAGES=0"

// Env returns env with the tunable added, and whether it changed
// anything: not when the tunable (any value) is set already or when Off
// is there.
func Env(env []string) ([]string, bool) {
	i := -1
	for j, kv := range env {
		switch {
		case kv == Off:
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
		return append(out, "GLIBC_TUNABLES="+Tunable), true
	}
	if v := strings.TrimPrefix(out[i], "GLIBC_TUNABLES="); v != "" {
		out[i] = "GLIBC_TUNABLES=" + v + ":" + Tunable
	} else {
		out[i] = "GLIBC_TUNABLES=" + Tunable
	}
	return out, true
}
