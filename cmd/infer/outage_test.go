package main

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// cuttableProxy forwards TCP connections from a fixed local port to a
// target. Cut closes its listener and every live connection — to the
// components behind it the target is gone, as when a shared service that
// the test may not stop goes down; Restore listens again on the same port.
type cuttableProxy struct {
	t      *testing.T
	addr   string
	target string

	mu    sync.Mutex
	l     net.Listener
	conns map[net.Conn]struct{}
}

func newCuttableProxy(t *testing.T, target string) *cuttableProxy {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cuttableProxy{t: t, addr: l.Addr().String(), target: target, conns: map[net.Conn]struct{}{}}
	p.serve(l)
	t.Cleanup(p.Cut)
	return p
}

func (p *cuttableProxy) serve(l net.Listener) {
	p.mu.Lock()
	p.l = l
	p.mu.Unlock()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", p.target)
			if err != nil {
				c.Close()
				continue
			}
			if !p.track(c, up) {
				continue
			}
			go func() { io.Copy(up, c); up.Close() }()
			go func() { io.Copy(c, up); c.Close() }()
		}
	}()
}

// track registers a connection pair unless the proxy was cut meanwhile.
func (p *cuttableProxy) track(cs ...net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.l == nil {
		for _, c := range cs {
			c.Close()
		}
		return false
	}
	for _, c := range cs {
		p.conns[c] = struct{}{}
	}
	return true
}

func (p *cuttableProxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.l != nil {
		p.l.Close()
		p.l = nil
	}
	for c := range p.conns {
		c.Close()
	}
	clear(p.conns)
}

func (p *cuttableProxy) Restore() {
	p.t.Helper()
	var l net.Listener
	var err error
	// The port was ours a moment ago; retry briefly in case the kernel
	// has not released it.
	for i := 0; i < 50; i++ {
		if l, err = net.Listen("tcp", p.addr); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		p.t.Fatalf("proxy listening again on %s: %v", p.addr, err)
	}
	p.serve(l)
}

// openAIErrorBody is OpenAI's error body.
type openAIErrorBody struct {
	Error struct {
		Message string  `json:"message"`
		Type    string  `json:"type"`
		Code    *string `json:"code"`
	} `json:"error"`
}

func decodeAPIError(t *testing.T, resp *http.Response) openAIErrorBody {
	t.Helper()
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var e openAIErrorBody
	if err := json.Unmarshal(b, &e); err != nil || e.Error.Message == "" || e.Error.Type == "" {
		t.Errorf("status %d with body %q: not an OpenAI error", resp.StatusCode, b)
	}
	return e
}

// postgresOutage is how long TestPostgresOutage keeps Postgres away: the
// 30 s of the reliability issue, longer than pgx's and the cache's retry
// intervals, so the components see a real outage and not a blip.
const postgresOutage = 30 * time.Second

