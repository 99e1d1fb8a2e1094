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
	"syscall"
	"time"

	"github.com/infer-run/infer/internal/blob"
)

// Cache keeps model weights on local disk, addressed by sha256. A file only
// ever appears under its final name after its hash was checked, so a file
// that is present is verified: a warm start reads no bytes from the object
// store and hashes nothing. Runners on one host share the cache and a lock
// per artifact, so they download each artifact once.
type Cache struct {
	Dir   string
	Blobs blob.Store
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

func (c *Cache) download(ctx context.Context, a Artifact, path string, progress Progress) error {
	r, size, err := c.Blobs.Open(ctx, a.ObjectKey)
	if err != nil {
		return fmt.Errorf("fetching weights %s: %w", a.ObjectKey, err)
	}
	defer r.Close()
	tmp, err := os.CreateTemp(filepath.Dir(path), ".download-*")
	if err != nil {
		return fmt.Errorf("creating download file: %w", err)
	}
	defer os.Remove(tmp.Name()) // no-op after the rename
	defer tmp.Close()

	h := sha256.New()
	w := io.MultiWriter(tmp, h)
	if progress != nil {
		w = &progressWriter{w: w, total: size, report: progress}
	}
	n, err := io.Copy(w, contextReader{ctx, r})
	if err != nil {
		return fmt.Errorf("downloading weights %s: %w", a.ObjectKey, err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != a.SHA256 {
		return fmt.Errorf("downloaded weights %s do not match their digest: got sha256 %s (%d bytes), want %s", a.ObjectKey, got, n, a.SHA256)
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

type progressWriter struct {
	w      io.Writer
	done   int64
	total  int64
	report Progress
	last   time.Time
}

func (p *progressWriter) Write(b []byte) (int, error) {
	n, err := p.w.Write(b)
	p.done += int64(n)
	// Report at most every 250 ms: each report becomes a NATS message.
	if now := time.Now(); now.Sub(p.last) > 250*time.Millisecond || p.done == p.total {
		p.last = now
		p.report(p.done, p.total)
	}
	return n, err
}
