//go:build !linux

package runner

// setThreadNice is a no-op where priorities are not per thread: lowering
// the whole process would slow the job intake along with decoding.
func setThreadNice(int) error { return nil }
