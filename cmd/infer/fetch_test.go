package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/infer-run/infer/internal/testenv"
)

// weightsServer serves one file over real HTTP with http.ServeContent
// (Range, If-Range, ETag as a web server or CDN does them), and can drop
// the connection partway through a response, as a flaky network does.
type weightsServer struct {
	mu      sync.Mutex
	content []byte
	etag    string
	dropAt  int // > 0: the next response is cut after this many body bytes
	status  int // != 0: answer this status instead
	digest  string
	seen    []http.Header
}

func (s *weightsServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.seen = append(s.seen, r.Header.Clone())
	content, etag, drop, status, digest := s.content, s.etag, s.dropAt, s.status, s.digest
	s.dropAt = 0
	s.mu.Unlock()
	if status != 0 {
		http.Error(w, http.StatusText(status), status)
		return
	}
	w.Header().Set("ETag", etag)
	if digest != "" {
		w.Header().Set("Repr-Digest", "sha-256=:"+digest+":")
	}
	if drop > 0 {
		w = &droppingWriter{ResponseWriter: w, left: drop}
	}
	http.ServeContent(w, r, "model.gguf", time.Time{}, bytes.NewReader(content))
}

func (s *weightsServer) requests() []http.Header {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]http.Header(nil), s.seen...)
}

// droppingWriter writes left body bytes, then closes the connection
// under the response: the client has a Content-Length and gets less.
type droppingWriter struct {
	http.ResponseWriter
	left int
}

func (d *droppingWriter) Write(p []byte) (int, error) {
	if len(p) <= d.left {
		d.left -= len(p)
		return d.ResponseWriter.Write(p)
	}
	n, _ := d.ResponseWriter.Write(p[:d.left])
	d.left = 0
	rc := http.NewResponseController(d.ResponseWriter)
	rc.Flush()
	if conn, _, err := rc.Hijack(); err == nil {
		conn.Close()
	}
	return n, errors.New("connection dropped by the test")
}

