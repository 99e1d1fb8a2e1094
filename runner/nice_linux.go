package runner

import "syscall"

// setThreadNice sets the nice value of the calling OS thread. On Linux
// priorities are per thread, so this leaves the process's other threads
// (NATS I/O, job intake) at their priority.
func setThreadNice(nice int) error {
	return syscall.Setpriority(syscall.PRIO_PROCESS, syscall.Gettid(), nice)
}
