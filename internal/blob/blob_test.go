package blob_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/infer-run/infer/internal/blob"
	"github.com/infer-run/infer/internal/testenv"
)

// store is an implementation under test plus a way to look behind it.
type store struct {
	blob.Store
	// leftovers lists what is stored at key or next to it (every
	// behaviour keeps its keys in a directory of its own), including what a
	// failed Put could leave behind: temp files for Dir, unfinished
	// multipart uploads for S3.
	leftovers func(t *testing.T, key string) []string
}

func newDir(t *testing.T) store {
	root := t.TempDir()
	d, err := blob.NewDir(root)
	if err != nil {
		t.Fatal(err)
	}
	return store{d, func(t *testing.T, key string) []string {
		var found []string
		err := filepath.WalkDir(filepath.Join(root, filepath.Dir(key)), func(path string, e fs.DirEntry, err error) error {
			if err != nil || e.IsDir() {
				return err
			}
			found = append(found, path)
			return nil
		})
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("walking %s: %v", root, err)
		}
		return found
	}}
}

func newS3(t *testing.T) store {
	cfg := testenv.MinIO(t)
	// Every infer process calls NewS3 as it starts, often several at once,
	// so they race to create the bucket; then once more on the existing one.
	stores := make([]*blob.S3, 5)
	errs := make([]error, len(stores))
	var wg sync.WaitGroup
	for i := range len(stores) - 1 {
		wg.Go(func() { stores[i], errs[i] = blob.NewS3(t.Context(), cfg) })
	}
	wg.Wait()
	stores[4], errs[4] = blob.NewS3(t.Context(), cfg)
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("NewS3: %v", err)
	}
	s := stores[0]
	client, err := minio.New(cfg.Endpoint, &minio.Options{Creds: credentials.NewStaticV4(cfg.AccessKey, cfg.SecretKey, "")})
	if err != nil {
		t.Fatal(err)
	}
	return store{s, func(t *testing.T, key string) []string {
		var found []string
		prefix := path.Dir(key) + "/"
		for o := range client.ListObjects(t.Context(), cfg.Bucket, minio.ListObjectsOptions{Prefix: prefix, Recursive: true}) {
			if o.Err != nil {
				t.Fatalf("listing objects: %v", o.Err)
			}
			found = append(found, o.Key)
		}
		// MinIO lists unfinished uploads of exactly one key, not of a prefix.
		for u := range client.ListIncompleteUploads(t.Context(), cfg.Bucket, key, false) {
			if u.Err != nil {
				t.Fatalf("listing uploads: %v", u.Err)
			}
			found = append(found, "unfinished upload of "+u.Key)
		}
		return found
	}}
}

var errBoom = errors.New("reader broke")

