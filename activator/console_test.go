package activator

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/infer-run/infer/internal/testenv"
)

// TestConsoleServed checks what the browser gets from / and /console/*:
// the page, its files with their types, a CSP that allows nothing but this
// origin, gzip when asked, 304 on a matching ETag, and a first load under
// the 300 KB. The console's behaviour in a browser is tested by
// cmd/infer's TestConsoleInBrowser.
func TestConsoleServed(t *testing.T) {
	nc, err := nats.Connect(testenv.NATS(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	srv, err := New(Config{NATS: nc, Logger: slog.Default()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(hs.Close)

	get := func(path string, header ...string) (*http.Response, []byte) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, hs.URL+path, nil)
		for i := 0; i+1 < len(header); i += 2 {
			req.Header.Set(header[i], header[i+1])
		}
		// A transport that does not ask for gzip itself, so that what is
		// sent is what is counted.
		resp, err := (&http.Transport{DisableCompression: true}).RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp, b
	}

	resp, page := get("/")
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") {
		t.Fatalf("GET /: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	csp := resp.Header.Get("Content-Security-Policy")
	for _, want := range []string{"default-src 'none'", "script-src 'self'", "connect-src 'self'", "frame-ancestors 'none'"} {
		if !strings.Contains(csp, want) {
			t.Errorf("CSP %q lacks %q", csp, want)
		}
	}
	if strings.Contains(csp, "unsafe-inline") || strings.Contains(csp, "http") {
		t.Errorf("CSP %q allows inline code or another origin", csp)
	}
	// Everything the page loads is ours: no other origin, no inline script.
	if bytes.Contains(page, []byte("://")) {
		t.Errorf("index.html names another origin:\n%s", page)
	}
	if regexp.MustCompile(`<script(\s[^>]*)?>[^<]`).Match(page) {
		t.Error("index.html has an inline script, which the CSP forbids")
	}

	refs := regexp.MustCompile(`(?:src|href)="(/console/[^"]+)"`).FindAllSubmatch(page, -1)
	if len(refs) < 3 {
		t.Fatalf("index.html loads %d files, want the script, the stylesheet and the icon", len(refs))
	}
	types := map[string]string{".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
	first, _ := get("/", "Accept-Encoding", "gzip, deflate, br")
	transferred := first.ContentLength
	seen := map[string]bool{}
	for _, m := range refs {
		path := string(m[1])
		if seen[path] {
			continue
		}
		seen[path] = true
		plainResp, plain := get(path)
		if plainResp.StatusCode != 200 {
			t.Fatalf("GET %s: %d", path, plainResp.StatusCode)
		}
		for ext, ct := range types {
			if strings.HasSuffix(path, ext) && !strings.HasPrefix(plainResp.Header.Get("Content-Type"), ct) {
				t.Errorf("%s: Content-Type %q, want %s", path, plainResp.Header.Get("Content-Type"), ct)
			}
		}
		gzResp, gz := get(path, "Accept-Encoding", "gzip, deflate, br")
		if gzResp.Header.Get("Content-Encoding") != "gzip" {
			t.Fatalf("GET %s with gzip accepted: Content-Encoding %q", path, gzResp.Header.Get("Content-Encoding"))
		}
		zr, err := gzip.NewReader(bytes.NewReader(gz))
		if err != nil {
			t.Fatal(err)
		}
		unzipped, err := io.ReadAll(zr)
		if err != nil || !bytes.Equal(unzipped, plain) {
			t.Fatalf("%s gzipped is not the file (%v)", path, err)
		}
		transferred += int64(len(gz))
		// A revalidation with the ETag costs no body.
		again, body := get(path, "If-None-Match", plainResp.Header.Get("ETag"))
		if again.StatusCode != http.StatusNotModified || len(body) != 0 {
			t.Errorf("GET %s with its ETag: %d, %d bytes; want 304 and none", path, again.StatusCode, len(body))
		}
	}
	const budget = 300 << 10
	t.Logf("first load: %d bytes transferred (gzip) for / and %d files", transferred, len(seen))
	if transferred > budget {
		t.Errorf("the console's first load transfers %d bytes, over the %d budget", transferred, budget)
	}

	// An unknown file is a 404 in the API's error shape.
	resp, body := get("/console/nope.js")
	var e struct {
		Error struct{ Message, Type string }
	}
	if resp.StatusCode != 404 || json.Unmarshal(body, &e) != nil || e.Error.Type == "" {
		t.Errorf("GET /console/nope.js: %d %s", resp.StatusCode, body)
	}
}

func TestAcceptsGzip(t *testing.T) {
	for _, tt := range []struct {
		header string
		want   bool
	}{
		{"", false},
		{"gzip", true},
		{"gzip, deflate, br, zstd", true},
		{"br;q=1.0, GZIP;q=0.5", true},
		{"gzip;q=0", false},
		{"gzip; q=0.000", false},
		{"deflate", false},
		{"x-gzip", false},
	} {
		if got := acceptsGzip(tt.header); got != tt.want {
			t.Errorf("acceptsGzip(%q) = %v, want %v", tt.header, got, tt.want)
		}
	}
}
