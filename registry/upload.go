package registry

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/infer-run/infer/internal/blob"
	"github.com/infer-run/infer/internal/chat"
)

// Uploader validates GGUF uploads and stores them as artifacts. It is safe
// for concurrent use.
type Uploader struct {
	Store *Store
	Blobs blob.Store
	// Logger reports cleanup failures; nil means slog.Default().
	Logger *slog.Logger
}

// errPutReturned unblocks the upload if the object store stops reading
// without an error of its own.
var errPutReturned = errors.New("object store stopped reading the upload")

// cleanupTimeout bounds deleting an abandoned object, which happens even
// when the request's context is already canceled.
const cleanupTimeout = 30 * time.Second

// Upload reads GGUF weights from r in one pass — size is their exact length,
// or -1 if unknown — and returns the artifact they are stored as. The bytes
// stream to the object store while they are hashed and validated; invalid
// weights (an error wrapping ErrInvalidWeights), a failing reader or a
// failing store leave neither an object nor a record behind. Uploading
// weights that are already stored returns the existing artifact.
func (u *Uploader) Upload(ctx context.Context, r io.Reader, size int64) (Artifact, error) {
	if size == 0 {
		return Artifact{}, invalidf("the upload is empty")
	}
	if size < 0 {
		size = -1
	}
	key := "uploads/" + strings.ToLower(rand.Text()) + ".gguf"
	pr, pw := io.Pipe()
	putDone := make(chan error, 1)
	go func() {
		err := u.Blobs.Put(ctx, key, pr, size)
		if err != nil {
			pr.CloseWithError(err)
		} else {
			pr.CloseWithError(errPutReturned)
		}
		putDone <- err
	}()

	hash := sha256.New()
	src := &recordingReader{r: r}
	tee := io.TeeReader(src, io.MultiWriter(hash, pw))
	info, n, err := Inspect(tee)
	if err == nil {
		// Bytes after the last tensor are allowed; they are part of the
		// file, so they are hashed and stored too.
		var rest int64
		rest, err = io.CopyBuffer(struct{ io.Writer }{io.Discard}, tee, make([]byte, 256<<10))
		n += rest
		if err != nil {
			err = fmt.Errorf("reading the weights: %w", err)
		}
	}
	if err == nil && size >= 0 && n != size {
		err = invalidf("the upload is %d bytes long but was announced as %d", n, size)
	}
	if err != nil {
		pw.CloseWithError(err)
		putErr := <-putDone
		u.discard(ctx, key)
		if src.err != nil && !errors.Is(err, ErrInvalidWeights) {
			// The uploader's side failed (a client that hung up midway),
			// not the store, whatever the store then reports.
			return Artifact{}, fmt.Errorf("%w: reading the upload: %w", ErrIncompleteUpload, src.err)
		}
		if !errors.Is(err, ErrInvalidWeights) && putErr != nil && !errors.Is(putErr, err) {
			// A failing store shows up as a failed write into the pipe;
			// its own error says more.
			return Artifact{}, fmt.Errorf("storing the weights: %w", putErr)
		}
		return Artifact{}, err
	}
	pw.Close()
	if err := <-putDone; err != nil {
		u.discard(ctx, key)
		return Artifact{}, fmt.Errorf("storing the weights: %w", err)
	}

	a, created, err := u.Store.PutArtifact(ctx, Artifact{
		SHA256:         hex.EncodeToString(hash.Sum(nil)),
		Size:           n,
		ObjectKey:      key,
		Architecture:   info.Architecture,
		ParameterCount: info.ParameterCount,
		Quantization:   info.Quantization,
		ContextLength:  info.ContextLength,
		ChatTemplate:   chat.Resolve("", info.ChatTemplate),
		Pooling:        info.Pooling,
	})
	if err == nil && !created {
		// The same bytes were uploaded before. Keep the old object unless
		// it went missing from the store (a bucket emptied, a dev blob dir
		// deleted): then the new upload repairs the artifact.
		if _, serr := u.Blobs.Stat(ctx, a.ObjectKey); errors.Is(serr, blob.ErrNotFound) {
			if a, err = u.Store.SetArtifactObject(ctx, a.SHA256, a.ObjectKey, key); err == nil {
				return a, nil
			}
		}
	}
	if err != nil || !created {
		// Either nothing refers to the new object, or the same bytes are
		// stored already.
		u.discard(ctx, key)
	}
	if err != nil {
		return Artifact{}, err
	}
	return a, nil
}

// discard deletes an object no record refers to.
func (u *Uploader) discard(ctx context.Context, key string) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	if err := u.Blobs.Delete(ctx, key); err != nil {
		log := u.Logger
		if log == nil {
			log = slog.Default()
		}
		log.Warn("deleting an unused upload failed; the object is orphaned", "key", key, "err", err)
	}
}

// ErrIncompleteUpload is an upload whose body ended early or failed to
// arrive: the client's fault, not the store's.
var ErrIncompleteUpload = errors.New("incomplete upload")

// recordingReader remembers the first error of the reader it wraps other
// than io.EOF, so a failed upload can be blamed on the right side.
type recordingReader struct {
	r   io.Reader
	err error
}

func (r *recordingReader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if err != nil && err != io.EOF && r.err == nil {
		r.err = err
	}
	return n, err
}