func TestStore(t *testing.T) {
	impls := []struct {
		name string
		new  func(t *testing.T) store
	}{
		{"dir", newDir},
		{"s3", newS3},
	}
	// Each behaviour gets its own key prefix in a store shared by all of
	// them, so one MinIO serves the whole table.
	behaviours := []struct {
		name string
		run  func(t *testing.T, s store, prefix string)
	}{
		{"round trip known size", roundTrip(1000, knownSize)},
		{"round trip unknown size", roundTrip(1000, unknownSize)},
		{"empty object", roundTrip(0, knownSize)},
		{"40 MiB known size", roundTrip(40<<20, knownSize)},
		{"40 MiB unknown size", roundTrip(40<<20, unknownSize)},
		{"40 MiB from a file", roundTrip(40<<20, fromFile)},
		{"reader fails, known size", failedPut(2<<20, 1<<20, knownSize)},
		{"reader fails, unknown size", failedPut(2<<20, 1<<20, unknownSize)},
		{"reader fails after first part, known size", failedPut(40<<20, 20<<20, knownSize)},
		{"reader fails after first part, unknown size", failedPut(40<<20, 20<<20, unknownSize)},
		{"ranges", ranges},
		{"overwrite replaces", func(t *testing.T, s store, prefix string) {
			key := prefix + "/obj"
			put(t, s, key, []byte("old"), 3)
			put(t, s, key, []byte("newer"), 5)
			if got := get(t, s, key); string(got) != "newer" {
				t.Fatalf("got %q, want %q", got, "newer")
			}
		}},
		{"failed overwrite keeps old object", func(t *testing.T, s store, prefix string) {
			key := prefix + "/obj"
			put(t, s, key, []byte("old"), 3)
			err := s.Put(t.Context(), key, &failingReader{r: random(1 << 20), n: 1000}, 1<<20)
			if !errors.Is(err, errBoom) {
				t.Fatalf("Put = %v, want %v", err, errBoom)
			}
			if got := get(t, s, key); string(got) != "old" {
				t.Fatalf("got %q, want %q", got, "old")
			}
		}},
		{"canceled context", func(t *testing.T, s store, prefix string) {
			ctx, cancel := context.WithCancel(t.Context())
			cancel()
			key := prefix + "/obj"
			if err := s.Put(ctx, key, strings.NewReader("x"), 1); err == nil {
				t.Fatal("Put with a canceled context succeeded")
			}
			if got := s.leftovers(t, key); len(got) > 0 {
				t.Fatalf("left behind: %q", got)
			}
		}},
		{"missing key", func(t *testing.T, s store, prefix string) {
			put(t, s, prefix+"/a/obj", []byte("x"), 1)
			for _, key := range []string{
				prefix + "/never",
				prefix + "/a",         // a "directory" of other keys
				prefix + "/a/obj/sub", // below an object
			} {
				wantNotFound(t, s, key)
			}
		}},
		{"delete is idempotent", func(t *testing.T, s store, prefix string) {
			key := prefix + "/obj"
			put(t, s, key, []byte("x"), 1)
			for range 2 {
				if err := s.Delete(t.Context(), key); err != nil {
					t.Fatalf("Delete: %v", err)
				}
				wantNotFound(t, s, key)
			}
			if err := s.Delete(t.Context(), prefix+"/never"); err != nil {
				t.Fatalf("Delete of a never stored key: %v", err)
			}
		}},
		{"invalid keys refused", func(t *testing.T, s store, prefix string) {
			ctx := t.Context()
			for _, key := range []string{
				"", "/abs", "../up", prefix + "/../up", prefix + "//x",
				prefix + "/", prefix + "/./x", ".", prefix + `\x`,
			} {
				errs := map[string]error{"Put": s.Put(ctx, key, strings.NewReader("x"), 1)}
				_, _, errs["Open"] = s.Open(ctx, key)
				_, errs["OpenRange"] = s.OpenRange(ctx, key, 0, 1)
				_, errs["Stat"] = s.Stat(ctx, key)
				errs["Delete"] = s.Delete(ctx, key)
				for op, err := range errs {
					if err == nil || errors.Is(err, blob.ErrNotFound) {
						t.Errorf("%s(%q) = %v, want an invalid key error", op, key, err)
					}
				}
			}
		}},
	}

	for _, impl := range impls {
		t.Run(impl.name, func(t *testing.T) {
			s := impl.new(t)
			for _, b := range behaviours {
				t.Run(b.name, func(t *testing.T) {
					b.run(t, s, strings.ReplaceAll(b.name, " ", "-"))
				})
			}
		})
	}
}

// source is how roundTrip hands its bytes to Put.
type source int

const (
	knownSize   source = iota // a plain reader and its size
	unknownSize               // a plain reader, size -1
	fromFile                  // an *os.File, which minio-go reads with ReadAt
)

// roundTrip stores n deterministic bytes and reads them back. Plain readers
// hide ReaderAt so no implementation can take a shortcut around streaming.
func roundTrip(n int64, src source) func(t *testing.T, s store, prefix string) {
	return func(t *testing.T, s store, prefix string) {
		key := prefix + "/model.gguf"
		want := sha256.New()
		r, size := io.TeeReader(random(n), want), int64(-1)
		switch src {
		case knownSize:
			size = n
		case fromFile:
			f, err := os.Create(filepath.Join(t.TempDir(), "src"))
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if _, err := io.Copy(f, r); err != nil {
				t.Fatal(err)
			}
			if _, err := f.Seek(0, io.SeekStart); err != nil {
				t.Fatal(err)
			}
			r, size = f, n
		}
		if err := s.Put(t.Context(), key, r, size); err != nil {
			t.Fatalf("Put: %v", err)
		}
		if got, err := s.Stat(t.Context(), key); err != nil || got != n {
			t.Fatalf("Stat = %d, %v; want %d", got, err, n)
		}
		rc, gotSize, err := s.Open(t.Context(), key)
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		defer rc.Close()
		got := sha256.New()
		read, err := io.Copy(got, rc)
		if err != nil {
			t.Fatalf("reading: %v", err)
		}
		if gotSize != n || read != n {
			t.Fatalf("Open size %d, read %d bytes; want %d", gotSize, read, n)
		}
		if !bytes.Equal(got.Sum(nil), want.Sum(nil)) {
			t.Fatal("content read back differs from content stored")
		}
	}
}

