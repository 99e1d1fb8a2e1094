package activator_test

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/infer-run/infer/activator"
	"github.com/infer-run/infer/internal/testenv"
)

// TestJobOverMaxPayload: against a NATS server with a 64 KiB max_payload,
// requests under the HTTP limit whose job is over it (a prompt of
// characters JSON escapes 6-fold, a long stop string) are refused at once
// with 413 naming the limit, sync and async, rather than retried as if
// NATS were down until the queue timeout (30 s here; the client gives up
// after 10). A request whose job fits is queued.
func TestJobOverMaxPayload(t *testing.T) {
	h := newHarness(t)
	const maxPayload = 64 << 10
	ns := testenv.StartNATS(t, &server.Options{MaxPayload: maxPayload})
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	url, _ := h.startActivator(activator.Config{NATS: nc})
	if code, _, body := call(t, url, adminKey, http.MethodPut, "/v1/deployments/small", `{"artifact":"`+h.art.SHA256+`","queue_timeout":"30s"}`); code != 200 {
		t.Fatalf("deploy: %d %v", code, body)
	}
	// "<" and "&" are one byte as sent and six once Go encodes the job
	// (\u003c): a 12 KB body becomes a 72 KB job.
	lt := strings.Repeat("<", 12000)
	big := map[string]string{
		"prompt":   `{"model":"small","prompt":"` + lt + `","max_tokens":1}`,
		"messages": `{"model":"small","messages":[{"role":"user","content":"` + lt + `"}],"max_tokens":1}`,
		"stop":     `{"model":"small","prompt":"a","stop":"` + strings.Repeat("&", 12000) + `","max_tokens":1}`,
	}
	client := &http.Client{Timeout: 10 * time.Second}
	post := func(path, body string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPost, url+path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+adminKey)
		req.Header.Set("Content-Type", "application/json")
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("POST %s: %v (retried instead of refused?)", path, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp.StatusCode, string(b)
	}
	for _, tc := range []struct{ path, body string }{
		{"/v1/completions", big["prompt"]},
		{"/v1/chat/completions", big["messages"]},
		{"/v1/completions", big["stop"]},
		{"/v1/async/completions", big["prompt"]},
	} {
		if len(tc.body) > maxPayload {
			t.Fatalf("the body itself (%d bytes) is over max_payload: the test proves nothing", len(tc.body))
		}
		code, b := post(tc.path, tc.body)
		var e apiErr
		json.Unmarshal([]byte(b), &e)
		if code != http.StatusRequestEntityTooLarge || deref(e.Error.Code) != "request_too_large" || !strings.Contains(e.Error.Message, "65536") {
			t.Errorf("POST %s with a %d-byte body: %d %.300s; want 413 request_too_large naming the 65536-byte limit", tc.path, len(tc.body), code, b)
		}
	}
	// A job that fits is queued (async: answered at once).
	if code, b := post("/v1/async/completions", `{"model":"small","prompt":"`+strings.Repeat("<", 5000)+`","max_tokens":1}`); code != http.StatusAccepted {
		t.Errorf("a job under max_payload: %d %s", code, b)
	}
}