// TestPostgresOutage: with Postgres unreachable for postgresOutage, a warm
// deployment keeps serving from the activator's cache, management APIs
// answer 503 in OpenAI's shape, and the usage records of the requests
// served meanwhile reach Postgres once it is back, each exactly once.
func TestPostgresOutage(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and starts MinIO")
	}
	var proxy *cuttableProxy
	p := startPlatformWith(t, platformOptions{dbAddr: func(direct string) string {
		proxy = newCuttableProxy(t, direct)
		return proxy.addr
	}})
	p.deployStories("--idle-timeout", "5m")
	const call = `{"model":"stories","prompt":"Once upon a time","max_tokens":8}`
	served := 0
	serve := func(when string) {
		t.Helper()
		p.mustPost(when, "/v1/completions", call)
		served++
	}
	serve("warm-up")

	proxy.Cut()
	cutAt := time.Now()
	for time.Since(cutAt) < postgresOutage {
		serve("during the Postgres outage")
		for _, c := range []struct{ method, path, body string }{
			{http.MethodPut, "/v1/deployments/other", `{"artifact":"` + strings.Repeat("0", 64) + `"}`},
			{http.MethodPost, "/v1/keys", `{"name":"during-outage"}`},
			{http.MethodGet, "/v1/keys", ``},
		} {
			resp, err := p.request(c.method, c.path, p.key, c.body)
			if err != nil {
				t.Fatalf("%s %s: %v", c.method, c.path, err)
			}
			e := decodeAPIError(t, resp)
			if resp.StatusCode != http.StatusServiceUnavailable {
				t.Fatalf("%s %s during the outage: %d %+v; want 503", c.method, c.path, resp.StatusCode, e.Error)
			}
		}
		time.Sleep(2 * time.Second)
	}
	proxy.Restore()
	serve("after the outage")

	// Every request served left exactly one usage record.
	conn, err := pgx.Connect(context.Background(), p.dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var rows, distinct int
	waitFor(t, 60*time.Second, "usage records after the outage", func() bool {
		err := conn.QueryRow(context.Background(), `SELECT count(*), count(DISTINCT request_id) FROM usage WHERE deployment = 'stories'`).Scan(&rows, &distinct)
		return err == nil && rows >= served
	})
	if rows != served || distinct != served {
		t.Errorf("%d requests served, %d usage rows (%d distinct); want one each", served, rows, distinct)
	}
	// Management works again.
	resp, err := p.request(http.MethodGet, "/v1/keys", p.key, ``)
	if err != nil || resp.StatusCode != 200 {
		t.Errorf("listing keys after the outage: %v %v", resp, err)
	}
	if resp != nil {
		resp.Body.Close()
	}
}

// TestObjectStoreDownDuringColdStart: a deployment at zero whose weights
// are not cached cannot start while the object store is down. That may
// pass, so its queued request waits out its whole queue timeout while the
// control plane keeps starting runners with backoff, and then fails with
// 504 queue_timeout naming the store, in OpenAI's shape; once the store is
// back the next request is served.
func TestObjectStoreDownDuringColdStart(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and starts MinIO")
	}
	var proxy *cuttableProxy
	p := startPlatformWith(t, platformOptions{s3Addr: func(direct string) string {
		proxy = newCuttableProxy(t, direct)
		return proxy.addr
	}})
	const queueTimeout = 15 * time.Second
	p.deployStories("--idle-timeout", "5m", "--queue-timeout", queueTimeout.String())
	proxy.Cut()
	start := time.Now()
	resp, err := p.post("/v1/completions", p.key, `{"model":"stories","prompt":"Once","max_tokens":4}`)
	if err != nil {
		t.Fatal(err)
	}
	waited := time.Since(start)
	e := decodeAPIError(t, resp)
	t.Logf("failed after %s with %d %s", waited.Round(time.Millisecond), resp.StatusCode, e.Error.Message)
	if resp.StatusCode != http.StatusGatewayTimeout || e.Error.Code == nil || *e.Error.Code != "queue_timeout" || !strings.Contains(e.Error.Message, "object store unavailable") {
		t.Errorf("request while the object store is down: %d %+v; want 504 queue_timeout naming the object store", resp.StatusCode, e.Error)
	}
	// The request was held for its queue timeout, not answered early
	// because starts failed, nor held past it.
	if waited < queueTimeout-200*time.Millisecond || waited > queueTimeout+3*time.Second {
		t.Errorf("failed after %s; want the queue timeout, %s", waited, queueTimeout)
	}
	// Meanwhile the control plane kept trying.
	starts := metric(p, `infer_runner_starts_total{deployment="stories"}`)
	failures := metric(p, `infer_runner_failures_total{deployment="stories"}`)
	t.Logf("%v runners started, %v reported failing, while the store was down", starts, failures)
	if starts < 2 || failures < 2 {
		t.Errorf("%v runners started and %v failed during the outage; want at least 2 attempts", starts, failures)
	}

	proxy.Restore()
	p.mustPost("first request after the object store is back", "/v1/completions", `{"model":"stories","prompt":"Once","max_tokens":4}`)
}