// ranges reads parts of a stored object with OpenRange: any range inside
// the object gives exactly its bytes, a range past the end fails instead of
// returning fewer bytes, and a missing key is ErrNotFound.
func ranges(t *testing.T, s store, prefix string) {
	const size = 3<<20 + 17
	key := prefix + "/model.gguf"
	data, err := io.ReadAll(random(size))
	if err != nil {
		t.Fatal(err)
	}
	put(t, s, key, data, size)
	for _, r := range []struct{ off, n int64 }{
		{0, 1}, {0, size}, {1 << 20, 1 << 20}, {size - 1, 1}, {12345, 2<<20 + 3},
	} {
		rc, err := s.OpenRange(t.Context(), key, r.off, r.n)
		if err != nil {
			t.Fatalf("OpenRange(%d, %d): %v", r.off, r.n, err)
		}
		got, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			t.Fatalf("reading range (%d, %d): %v", r.off, r.n, err)
		}
		if !bytes.Equal(got, data[r.off:r.off+r.n]) {
			t.Fatalf("range (%d, %d): got %d bytes that differ from the object's", r.off, r.n, len(got))
		}
	}
	for _, r := range []struct{ off, n int64 }{{size - 10, 11}, {size, 1}, {size + 100, 5}} {
		rc, err := s.OpenRange(t.Context(), key, r.off, r.n)
		if err == nil {
			_, err = io.ReadAll(rc)
			rc.Close()
		}
		if err == nil || errors.Is(err, blob.ErrUnavailable) {
			t.Errorf("range (%d, %d) past the end of a %d-byte object: %v, want a lasting error", r.off, r.n, size, err)
		}
	}
	for _, r := range []struct{ off, n int64 }{{-1, 5}, {0, 0}, {5, -1}} {
		if rc, err := s.OpenRange(t.Context(), key, r.off, r.n); err == nil {
			rc.Close()
			t.Errorf("OpenRange(%d, %d) succeeded", r.off, r.n)
		}
	}
	if _, err := s.OpenRange(t.Context(), prefix+"/never", 0, 1); !errors.Is(err, blob.ErrNotFound) {
		t.Errorf("OpenRange of a missing key = %v, want ErrNotFound", err)
	}
}

// failedPut stores a reader that breaks after failAt of total bytes and
// checks that Put reports the reader's error and left nothing behind.
func failedPut(total, failAt int64, src source) func(t *testing.T, s store, prefix string) {
	return func(t *testing.T, s store, prefix string) {
		key := prefix + "/model.gguf"
		size := int64(-1)
		if src == knownSize {
			size = total
		}
		err := s.Put(t.Context(), key, &failingReader{r: random(total), n: failAt}, size)
		if !errors.Is(err, errBoom) {
			t.Fatalf("Put = %v, want %v", err, errBoom)
		}
		wantNotFound(t, s, key)
		if got := s.leftovers(t, key); len(got) > 0 {
			t.Fatalf("left behind: %q", got)
		}
	}
}

func put(t *testing.T, s store, key string, data []byte, size int64) {
	t.Helper()
	if err := s.Put(t.Context(), key, bytes.NewReader(data), size); err != nil {
		t.Fatalf("Put(%q): %v", key, err)
	}
}

func get(t *testing.T, s store, key string) []byte {
	t.Helper()
	rc, size, err := s.Open(t.Context(), key)
	if err != nil {
		t.Fatalf("Open(%q): %v", key, err)
	}
	defer rc.Close()
	data, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("reading %q: %v", key, err)
	}
	if int64(len(data)) != size {
		t.Fatalf("Open(%q) said %d bytes, read %d", key, size, len(data))
	}
	return data
}

func wantNotFound(t *testing.T, s store, key string) {
	t.Helper()
	if _, err := s.Stat(t.Context(), key); !errors.Is(err, blob.ErrNotFound) {
		t.Errorf("Stat(%q) = %v, want ErrNotFound", key, err)
	}
	rc, _, err := s.Open(t.Context(), key)
	if err == nil {
		rc.Close()
	}
	if !errors.Is(err, blob.ErrNotFound) {
		t.Errorf("Open(%q) = %v, want ErrNotFound", key, err)
	}
}

// random returns n deterministic pseudo-random bytes, generated as read so
// that large objects never sit in the test's memory either.
func random(n int64) io.Reader {
	return io.LimitReader(rand.NewChaCha8([32]byte{'i', 'n', 'f', 'e', 'r'}), n)
}

// failingReader passes n bytes of r through, then fails with errBoom.
type failingReader struct {
	r io.Reader
	n int64
}

func (f *failingReader) Read(p []byte) (int, error) {
	if f.n <= 0 {
		return 0, errBoom
	}
	if int64(len(p)) > f.n {
		p = p[:f.n]
	}
	n, err := f.r.Read(p)
	f.n -= int64(n)
	return n, err
}
