package runner

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/infer-run/infer/internal/blob"
	"github.com/infer-run/infer/internal/testenv"
)

// TestFetchFailureRetryable: a failed fetch is retryable (Heartbeat.Retry:
// clients keep waiting) when the object store is unreachable or fails on
// its side, and not when retrying would fail the same way.
func TestFetchFailureRetryable(t *testing.T) {
	weights := []byte("GGUF pretend weights")
	sum := sha256.Sum256(weights)
	digest := hex.EncodeToString(sum[:])

	dir, err := blob.NewDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := dir.Put(ctx, "uploads/good.gguf", bytes.NewReader(weights), int64(len(weights))); err != nil {
		t.Fatal(err)
	}
	if err := dir.Put(ctx, "uploads/corrupt.gguf", strings.NewReader("something else"), -1); err != nil {
		t.Fatal(err)
	}
	// An S3 endpoint that answers every request with status.
	answering := func(status int) blob.Store {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(status) }))
		t.Cleanup(srv.Close)
		return s3At(t, strings.TrimPrefix(srv.URL, "http://"))
	}
	// An https endpoint for a server that answers 503 (once reached).
	tlsStore := func(start func(http.Handler) *httptest.Server) blob.Store {
		srv := start(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusServiceUnavailable) }))
		t.Cleanup(srv.Close)
		return s3At(t, "https://"+strings.TrimPrefix(strings.TrimPrefix(srv.URL, "https://"), "http://"))
	}
	tests := []struct {
		name  string
		store blob.Store
		key   string
		retry bool
	}{
		{"store refuses connections", s3At(t, fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))), "uploads/good.gguf", true},
		{"store answers 503", answering(http.StatusServiceUnavailable), "uploads/good.gguf", true},
		{"store answers 403", answering(http.StatusForbidden), "uploads/good.gguf", false},
		// Misconfigurations fail the same way every time.
		{"store's certificate untrusted", tlsStore(httptest.NewTLSServer), "uploads/good.gguf", false},
		{"TLS to a plain HTTP store", tlsStore(httptest.NewServer), "uploads/good.gguf", false},
		{"weights missing", dir, "uploads/gone.gguf", false},
		{"weights do not match their digest", dir, "uploads/corrupt.gguf", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &Cache{Dir: t.TempDir(), Blobs: tt.store}
			_, _, err := c.Fetch(ctx, Artifact{SHA256: digest, ObjectKey: tt.key}, nil)
			if err == nil {
				t.Fatal("fetch succeeded")
			}
			if got := retryable(err); got != tt.retry {
				t.Errorf("retryable(%v) = %v, want %v", err, got, tt.retry)
			}
		})
	}
	// The control: the same cache fetches good weights.
	if _, _, err := (&Cache{Dir: t.TempDir(), Blobs: dir}).Fetch(ctx, Artifact{SHA256: digest, ObjectKey: "uploads/good.gguf"}, nil); err != nil {
		t.Errorf("fetching good weights: %v", err)
	}
}

func s3At(t *testing.T, endpoint string) blob.Store {
	t.Helper()
	s, err := blob.OpenS3(blob.S3Config{Endpoint: endpoint, AccessKey: "key", SecretKey: "secret", Bucket: "infer", Region: "us-east-1"})
	if err != nil {
		t.Fatal(err)
	}
	return s
}