func storiesBytes(t *testing.T) []byte {
	t.Helper()
	b, err := os.ReadFile(testenv.ModelPath(t))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func sha256Hex(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

func newTestDownloader(t *testing.T, retries int) *downloader {
	return &downloader{dir: filepath.Join(t.TempDir(), "downloads"), retries: retries, retryWait: time.Millisecond}
}

func httpFetch(t *testing.T, d *downloader, url string) (string, string, error) {
	t.Helper()
	s := httpSource{url: url, shown: cacheKeyShown(url), client: http.DefaultClient}
	return d.fetch(context.Background(), url, s)
}

func checkFile(t *testing.T, path string, want []byte) {
	t.Helper()
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("downloaded %d bytes (sha256 %s), want %d (sha256 %s)", len(got), sha256Hex(got), len(want), sha256Hex(want))
	}
}

// TestFetchResumes: a connection dropped halfway leaves a partial file
// that the next run resumes with Range and If-Range from exactly the
// bytes it holds; within one run, retries resume it the same way.
func TestFetchResumes(t *testing.T) {
	content := storiesBytes(t)
	half := len(content) / 2
	for _, retries := range []int{0, 3} {
		srv := &weightsServer{content: content, etag: `"v1"`, dropAt: half}
		ts := httptest.NewServer(srv)
		defer ts.Close()
		d := newTestDownloader(t, retries)
		url := ts.URL + "/models/stories260K.gguf?token=secret-in-query"
		path, sha, err := httpFetch(t, d, url)
		if retries == 0 {
			// The first run fails and says how to go on.
			if err == nil || !strings.Contains(err.Error(), "run the same command again to resume") || strings.Contains(err.Error(), "secret-in-query") {
				t.Fatalf("first run: %v", err)
			}
			if exitCode(err) != exitError {
				t.Errorf("a dropped download exits %d, want %d", exitCode(err), exitError)
			}
			partials, _ := filepath.Glob(filepath.Join(d.dir, "*.partial"))
			if len(partials) != 1 {
				t.Fatalf("partial files %v", partials)
			}
			if st, _ := os.Stat(partials[0]); st.Size() != int64(half) {
				t.Fatalf("partial holds %d bytes, the server sent %d", st.Size(), half)
			}
			path, sha, err = httpFetch(t, d, url)
		}
		if err != nil {
			t.Fatalf("retries %d: %v", retries, err)
		}
		checkFile(t, path, content)
		if sha != sha256Hex(content) {
			t.Errorf("sha256 %s, want %s", sha, sha256Hex(content))
		}
		reqs := srv.requests()
		if len(reqs) != 2 {
			t.Fatalf("retries %d: %d requests, want 2", retries, len(reqs))
		}
		if r := reqs[0].Get("Range"); r != "" {
			t.Errorf("first request asked for Range %q", r)
		}
		if r, ir := reqs[1].Get("Range"), reqs[1].Get("If-Range"); r != "bytes="+strconv.Itoa(half)+"-" || ir != `"v1"` {
			t.Errorf("retries %d: second request Range %q If-Range %q, want bytes=%d- and \"v1\"", retries, r, ir, half)
		}
		if left, _ := filepath.Glob(filepath.Join(d.dir, "*.partial")); len(left) != 0 {
			t.Errorf("partial files left: %v", left)
		}
	}
}

// TestFetchRestartsWhenSourceChanges: when the object's ETag changed since
// the partial download, the server answers If-Range with the whole new
// object, and the old bytes are thrown away.
func TestFetchRestartsWhenSourceChanges(t *testing.T) {
	v1 := storiesBytes(t)
	v2 := bytes.Clone(v1)
	for i := 100; i < len(v2); i += 4096 {
		v2[i] ^= 0xff
	}
	srv := &weightsServer{content: v1, etag: `"v1"`, dropAt: len(v1) / 3}
	ts := httptest.NewServer(srv)
	defer ts.Close()
	d := newTestDownloader(t, 0)
	if _, _, err := httpFetch(t, d, ts.URL+"/m.gguf"); err == nil {
		t.Fatal("the dropped download succeeded")
	}
	srv.mu.Lock()
	srv.content, srv.etag = v2, `"v2"`
	srv.mu.Unlock()
	path, sha, err := httpFetch(t, d, ts.URL+"/m.gguf")
	if err != nil {
		t.Fatal(err)
	}
	checkFile(t, path, v2)
	if sha != sha256Hex(v2) {
		t.Errorf("sha256 %s, want that of v2", sha)
	}
	reqs := srv.requests()
	if ir := reqs[1].Get("If-Range"); ir != `"v1"` {
		t.Errorf("second request If-Range %q, want \"v1\"", ir)
	}
}

// TestFetchRefuses: missing and forbidden URLs, content that is not GGUF
// and bytes that do not match the declared digest are refused with clear
// errors, and leave nothing behind.
func TestFetchRefuses(t *testing.T) {
	content := storiesBytes(t)
	wrong := sha256.Sum256([]byte("other bytes"))
	tests := []struct {
		name     string
		srv      *weightsServer
		wantText string
		wantExit int
	}{
		{"404", &weightsServer{status: http.StatusNotFound}, "not found (HTTP 404)", exitUsage},
		{"403", &weightsServer{status: http.StatusForbidden}, "access denied (HTTP 403)", exitUsage},
		{"not gguf", &weightsServer{content: []byte("<html>" + strings.Repeat("x", 1<<20)), etag: `"h"`}, "not a GGUF file", exitUsage},
		{"digest", &weightsServer{content: content, etag: `"d"`, digest: base64.StdEncoding.EncodeToString(wrong[:])}, "does not match", exitError},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts := httptest.NewServer(tt.srv)
			defer ts.Close()
			d := newTestDownloader(t, 2)
			_, _, err := httpFetch(t, d, ts.URL+"/x.gguf")
			if err == nil || !strings.Contains(err.Error(), tt.wantText) {
				t.Fatalf("error %v, want one saying %q", err, tt.wantText)
			}
			if got := exitCode(err); got != tt.wantExit {
				t.Errorf("exit status %d, want %d", got, tt.wantExit)
			}
			if n := len(tt.srv.requests()); n != 1 {
				t.Errorf("%d requests: a refusal must not be retried", n)
			}
			if left, _ := os.ReadDir(d.dir); len(left) != 0 {
				t.Errorf("left in the downloads directory: %v", left)
			}
		})
	}
}

