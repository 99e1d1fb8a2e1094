package activator_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/infer-run/infer/activator"
	"github.com/infer-run/infer/internal/testenv"
)

// dialServed opens a raw TCP connection to a served activator.
func dialServed(t *testing.T, url string) net.Conn {
	t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// closedWithin reads from r until the server closes the connection and
// reports how long that took, failing past limit.
func closedWithin(t *testing.T, conn net.Conn, r io.Reader, limit time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	conn.SetReadDeadline(start.Add(limit))
	_, err := io.Copy(io.Discard, r)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatalf("the server kept the connection open for %v", limit)
	}
	return time.Since(start)
}

// TestStalledBodyClosed: a client that sends headers and part of a body,
// then nothing, without an API key, hears its 401 once the body deadline
// passes and the connection is closed. Before, the error path lifted its
// own deadline and net/http waited for the rest of the body for as long as
// the client liked. A stalled body with a key is cut the same way.
func TestStalledBodyClosed(t *testing.T) {
	h := newHarness(t)
	const bodyTimeout = time.Second
	s := h.serveActivator(activator.Config{BodyReadTimeout: bodyTimeout})
	for _, tc := range []struct {
		name, path, auth string
		status           int
	}{
		{"no key", "/v1/completions", "", 401},
		{"wrong key", "/v1/chat/completions", "Authorization: Bearer sk-wrong\r\n", 401},
		// With a key the body is read until its deadline: 408.
		{"admin key, management body", "/v1/keys", "Authorization: Bearer " + adminKey + "\r\n", 408},
		{"admin key, completion", "/v1/completions", "Authorization: Bearer " + adminKey + "\r\n", 408},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conn := dialServed(t, s.url)
			fmt.Fprintf(conn, "POST %s HTTP/1.1\r\nHost: x\r\n%sContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"model\":", tc.path, tc.auth)
			br := bufio.NewReader(conn)
			conn.SetReadDeadline(time.Now().Add(30 * time.Second))
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("no response to a stalled body: %v", err)
			}
			b, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tc.status {
				t.Errorf("stalled body: %d %s, want %d", resp.StatusCode, b, tc.status)
			}
			if d := closedWithin(t, conn, br, 10*bodyTimeout); d > 5*bodyTimeout {
				t.Errorf("closed %v after the response", d)
			}
		})
	}
}

// TestIdleConnectionClosed: a keep-alive connection with no request on it
// is closed after the idle timeout, and one that never sends a whole
// request line is closed after the header timeout.
func TestIdleConnectionClosed(t *testing.T) {
	h := newHarness(t)
	const idle = time.Second
	s := h.serveActivator(activator.Config{IdleTimeout: idle})
	conn := dialServed(t, s.url)
	fmt.Fprintf(conn, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET /healthz: %v %v", resp, err)
	}
	io.Copy(io.Discard, resp.Body)
	closedWithin(t, conn, br, 10*idle)

	// Half a request line: the header timeout (10 s) closes it.
	conn = dialServed(t, s.url)
	fmt.Fprintf(conn, "GET /heal")
	closedWithin(t, conn, conn, 30*time.Second)
}

// TestBodyDeadlineSparesLongRequests: the body deadline bounds reading the
// body only. A weights upload may take longer than it (uploads are
// exempt), and a request may wait and stream for longer than it: the
// deadline is lifted once the body is read, so the server's watch for a
// client hanging up does not end the request.
func TestBodyDeadlineSparesLongRequests(t *testing.T) {
	h := newHarness(t)
	const bodyTimeout = 500 * time.Millisecond
	s := h.serveActivator(activator.Config{BodyReadTimeout: bodyTimeout})

	// An upload sent over four body timeouts.
	model, err := os.ReadFile(testenv.ModelPath(t))
	if err != nil {
		t.Fatal(err)
	}
	model[len(model)-1] ^= 0xff // not the harness's file
	pr, pw := io.Pipe()
	go func() {
		for i, part := 0, len(model)/4+1; i < len(model); i += part {
			pw.Write(model[i:min(i+part, len(model))])
			time.Sleep(bodyTimeout)
		}
		pw.Close()
	}()
	req, _ := http.NewRequest(http.MethodPost, s.url+"/v1/artifacts", pr)
	resp := h.send(adminKey, req)
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Errorf("slow upload: %d %s", resp.StatusCode, b)
	}

	// A stream that waits in the queue (no runner) for six body timeouts
	// and ends with its queue timeout, not cut off.
	h.deploy("waits", map[string]any{"queue_timeout": "3s"})
	start := time.Now()
	req, _ = http.NewRequest(http.MethodPost, s.url+"/v1/completions", strings.NewReader(`{"model":"waits","prompt":"a","stream":true}`))
	req.Header.Set("Content-Type", "application/json")
	resp = h.send(adminKey, req)
	b, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(b), "queue_timeout") {
		t.Errorf("stream after %v: %d %q; want it to end with queue_timeout", time.Since(start), resp.StatusCode, b)
	}
}

// TestBothLengthsClosed: RFC 9112 §6.3. A request with both
// Content-Length and Transfer-Encoding gets a 400 naming the problem and
// its connection is closed, wherever it comes on a keep-alive connection;
// the requests before it on that connection, chunked or not, are served.
func TestBothLengthsClosed(t *testing.T) {
	h := newHarness(t)
	s := h.serveActivator(activator.Config{})
	conn := dialServed(t, s.url)
	br := bufio.NewReader(conn)
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	auth := "Authorization: Bearer " + adminKey + "\r\n"
	send := func(head, body string) *http.Response {
		t.Helper()
		fmt.Fprintf(conn, "%sHost: x\r\n%sContent-Type: application/json\r\n%s", head, auth, body)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("%q: %v", head, err)
		}
		return resp
	}
	keyBody := `{"name":"framing"}`
	for _, r := range []struct{ head, body string }{
		// Chunked alone, then Content-Length alone: fine, kept alive.
		{"POST /v1/keys HTTP/1.1\r\n", fmt.Sprintf("Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n", len(keyBody), keyBody)},
		{"POST /v1/keys HTTP/1.1\r\n", fmt.Sprintf("Content-Length: %d\r\n\r\n%s", len(keyBody), keyBody)},
	} {
		resp := send(r.head, r.body)
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusCreated || resp.Close {
			t.Fatalf("%q: %d close=%v %s", r.body, resp.StatusCode, resp.Close, b)
		}
	}
	// Both: the Content-Length says 4 bytes ("0\r\n\r"), the chunked body
	// is 5; a proxy framing by the length would see "\n" and then GET /
	// as a second request.
	resp := send("POST /v1/keys HTTP/1.1\r\n", "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(b), "ambiguous_framing") || !strings.Contains(string(b), "Transfer-Encoding") {
		t.Errorf("both headers: %d %s; want 400 ambiguous_framing", resp.StatusCode, b)
	}
	if !resp.Close {
		t.Errorf("both headers: the response does not say Connection: close")
	}
	// The pipelined GET is not answered: the connection is closed.
	if n, _ := io.Copy(io.Discard, br); n != 0 {
		t.Errorf("%d more bytes after the 400: the pipelined request was served", n)
	}
}
