package runner

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"time"
)

// Cache keeps model weights on local disk, addressed by sha256. A file only
// ever appears under its final name after its hash was checked, so a file
// that is present is verified: a warm start reads no bytes from the object
// store and hashes nothing. Runners on one host share the cache and a lock
// per artifact, so they download each artifact once.
type Cache struct {
	Dir   string
	Blobs Blobs
	// Parts shapes the parallel download of large objects; the zero value
	// is the measured default.
	Parts PartPlan
}

// Blobs is what the cache reads from the object store (any blob.Store).
type Blobs interface {
	Stat(ctx context.Context, key string) (int64, error)
	Open(ctx context.Context, key string) (io.ReadCloser, int64, error)
	rangeOpener
}

// Artifact names one set of weights in the object store.
type Artifact struct {
	SHA256    string
	ObjectKey string
	Size      int64
}

// Progress reports download progress; total may be -1.
type Progress func(done, total int64)

// Path is where an artifact lives in the cache.
func (c *Cache) Path(sha string) string {
	return filepath.Join(c.Dir, "sha256", sha+".gguf")
}

// Fetch returns the local path of the artifact, downloading and verifying
// it first if needed.
func (c *Cache) Fetch(ctx context.Context, a Artifact, progress Progress) (path string, downloaded bool, err error) {
	if len(a.SHA256) != 64 {
		return "", false, fmt.Errorf("artifact %q: not a sha256 digest", a.SHA256)
	}
	path = c.Path(a.SHA256)
	if c.present(path, a.Size) {
		return path, false, nil
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return "", false, fmt.Errorf("creating weights cache: %w", err)
	}
	unlock, err := lockFile(ctx, path+".lock")
	if err != nil {
		return "", false, err
	}
	defer unlock()
	// Another runner may have finished the download while we waited.
	if c.present(path, a.Size) {
		return path, false, nil
	}
	if err := c.download(ctx, a, path, progress); err != nil {
		return "", false, err
	}
	return path, true, nil
}

func (c *Cache) present(path string, size int64) bool {
	st, err := os.Stat(path)
	return err == nil && st.Mode().IsRegular() && (size <= 0 || st.Size() == size)
}

// download fetches the artifact into a temporary file next to path, checks
// its sha256 and only then renames it to path. Objects of plan.Min bytes or
// more are fetched in parallel ranged parts (fetchParts), smaller ones as
// one stream; both hash while the bytes arrive, so verifying costs no second
// read of the file.
func (c *Cache) download(ctx context.Context, a Artifact, path string, progress Progress) error {
	plan := c.Parts.withDefaults()
	size := a.Size
	if size <= 0 || size >= plan.Min {
		// One round trip: the size decides the way to fetch, and a missing
		// object or a store that is down fails here, before a gigabyte is
		// allocated on disk.
		var err error
		if size, err = c.Blobs.Stat(ctx, a.ObjectKey); err != nil {
			return fmt.Errorf("fetching weights %s: %w", a.ObjectKey, err)
		}
		if a.Size > 0 && size != a.Size {
			return fmt.Errorf("weights %s have %d bytes in the object store, want %d", a.ObjectKey, size, a.Size)
		}
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".download-*")
	if err != nil {
		return fmt.Errorf("creating download file: %w", err)
	}
	defer os.Remove(tmp.Name()) // no-op after the rename
	defer tmp.Close()

	var done atomic.Int64
	stopProgress := reportProgress(&done, size, progress)
	var sum []byte
	if size >= plan.Min {
		if err := preallocate(tmp, size); err != nil {
			stopProgress()
			return fmt.Errorf("allocating %d bytes for weights: %w", size, err)
		}
		sum, err = fetchParts(ctx, c.Blobs, a.ObjectKey, size, writeBackFile{tmp}, plan, &done)
	} else {
		sum, err = c.fetchStream(ctx, a.ObjectKey, tmp, &done)
	}
	stopProgress()
	if err != nil {
		return err
	}
	if got := hex.EncodeToString(sum); got != a.SHA256 {
		return fmt.Errorf("downloaded weights %s do not match their digest: got sha256 %s (%d bytes), want %s", a.ObjectKey, got, done.Load(), a.SHA256)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("syncing weights: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("closing weights: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("installing weights in cache: %w", err)
	}
	return nil
}

// writeBackFile starts writing each part to disk as soon as it is in the
// file, so that the fsync before the rename finds little left to write.
type writeBackFile struct{ *os.File }

func (f writeBackFile) WriteAt(p []byte, off int64) (int, error) {
	n, err := f.File.WriteAt(p, off)
	if n > 0 {
		startWriteback(f.File, off, int64(n))
	}
	return n, err
}

// fetchStream copies the object to w in one GET, hashing as it goes.
func (c *Cache) fetchStream(ctx context.Context, key string, w io.Writer, done *atomic.Int64) ([]byte, error) {
	r, _, err := c.Blobs.Open(ctx, key)
	if err != nil {
		return nil, fmt.Errorf("fetching weights %s: %w", key, err)
	}
	defer r.Close()
	h := sha256.New()
	if _, err := io.Copy(io.MultiWriter(w, h, countWriter{done}), contextReader{ctx, r}); err != nil {
		return nil, fmt.Errorf("downloading weights %s: %w", key, err)
	}
	return h.Sum(nil), nil
}

// lockFile takes an exclusive flock, polling so that ctx can interrupt the
// wait (flock itself cannot be cancelled).
func lockFile(ctx context.Context, path string) (unlock func(), err error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("opening cache lock: %w", err)
	}
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() { syscall.Flock(int(f.Fd()), syscall.LOCK_UN); f.Close() }, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("locking cache entry: %w", err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

type contextReader struct {
	ctx context.Context
	r   io.Reader
}

func (c contextReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// countWriter counts the bytes written through it.
type countWriter struct{ n *atomic.Int64 }

func (c countWriter) Write(b []byte) (int, error) {
	c.n.Add(int64(len(b)))
	return len(b), nil
}

// progressEvery is how often a download reports progress: each report
// becomes a NATS message.
const progressEvery = 250 * time.Millisecond

// reportProgress calls report with the bytes counted in done every
// progressEvery while the count moves, from one goroutine (parts arrive on
// several), until stop, which reports once more so the last figure is the
// final one.
func reportProgress(done *atomic.Int64, total int64, report Progress) (stop func()) {
	if report == nil {
		return func() {}
	}
	quit, exited := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(exited)
		tick := time.NewTicker(progressEvery)
		defer tick.Stop()
		last := int64(-1)
		for {
			select {
			case <-quit:
				report(done.Load(), total)
				return
			case <-tick.C:
				// A stalled transfer reports nothing new.
				if n := done.Load(); n != last {
					report(n, total)
					last = n
				}
			}
		}
	}()
	return func() {
		close(quit)
		<-exited
	}
}