// TestFetchS3 downloads s3://bucket/key from a real MinIO with the AWS
// environment variables, checks the MD5 ETag, resumes a partial download
// whose ETag matches (its bytes are kept, as shown by deliberately wrong
// ones failing the MD5 check), and says clearly when the key is missing.
func TestFetchS3(t *testing.T) {
	content := storiesBytes(t)
	cfg := testenv.MinIO(t)
	mc, err := minio.New(cfg.Endpoint, &minio.Options{Creds: credentials.NewStaticV4(cfg.AccessKey, cfg.SecretKey, "")})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := mc.MakeBucket(ctx, "models", minio.MakeBucketOptions{}); err != nil {
		t.Fatal(err)
	}
	info, err := mc.PutObject(ctx, "models", "tiny/stories.gguf", bytes.NewReader(content), int64(len(content)), minio.PutObjectOptions{DisableMultipart: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("AWS_ACCESS_KEY_ID", cfg.AccessKey)
	t.Setenv("AWS_SECRET_ACCESS_KEY", cfg.SecretKey)
	t.Setenv("AWS_ENDPOINT_URL", "") // the flag's value is used
	endpoint := "http://" + cfg.Endpoint
	fetch := func(d *downloader, u string) (string, string, error) {
		s, err := newS3Source(u, endpoint)
		if err != nil {
			return "", "", err
		}
		return d.fetch(ctx, u, s)
	}

	d := newTestDownloader(t, 0)
	path, sha, err := fetch(d, "s3://models/tiny/stories.gguf")
	if err != nil {
		t.Fatal(err)
	}
	checkFile(t, path, content)
	if sha != sha256Hex(content) {
		t.Errorf("sha256 %s", sha)
	}

	// A partial download of the same object (same ETag) is resumed: its
	// bytes are kept. Wrong ones make the MD5 check fail, which proves it.
	key, shown := cacheKey("s3://models/tiny/stories.gguf")
	half := len(content) / 2
	bad := bytes.Clone(content[:half])
	bad[half-1] ^= 0xff
	os.WriteFile(filepath.Join(d.dir, key+".partial"), bad, 0o600)
	writeMeta(filepath.Join(d.dir, key+".json"), downloadMeta{Source: shown, ETag: info.ETag, Size: int64(len(content))})
	if _, _, err := fetch(d, "s3://models/tiny/stories.gguf"); err == nil || !strings.Contains(err.Error(), "md5") {
		t.Fatalf("resuming after wrong bytes: %v, want an MD5 mismatch", err)
	}
	// The same with the right bytes completes the file.
	os.WriteFile(filepath.Join(d.dir, key+".partial"), content[:half], 0o600)
	writeMeta(filepath.Join(d.dir, key+".json"), downloadMeta{Source: shown, ETag: info.ETag, Size: int64(len(content))})
	path, _, err = fetch(d, "s3://models/tiny/stories.gguf")
	if err != nil {
		t.Fatal(err)
	}
	checkFile(t, path, content)

	for _, u := range []string{"s3://models/tiny/missing.gguf", "s3://no-such-bucket/stories.gguf"} {
		_, _, err = fetch(d, u)
		if err == nil || !strings.Contains(err.Error(), "not found") || exitCode(err) != exitUsage {
			t.Errorf("%s: %v (exit %d), want not found, exit %d", u, err, exitCode(err), exitUsage)
		}
	}
	t.Setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
	_, _, err = fetch(d, "s3://models/tiny/stories.gguf")
	if err == nil || !strings.Contains(err.Error(), "access denied") || exitCode(err) != exitUsage {
		t.Errorf("wrong secret: %v (exit %d), want access denied, exit %d", err, exitCode(err), exitUsage)
	}
}

// TestFetchDeclaredDigest: a source that declares its sha256 is not
// downloaded when the server holds it, and is checked against it when not.
func TestFetchDeclaredDigest(t *testing.T) {
	content := storiesBytes(t)
	sum := sha256.Sum256(content)
	srv := &weightsServer{content: content, etag: `"e"`, digest: base64.StdEncoding.EncodeToString(sum[:])}
	ts := httptest.NewServer(srv)
	defer ts.Close()
	for _, held := range []bool{true, false} {
		d := newTestDownloader(t, 0)
		var asked string
		d.held = func(_ context.Context, sha string) (bool, error) { asked = sha; return held, nil }
		path, sha, err := httpFetch(t, d, ts.URL+"/m.gguf")
		if err != nil {
			t.Fatal(err)
		}
		if asked != sha256Hex(content) || sha != asked {
			t.Errorf("held %v: asked about %q, returned %q; want %s", held, asked, sha, sha256Hex(content))
		}
		if held {
			if path != "" {
				t.Errorf("held weights were downloaded to %s", path)
			}
			if left, _ := filepath.Glob(filepath.Join(d.dir, "*.partial")); len(left) != 0 {
				t.Errorf("left: %v", left)
			}
			continue
		}
		checkFile(t, path, content)
	}
}

// TestFetchLocked: a second run on the same source while one downloads is
// refused instead of appending to the same file.
func TestFetchLocked(t *testing.T) {
	content := storiesBytes(t)
	ts := httptest.NewServer(&weightsServer{content: content, etag: `"e"`})
	defer ts.Close()
	d := newTestDownloader(t, 0)
	os.MkdirAll(d.dir, 0o700)
	key, _ := cacheKey(ts.URL + "/m.gguf")
	f, err := os.OpenFile(filepath.Join(d.dir, key+".lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	if _, _, err := httpFetch(t, d, ts.URL+"/m.gguf"); err == nil || !strings.Contains(err.Error(), "another infer is downloading") {
		t.Fatalf("fetch under another's lock: %v", err)
	}
	f.Close()
	path, _, err := httpFetch(t, d, ts.URL+"/m.gguf")
	if err != nil {
		t.Fatal(err)
	}
	checkFile(t, path, content)
}

// TestFetchServerWithoutRanges: a server that ignores Range (as Python's
// http.server does) sends the whole file again; the partial bytes are
// replaced, not appended to, and the note says why.
func TestFetchServerWithoutRanges(t *testing.T) {
	content := storiesBytes(t)
	var mu sync.Mutex
	requests := 0
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		requests++
		first := requests == 1
		mu.Unlock()
		w.Header().Set("Last-Modified", "Fri, 04 Dec 2026 10:00:00 GMT")
		w.Header().Set("Content-Length", strconv.Itoa(len(content)))
		var out http.ResponseWriter = w
		if first {
			out = &droppingWriter{ResponseWriter: w, left: len(content) / 2}
		}
		out.Write(content)
	}))
	defer ts.Close()
	d := newTestDownloader(t, 1)
	var notes bytes.Buffer
	d.notes = &notes
	path, _, err := httpFetch(t, d, ts.URL+"/m.gguf")
	if err != nil {
		t.Fatal(err)
	}
	checkFile(t, path, content)
	if !strings.Contains(notes.String(), "does not resume downloads") {
		t.Errorf("notes:\n%s", notes.String())
	}
}
