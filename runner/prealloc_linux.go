package runner

import (
	"errors"
	"os"
	"syscall"
)

// preallocate reserves size bytes for f before parts are written into it
// out of order: a full disk fails the download at once instead of after a
// gigabyte has been fetched, and the file's blocks are laid out together
// rather than in the order parts happen to arrive. File systems without
// fallocate get a sparse file of the right length.
func preallocate(f *os.File, size int64) error {
	err := syscall.Fallocate(int(f.Fd()), 0, 0, size)
	if errors.Is(err, syscall.EOPNOTSUPP) || errors.Is(err, syscall.ENOSYS) {
		return f.Truncate(size)
	}
	return err
}
