package runner

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/infer-run/infer/internal/blob"
	"github.com/infer-run/infer/internal/testenv"
)

// cutProxy stands between the cache and MinIO and can cut a ranged GET's
// answer halfway (the connection closes mid-body, as when a store or a
// network fails during a transfer) or hold it until the client gives up.
type cutProxy struct {
	mu     sync.Mutex
	cut    func(start int64) bool // cut the answer for a range from start?
	hold   func(start int64) bool // hold it until the request is canceled?
	held   chan struct{}          // receives when an answer is held
	starts []int64                // the first byte of every ranged GET
	cuts   []int64
}

// seen returns the first byte of every ranged GET so far, and of those cut.
func (p *cutProxy) seen() (starts, cuts []int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.starts), slices.Clone(p.cuts)
}

func (p *cutProxy) rangeStart(r *http.Request) (int64, bool) {
	var start, end int64
	if _, err := fmt.Sscanf(r.Header.Get("Range"), "bytes=%d-%d", &start, &end); err != nil {
		return 0, false
	}
	return start, true
}

// s3Behind starts a proxy to the MinIO at cfg and returns a store that
// reaches it through the proxy.
func s3Behind(t *testing.T, cfg blob.S3Config, p *cutProxy) blob.Store {
	target := &url.URL{Scheme: "http", Host: cfg.Endpoint}
	proxy := &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(target)
			// The client signed its request for the proxy's address.
			r.Out.Host = r.In.Host
		},
		ModifyResponse: func(resp *http.Response) error {
			start, ok := p.rangeStart(resp.Request)
			if !ok {
				return nil
			}
			p.mu.Lock()
			p.starts = append(p.starts, start)
			cut := p.cut != nil && p.cut(start)
			if cut {
				p.cuts = append(p.cuts, start)
			}
			hold := p.hold != nil && p.hold(start)
			p.mu.Unlock()
			switch {
			case cut:
				resp.Body = &cutBody{r: resp.Body, left: resp.ContentLength / 2}
			case hold:
				p.held <- struct{}{}
				<-resp.Request.Context().Done()
				return resp.Request.Context().Err()
			}
			return nil
		},
		// The aborted and held answers are the point of the test.
		ErrorLog: log.New(io.Discard, "", 0),
	}
	srv := httptest.NewServer(proxy)
	t.Cleanup(srv.Close)
	cfg.Endpoint = strings.TrimPrefix(srv.URL, "http://")
	s, err := blob.OpenS3(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// cutBody passes left bytes through, then fails: the proxy aborts the
// answer, so the client sees its connection close before the promised
// Content-Length.
type cutBody struct {
	r    io.ReadCloser
	left int64
}

func (c *cutBody) Read(p []byte) (int, error) {
	if c.left <= 0 {
		return 0, errors.New("cut by the test")
	}
	if int64(len(p)) > c.left {
		p = p[:c.left]
	}
	n, err := c.r.Read(p)
	c.left -= int64(n)
	return n, err
}

func (c *cutBody) Close() error { return c.r.Close() }

// TestFetchParts fetches an object of many parts from a real MinIO (through
// a proxy that can cut transfers) and from a blob directory.
func TestFetchParts(t *testing.T) {
	const (
		size     = 20<<20 + 123
		partSize = 1 << 20
		parts    = 21
	)
	data := make([]byte, size)
	rand.NewChaCha8([32]byte{'f', 'e', 't', 'c', 'h'}).Read(data)
	sum := sha256.Sum256(data)
	digest := hex.EncodeToString(sum[:])
	corrupt := bytes.Clone(data)
	corrupt[size/2] ^= 1

	cfg := testenv.MinIO(t)
	ctx := t.Context()
	direct, err := blob.NewS3(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	dir, err := blob.NewDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []blob.Store{direct, dir} {
		for key, b := range map[string][]byte{"w/good.gguf": data, "w/corrupt.gguf": corrupt} {
			if err := s.Put(ctx, key, bytes.NewReader(b), int64(len(b))); err != nil {
				t.Fatal(err)
			}
		}
	}
	plan := PartPlan{Size: partSize, InFlight: 4, Min: 1}
	good := Artifact{SHA256: digest, ObjectKey: "w/good.gguf", Size: size}

	// fetch runs one fetch into an empty cache and checks the invariant
	// either way: the file under its final name is the verified object,
	// or there is none, and no partial download is left behind.
	fetch := func(t *testing.T, ctx context.Context, s blob.Store, a Artifact) (reports []int64, err error) {
		t.Helper()
		c := &Cache{Dir: t.TempDir(), Blobs: s, Parts: plan}
		var mu sync.Mutex
		path, downloaded, err := c.Fetch(ctx, a, func(done, total int64) {
			mu.Lock()
			defer mu.Unlock()
			if total != size {
				t.Errorf("progress total %d, want %d", total, size)
			}
			reports = append(reports, done)
		})
		if err == nil {
			got, rerr := os.ReadFile(path)
			if rerr != nil {
				t.Fatal(rerr)
			}
			if !downloaded || !bytes.Equal(got, data) {
				t.Fatalf("downloaded %v, %d bytes, identical %v", downloaded, len(got), bytes.Equal(got, data))
			}
		} else if _, serr := os.Stat(c.Path(a.SHA256)); !errors.Is(serr, os.ErrNotExist) {
			t.Errorf("after a failed fetch, %s: %v", c.Path(a.SHA256), serr)
		}
		left, _ := filepath.Glob(filepath.Join(c.Dir, "sha256", ".download-*"))
		if len(left) > 0 {
			t.Errorf("left behind: %q", left)
		}
		return reports, err
	}

	t.Run("identical and verified, minio", func(t *testing.T) {
		p := &cutProxy{}
		reports, err := fetch(t, ctx, s3Behind(t, cfg, p), good)
		if err != nil {
			t.Fatal(err)
		}
		if starts, _ := p.seen(); len(starts) != parts {
			t.Errorf("%d ranged GETs, want one per part (%d)", len(starts), parts)
		}
		if len(reports) == 0 || reports[len(reports)-1] != size {
			t.Errorf("progress reports %v, want the last to be %d", reports, size)
		}
	})
	t.Run("identical and verified, blob dir", func(t *testing.T) {
		if _, err := fetch(t, ctx, dir, good); err != nil {
			t.Fatal(err)
		}
	})
	for _, s := range []struct {
		name  string
		store blob.Store
	}{{"minio", direct}, {"blob dir", dir}} {
		t.Run("corrupted object refused, "+s.name, func(t *testing.T) {
			_, err := fetch(t, ctx, s.store, Artifact{SHA256: digest, ObjectKey: "w/corrupt.gguf", Size: size})
			if err == nil || !strings.Contains(err.Error(), "do not match their digest") || retryable(err) {
				t.Fatalf("fetch = %v, want a digest mismatch that is not retryable", err)
			}
		})
	}
	t.Run("a cut part is retried", func(t *testing.T) {
		var once sync.Once
		p := &cutProxy{cut: func(start int64) bool {
			cut := false
			if start == 5*partSize {
				once.Do(func() { cut = true })
			}
			return cut
		}}
		if _, err := fetch(t, ctx, s3Behind(t, cfg, p), good); err != nil {
			t.Fatalf("fetch with one cut transfer: %v", err)
		}
		starts, cuts := p.seen()
		if len(cuts) != 1 {
			t.Fatalf("cut %d transfers, want 1", len(cuts))
		}
		// The retry asks only for what the cut transfer did not deliver.
		resumed := false
		for _, s := range starts {
			resumed = resumed || (s > 5*partSize && s < 6*partSize)
		}
		if !resumed {
			t.Errorf("no ranged GET resumed part 5; GETs started at %v", starts)
		}
	})
	t.Run("a part that keeps failing fails the start, retryable", func(t *testing.T) {
		inPart := func(start int64) bool { return start >= 7*partSize && start < 8*partSize }
		p := &cutProxy{cut: inPart}
		_, err := fetch(t, ctx, s3Behind(t, cfg, p), good)
		if err == nil || !retryable(err) {
			t.Fatalf("fetch = %v, want a retryable failure", err)
		}
		if _, cuts := p.seen(); len(cuts) != partAttempts {
			t.Errorf("part tried %d times, want %d", len(cuts), partAttempts)
		}
	})
	t.Run("canceled while a part is in flight", func(t *testing.T) {
		p := &cutProxy{hold: func(start int64) bool { return start == 3*partSize }, held: make(chan struct{}, 1)}
		ctx, cancel := context.WithCancel(ctx)
		go func() {
			<-p.held
			cancel()
		}()
		_, err := fetch(t, ctx, s3Behind(t, cfg, p), good)
		if !errors.Is(err, context.Canceled) || retryable(err) {
			t.Fatalf("fetch = %v, want context.Canceled", err)
		}
	})
}
