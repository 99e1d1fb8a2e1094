//go:build !linux

package runner

import "os"

// preallocate sets the file's length; parts are then written into it at
// their offsets. Only Linux reserves the blocks up front (fallocate).
func preallocate(f *os.File, size int64) error {
	return f.Truncate(size)
}

// startWriteback does nothing here; the fsync before the rename writes the
// whole file.
func startWriteback(*os.File, int64, int64) {}
