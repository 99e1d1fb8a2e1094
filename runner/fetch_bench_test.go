package runner

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
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
// benchmark (and into a blob directory) and reports MB/s for raw GETs to
// io.Discard, one stream and N parallel ranged GETs, next to the cache's
// fetch into an empty cache, as one stream and in parallel parts. Run it
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

	s3, err := blob.NewS3(ctx, testenv.MinIO(b))
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
	for _, s := range []struct {
		name  string
		store blob.Store
	}{{"minio", s3}, {"dir", dir}} {
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
		for _, n := range []int{4, 8, 16} {
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
			{"parts=8MiBx4", PartPlan{}},            // the default
			{"parts=8MiBx8", PartPlan{InFlight: 8}},
			{"parts=16MiBx8", PartPlan{Size: 16 << 20, InFlight: 8}},
		} {
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
