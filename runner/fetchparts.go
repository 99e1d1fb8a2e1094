package runner

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/infer-run/infer/internal/blob"
)

// PartPlan says how the cache downloads a large object: in ranged GETs of
// Size bytes, InFlight at a time. Objects smaller than Min are read as one
// stream, where a second request and the part buffers would cost more than
// the parallelism gains. Zero fields take the defaults below.
type PartPlan struct {
	Size     int64
	InFlight int
	Min      int64
}

// Defaults, measured with BenchmarkFetch on the 2-core test host
// (docs/performance.md, "Fetching weights"). With MinIO on the same host
// every byte costs CPU (the server, the copy, the hash), so parts gain
// little there. Through a proxy that gives each connection 100 MB/s, as a
// store at a distance does, a 1.16 GB fetch took 12.3 s as one stream,
// 3.6–4.1 s with 4 parts in flight and 2.1–2.6 s with 8 (raw ranged GETs
// to io.Discard: 2.1–2.3 s), hence 8. 8 MiB parts are what AWS's S3 guide
// suggests for ranged GETs (8 or 16 MB); they keep a request's round trip
// and signature small next to its transfer, and the part buffers
// (partBuffers: 12 × 8 MiB = 96 MiB, freed after the fetch) small next to
// the model the runner is about to load.
const (
	defaultPartSize     = 8 << 20
	defaultPartInFlight = 8
	defaultParallelMin  = 64 << 20
)

// partBuffers is how many part buffers a fetch may hold: one per part in
// flight plus half as many again for parts that finished ahead of a slower
// one and wait to be hashed, so one slow part does not at once stop the
// other streams.
func (p PartPlan) partBuffers() int {
	return p.InFlight + (p.InFlight+1)/2
}

func (p PartPlan) withDefaults() PartPlan {
	if p.Size <= 0 {
		p.Size = defaultPartSize
	}
	if p.InFlight <= 0 {
		p.InFlight = defaultPartInFlight
	}
	if p.Min <= 0 {
		p.Min = defaultParallelMin
	}
	return p
}

// rangeOpener is the part of the object store fetchParts reads from.
type rangeOpener interface {
	OpenRange(ctx context.Context, key string, off, n int64) (io.ReadCloser, error)
}

// partAttempts bounds how often one part is tried when the store fails in
// a way that may pass (blob.ErrUnavailable: a connection cut midway, a
// 5xx). minio-go already retries failed requests itself; this covers a
// transfer cut after the answer began, which it does not resume. Each retry
// asks only for the bytes the part still lacks.
const partAttempts = 4

// partRetryWait is the pause before retry number n (1, 2, …).
func partRetryWait(n int) time.Duration {
	return time.Duration(n) * 200 * time.Millisecond
}

// part is a downloaded part waiting to be hashed.
type part struct {
	index int
	buf   []byte
}

// fetchParts downloads size bytes of key into dst, plan.Size bytes per
// ranged GET with plan.InFlight in flight, and returns the sha256 of the
// whole object. Each part is read into a buffer, written at its offset with
// WriteAt and handed to the hasher, which hashes parts in order as the
// contiguous prefix completes, from the buffers: the file is never read
// back. done counts the bytes received, across parts, for progress.
//
// Memory is bounded by the buffers (partBuffers), so parts run at most
// half a window ahead of the hasher. A worker takes a buffer before it takes
// the next part index, so the lowest part not yet hashed always has a
// buffer and is being fetched: the hasher can always progress.
func fetchParts(ctx context.Context, src rangeOpener, key string, size int64, dst io.WriterAt, plan PartPlan, done *atomic.Int64) ([]byte, error) {
	parts := int((size + plan.Size - 1) / plan.Size)
	g, ctx := errgroup.WithContext(ctx)
	buffers := make(chan []byte, plan.partBuffers())
	for range cap(buffers) {
		buffers <- nil // allocated on first use: a short object needs fewer
	}
	hashed := make(chan part, cap(buffers))
	var next atomic.Int64
	for range min(plan.InFlight, parts) {
		g.Go(func() error {
			for {
				var buf []byte
				select {
				case buf = <-buffers:
				case <-ctx.Done():
					return ctx.Err()
				}
				i := int(next.Add(1) - 1)
				if i >= parts {
					return nil
				}
				off := int64(i) * plan.Size
				if buf == nil {
					buf = make([]byte, plan.Size)
				}
				buf = buf[:min(plan.Size, size-off)]
				if err := readPart(ctx, src, key, off, buf, done); err != nil {
					return err
				}
				if _, err := dst.WriteAt(buf, off); err != nil {
					return fmt.Errorf("writing weights: %w", err)
				}
				// Never blocks: at most cap(buffers) parts are out.
				hashed <- part{i, buf}
			}
		})
	}

	h := sha256.New()
	pending := make(map[int][]byte, cap(buffers))
	for want := 0; want < parts; {
		select {
		case p := <-hashed:
			pending[p.index] = p.buf
		case <-ctx.Done():
			// A worker failed (errgroup canceled ctx) or the caller gave
			// up; Wait returns which.
			if err := g.Wait(); err != nil {
				return nil, err
			}
			return nil, ctx.Err()
		}
		for buf, ok := pending[want]; ok; buf, ok = pending[want] {
			h.Write(buf)
			delete(pending, want)
			buffers <- buf[:cap(buf)]
			want++
		}
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	return h.Sum(nil), nil
}

// readPart fills buf with the bytes of key at off, retrying what the store
// may deliver later, from the first byte it still lacks.
func readPart(ctx context.Context, src rangeOpener, key string, off int64, buf []byte, done *atomic.Int64) error {
	got := 0
	for attempt := 1; ; attempt++ {
		n, err := readRange(ctx, src, key, off+int64(got), buf[got:], done)
		got += n
		if err == nil {
			return nil
		}
		if !errors.Is(err, blob.ErrUnavailable) || attempt == partAttempts {
			return fmt.Errorf("downloading weights %s (bytes %d–%d, attempt %d): %w", key, off, off+int64(len(buf))-1, attempt, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(partRetryWait(attempt)):
		}
	}
}

// readRange reads len(buf) bytes at off with one ranged GET and returns how
// many arrived before any error.
func readRange(ctx context.Context, src rangeOpener, key string, off int64, buf []byte, done *atomic.Int64) (int, error) {
	r, err := src.OpenRange(ctx, key, off, int64(len(buf)))
	if err != nil {
		return 0, err
	}
	defer r.Close()
	got := 0
	for got < len(buf) {
		// 1 MiB reads keep the progress count moving within a part.
		n, err := r.Read(buf[got:min(got+1<<20, len(buf))])
		got += n
		done.Add(int64(n))
		if err == io.EOF && got == len(buf) {
			break
		}
		if err != nil {
			if err == io.EOF {
				err = fmt.Errorf("%w: %d of %d bytes", blob.ErrShortRange, got, len(buf))
			}
			return got, err
		}
	}
	return got, nil
}
