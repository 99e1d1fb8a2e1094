// Package blob stores model weights in an object store: any S3-compatible
// server through minio-go, or a plain directory for single-machine setups.
// Both sit behind Store so the registry (which writes) and the runner (which
// reads) never care which one is configured.
package blob

import (
	"context"
	"errors"
	"fmt"
	"io"
)

// ErrNotFound is returned (wrapped) when a key does not exist.
var ErrNotFound = errors.New("blob not found")

// ErrUnavailable is returned (wrapped, with the cause) when the object store
// could not be reached or answered with a server-side error (connection
// refused, a timeout, a 5xx, throttling): the same call may succeed later.
// A missing key (ErrNotFound) or a refused request (bad credentials) is not
// unavailability: trying again will not help.
var ErrUnavailable = errors.New("object store unavailable")

// ErrShortRange is returned (wrapped) when a ranged read reaches the end of
// the object before the end of the range: the object is shorter than the
// caller thought, which reading again will not change.
var ErrShortRange = errors.New("object ends before the requested range")

// Store is the object store as the rest of infer sees it. Keys are
// slash-separated relative paths such as "artifacts/0f3a…/model.gguf".
type Store interface {
	// Put streams r to key. size is the exact length when known, or -1;
	// Put never buffers the whole object in memory. When r returns an
	// error, Put fails with it and leaves nothing at key.
	Put(ctx context.Context, key string, r io.Reader, size int64) error
	// Open returns the object's content and size.
	Open(ctx context.Context, key string) (io.ReadCloser, int64, error)
	// OpenRange returns the n bytes of the object at offset off (n > 0),
	// so that a large object can be read in parallel parts. The reader
	// gives exactly n bytes or an error: a range past the object's end
	// fails (with ErrShortRange once reading reaches the end) rather than
	// return fewer bytes silently.
	OpenRange(ctx context.Context, key string, off, n int64) (io.ReadCloser, error)
	// Stat returns the object's size.
	Stat(ctx context.Context, key string) (int64, error)
	// Delete removes key; deleting a missing key is not an error.
	Delete(ctx context.Context, key string) error
}

// checkRange refuses ranges that cannot name any bytes.
func checkRange(key string, off, n int64) error {
	if off < 0 || n <= 0 {
		return fmt.Errorf("open %q: invalid range: %d bytes at offset %d", key, n, off)
	}
	return nil
}

// exactReader passes through n bytes of r and fails with ErrShortRange if
// r ends before that, so that callers of OpenRange never mistake a short
// object for a complete part.
type exactReader struct {
	io.ReadCloser
	key  string
	left int64
	want int64
}

func newExactReader(r io.ReadCloser, key string, n int64) *exactReader {
	return &exactReader{ReadCloser: r, key: key, left: n, want: n}
}

func (r *exactReader) Read(p []byte) (int, error) {
	if r.left <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > r.left {
		p = p[:r.left]
	}
	n, err := r.ReadCloser.Read(p)
	r.left -= int64(n)
	switch {
	case err == io.EOF && r.left > 0:
		return n, fmt.Errorf("read %q: %w: %d of %d bytes", r.key, ErrShortRange, r.want-r.left, r.want)
	case err == io.EOF || (err == nil && r.left == 0):
		// Not passing on what lies past the range, even if the store sent
		// more (a server that ignored the Range header from offset 0).
		return n, io.EOF
	}
	return n, err
}
