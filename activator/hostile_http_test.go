package activator_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/infer-run/infer/internal/testenv"
)

// TestHostileNames: deployment names that try to escape a path, a NATS
// subject or a terminal are refused with a 400 naming the parameter, and
// nothing is stored.
func TestHostileNames(t *testing.T) {
	h := newHarness(t)
	for _, name := range []string{
		"..%2F..%2Fetc", "a%2Fb", "a%5Cb", "..", "a.b", "a%00b", "a%0Ab", "a%1B%5B31mred",
		"a%20b", "a*", "a%3Eb", "%C3%A9t%C3%A9", "UPPER", strings.Repeat("a", 64), "-a", "a_",
	} {
		t.Run(name, func(t *testing.T) {
			resp := h.do(http.MethodPut, "/v1/deployments/"+name, `{"artifact":"`+h.art.SHA256+`"}`)
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			// A name with a path separator may not even reach the handler:
			// then it is the router's 404, also in OpenAI's shape.
			if (resp.StatusCode != 400 && resp.StatusCode != 404) || !strings.Contains(string(b), `"invalid_request_error"`) {
				t.Errorf("PUT %s: %d %s; want a 400 (or the router's 404) in OpenAI's shape", name, resp.StatusCode, b)
			}
		})
	}
	var n int
	h.store.Pool().QueryRow(context.Background(), "SELECT count(*) FROM deployments").Scan(&n)
	if n != 0 {
		t.Errorf("%d deployments stored", n)
	}
}

// TestUploadCutOff: a weights upload whose client disappears midway (the
// body ends before its Content-Length) registers nothing, and the server
// keeps serving.
func TestUploadCutOff(t *testing.T) {
	h := newHarness(t)
	model, err := os.ReadFile(testenv.ModelPath(t))
	if err != nil {
		t.Fatal(err)
	}
	// The harness uploaded the model already; a different file is needed
	// so that a half upload cannot match an existing artifact.
	model = append([]byte{}, model...)
	model[len(model)-1] ^= 0xff
	for _, cut := range []int{100, len(model) / 2, len(model) - 1} {
		t.Run(fmt.Sprint(cut), func(t *testing.T) {
			conn, err := net.Dial("tcp", strings.TrimPrefix(h.url, "http://"))
			if err != nil {
				t.Fatal(err)
			}
			fmt.Fprintf(conn, "POST /v1/artifacts HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Length: %d\r\n\r\n", adminKey, len(model))
			conn.Write(model[:cut])
			conn.(*net.TCPConn).CloseWrite()
			conn.SetReadDeadline(time.Now().Add(30 * time.Second))
			// The body ends early, so the server sees the end of the stream
			// and must say the upload is invalid: a 4xx, which it sends only
			// after the handler decided (so nothing can be registered later).
			resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
			if err != nil || resp.StatusCode < 400 || resp.StatusCode >= 500 {
				t.Errorf("cut-off upload answered %v, %v; want a 4xx", resp, err)
			}
			conn.Close()
		})
	}
	var n int
	h.store.Pool().QueryRow(context.Background(), "SELECT count(*) FROM artifacts").Scan(&n)
	if n != 1 { // the test model uploaded by the harness
		t.Errorf("%d artifacts registered after cut-off uploads, want 1", n)
	}
	resp, err := http.Get(h.url + "/healthz")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("server unhealthy after cut-off uploads: %v", err)
	}
	resp.Body.Close()
}

// TestErrorBodyAnswered: a client that writes its whole body before it
// reads (as many HTTP libraries do) hears the error, a 413 for a body over
// a route's limit or a 401 for a large prompt with a wrong key, rather
// than a connection reset because the server closed with megabytes unread.
// The sizes are above what loopback socket buffers absorb.
func TestErrorBodyAnswered(t *testing.T) {
	h := newHarness(t)
	prompt := func(size int) string { return `{"model":"m","prompt":"` + strings.Repeat("a", size) + `"}` }
	for _, tc := range []struct {
		name, method, path, key, body string
		chunked                       bool
		status                        int
		code                          string
	}{
		{"completion 9MiB", "POST", "/v1/completions", adminKey, prompt(9 << 20), false, 413, "request_too_large"},
		{"completion 24MiB", "POST", "/v1/completions", adminKey, prompt(24 << 20), false, 413, "request_too_large"},
		{"completion chunked 24MiB", "POST", "/v1/completions", adminKey, prompt(24 << 20), true, 413, "request_too_large"},
		{"wrong key 7MiB", "POST", "/v1/completions", "sk-wrong", prompt(7 << 20), false, 401, "invalid_api_key"},
		{"deployment 16MiB", "PUT", "/v1/deployments/big", adminKey, prompt(16 << 20), false, 413, "request_too_large"},
		{"deployment chunked 16MiB", "PUT", "/v1/deployments/big", adminKey, prompt(16 << 20), true, 413, "request_too_large"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conn, err := net.Dial("tcp", strings.TrimPrefix(h.url, "http://"))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(60 * time.Second))
			w := bufio.NewWriter(conn)
			fmt.Fprintf(w, "%s %s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\n", tc.method, tc.path, tc.key)
			if !tc.chunked {
				fmt.Fprintf(w, "Content-Length: %d\r\n\r\n%s", len(tc.body), tc.body)
			} else {
				io.WriteString(w, "Transfer-Encoding: chunked\r\n\r\n")
				for b := tc.body; len(b) > 0; {
					n := min(len(b), 64<<10)
					fmt.Fprintf(w, "%x\r\n%s\r\n", n, b[:n])
					b = b[n:]
				}
				io.WriteString(w, "0\r\n\r\n")
			}
			if err := w.Flush(); err != nil {
				t.Fatalf("writing the body: %v", err)
			}
			resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
			if err != nil {
				t.Fatalf("reading the response: %v", err)
			}
			b, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tc.status || !strings.Contains(string(b), `"`+tc.code+`"`) {
				t.Errorf("got %d %s; want %d %s", resp.StatusCode, b, tc.status, tc.code)
			}
		})
	}
}

// TestDeploymentParams: a deployment refused for one field names that
// field as the error's param, so a client (or the CLI) can point at it.
func TestDeploymentParams(t *testing.T) {
	h := newHarness(t)
	for _, tc := range []struct{ spec, param string }{
		{`"queue_timeout":"500ms"`, "queue_timeout"},
		{`"idle_timeout":"90d"`, ""}, // not a duration at all: the body is refused as a whole
		{`"parallel":0`, "parallel"},
		{`"min_runners":3,"max_runners":2`, "min_runners"},
		{`"resources":{"cpu":"four"}`, "resources.cpu"},
		{`"prices":{"prompt_per_mtok":-1}`, "prices.prompt_per_mtok"},
	} {
		t.Run(tc.param, func(t *testing.T) {
			resp := h.do(http.MethodPut, "/v1/deployments/params", `{"artifact":"`+h.art.SHA256+`",`+tc.spec+`}`)
			var e struct {
				Error struct {
					Type  string
					Param *string
				}
			}
			err := json.NewDecoder(resp.Body).Decode(&e)
			resp.Body.Close()
			param := ""
			if e.Error.Param != nil {
				param = *e.Error.Param
			}
			if err != nil || resp.StatusCode != 400 || e.Error.Type != "invalid_request_error" || param != tc.param {
				t.Errorf("PUT {%s}: %d %+v (%v); want 400 invalid_request_error with param %q", tc.spec, resp.StatusCode, e.Error, err, tc.param)
			}
		})
	}
}
