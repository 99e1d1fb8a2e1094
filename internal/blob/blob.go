// Package blob stores model weights in an object store: any S3-compatible
// server through minio-go, or a plain directory for single-machine setups.
// Both sit behind Store so the registry (which writes) and the runner (which
// reads) never care which one is configured.
package blob

import (
	"context"
	"errors"
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

// Store is the object store as the rest of infer sees it. Keys are
// slash-separated relative paths such as "artifacts/0f3a…/model.gguf".
type Store interface {
	// Put streams r to key. size is the exact length when known, or -1;
	// Put never buffers the whole object in memory. When r returns an
	// error, Put fails with it and leaves nothing at key.
	Put(ctx context.Context, key string, r io.Reader, size int64) error
	// Open returns the object's content and size.
	Open(ctx context.Context, key string) (io.ReadCloser, int64, error)
	// Stat returns the object's size.
	Stat(ctx context.Context, key string) (int64, error)
	// Delete removes key; deleting a missing key is not an error.
	Delete(ctx context.Context, key string) error
}
