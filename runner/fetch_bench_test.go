package runner

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/infer-run/infer/internal/blob"
	"github.com/infer-run/infer/internal/ggufgen"
	"github.com/infer-run/infer/internal/testenv"
)

// fetchBenchModel is the ~1.16 GB F16 model of issue 16 (~580M parameters:
// embedding 2048, 10 layers, feed-forward 5632), written once under the
// system temp directory and never committed.
var fetchBenchModel = ggufgen.Config{Vocab: 32000, Embd: 2048, Layers: 10, Heads: 16, KVHeads: 16, FFN: 5632, Context: 2048, Seed: 1, Name: "ggufgen-large"}

// BenchmarkFetch puts the ~1.16 GB model into a MinIO started for the
// benchmark (reached directly, and through a proxy that gives each
// connection 100 MB/s) and into a blob directory, and reports MB/s for raw
// GETs to io.Discard, one stream and N parallel ranged GETs, next to the
// cache's fetch into an empty cache, as one stream and in parallel parts. Run it
// on its own, once:
//
//	go test -run '^$' -bench BenchmarkFetch -benchtime 1x ./runner
func BenchmarkFetch(b *testing.B) {
	ctx := context.Background()
	model, err := ggufgen.Cached(filepath.Join(os.TempDir(), "infer-bench-models"), fetchBenchModel)
	if err != nil {
		b.Fatal(err)
	}
	f, err := os.Open(model)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	size, err := io.Copy(h, f)
	if err != nil {
		b.Fatal(err)
	}
	a := Artifact{SHA256: hex.EncodeToString(h.Sum(nil)), ObjectKey: "bench/large.gguf", Size: size}

	minio := testenv.MinIO(b)
	s3, err := blob.NewS3(ctx, minio)
	if err != nil {
		b.Fatal(err)
	}
	dir, err := blob.NewDir(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	for _, s := range []blob.Store{s3, dir} {
		// A fresh *os.File each time: minio-go uploads its parts with ReadAt.
		f, err := os.Open(model)
		if err != nil {
			b.Fatal(err)
		}
		err = s.Put(ctx, a.ObjectKey, f, size)
		f.Close()
		if err != nil {
			b.Fatal(err)
		}
	}

	report := func(b *testing.B, start time.Time) {
		b.ReportMetric(float64(size)*float64(b.N)/time.Since(start).Seconds()/1e6, "MB/s")
	}
	all := func(string) bool { return true }
	for _, s := range []struct {
		name  string
		store blob.Store
		run   func(variant string) bool
	}{
		{"minio", s3, all},
		// MinIO as a store at a distance, where each connection is slow
		// on its own (AWS's S3 guide: parallel connections and ranged
		// GETs of 8 or 16 MB for throughput); fewer variants, as each
		// stream takes 11.6 s.
		{"minio-100MBps-per-conn", throttled(b, minio, 100e6), func(v string) bool {
			return v == "get/streams=1" || v == "get/ranged=8" || v == "fetch/one-stream" || v == "fetch/parts=8MiBx4" || v == "fetch/parts=8MiBx8"
		}},
		{"dir", dir, all},
	} {
		if s.run("get/streams=1") {
			b.Run(s.name+"/get/streams=1", func(b *testing.B) {
				start := time.Now()
				for range b.N {
					r, _, err := s.store.Open(ctx, a.ObjectKey)
					if err != nil {
						b.Fatal(err)
					}
					_, err = io.Copy(io.Discard, r)
					r.Close()
					if err != nil {
						b.Fatal(err)
					}
				}
				report(b, start)
			})
		}
		for _, n := range []int{4, 8, 16} {
			if !s.run(fmt.Sprintf("get/ranged=%d", n)) {
				continue
			}
			b.Run(fmt.Sprintf("%s/get/ranged=%d", s.name, n), func(b *testing.B) {
				start := time.Now()
				for range b.N {
					if err := discardParts(ctx, s.store, a.ObjectKey, size, defaultPartSize, n); err != nil {
						b.Fatal(err)
					}
				}
				report(b, start)
			})
		}
		for _, p := range []struct {
			name string
			plan PartPlan
		}{
			{"one-stream", PartPlan{Min: size + 1}}, // the cache before parts
			{"parts=8MiBx4", PartPlan{InFlight: 4}},
			{"parts=8MiBx8", PartPlan{}}, // the default
			{"parts=16MiBx8", PartPlan{Size: 16 << 20, InFlight: 8}},
		} {
			if !s.run("fetch/" + p.name) {
				continue
			}
			b.Run(s.name+"/fetch/"+p.name, func(b *testing.B) {
				var took time.Duration
				for range b.N {
					c := &Cache{Dir: b.TempDir(), Blobs: s.store, Parts: p.plan}
					start := time.Now()
					if _, downloaded, err := c.Fetch(ctx, a, nil); err != nil || !downloaded {
						b.Fatalf("fetch: downloaded %v, %v", downloaded, err)
					}
					took += time.Since(start)
					b.StopTimer()
					os.RemoveAll(c.Dir) // page cache for the next run
					b.StartTimer()
				}
				b.ReportMetric(float64(size)*float64(b.N)/took.Seconds()/1e6, "MB/s")
			})
		}
	}
}

// throttled returns a store that reaches the MinIO at cfg through a proxy
// that paces each answer to rate bytes per second: an object store whose
// connections are each slower than the host, as a remote one is.
func throttled(b *testing.B, cfg blob.S3Config, rate float64) blob.Store {
	target := &url.URL{Scheme: "http", Host: cfg.Endpoint}
	srv := httptest.NewServer(&httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(target)
			r.Out.Host = r.In.Host // the client signed for the proxy's address
		},
		ModifyResponse: func(resp *http.Response) error {
			resp.Body = &pacedBody{r: resp.Body, rate: rate, start: time.Now()}
			return nil
		},
	})
	b.Cleanup(srv.Close)
	cfg.Endpoint = strings.TrimPrefix(srv.URL, "http://")
	s, err := blob.OpenS3(cfg)
	if err != nil {
		b.Fatal(err)
	}
	return s
}

// pacedBody delivers r no faster than rate bytes per second.
type pacedBody struct {
	r     io.ReadCloser
	rate  float64
	start time.Time
	n     int64
}

func (p *pacedBody) Read(b []byte) (int, error) {
	n, err := p.r.Read(b[:min(len(b), 64<<10)])
	p.n += int64(n)
	due := time.Duration(float64(p.n) / p.rate * float64(time.Second))
	if ahead := due - time.Since(p.start); ahead > 0 {
		time.Sleep(ahead)
	}
	return n, err
}

func (p *pacedBody) Close() error { return p.r.Close() }

// discardParts reads the object in ranged GETs of partSize, inFlight at a
// time, into io.Discard: what the store and the network give, with no
// hashing or writing.
func discardParts(ctx context.Context, s blob.Store, key string, size, partSize int64, inFlight int) error {
	g, ctx := errgroup.WithContext(ctx)
	var next atomic.Int64
	for range inFlight {
		g.Go(func() error {
			for {
				off := (next.Add(1) - 1) * partSize
				if off >= size {
					return nil
				}
				r, err := s.OpenRange(ctx, key, off, min(partSize, size-off))
				if err != nil {
					return err
				}
				_, err = io.Copy(io.Discard, r)
				r.Close()
				if err != nil {
					return err
				}
			}
		})
	}
	return g.Wait()
}
