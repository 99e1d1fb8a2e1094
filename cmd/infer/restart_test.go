package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/infer-run/infer/internal/testenv"
)

// standaloneActivator is an `infer activator` process next to a platform,
// on the same NATS and Postgres, as a second replica behind a load
// balancer would be.
type standaloneActivator struct {
	url string
	pid int
	log string
	// exited is closed when the process has exited, with exitErr.
	exited  chan struct{}
	exitErr error
}

// startActivator runs `infer activator` with more flags against p's NATS,
// Postgres and object store, and waits until it is healthy.
func (p *platform) startActivator(flags ...string) *standaloneActivator {
	t := p.t
	t.Helper()
	addr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	args := append([]string{"activator", "--addr", addr, "--metrics-addr", ""}, flags...)
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, p.bin, args...)
	cmd.Env = append(p.env, "INFER_HOME="+filepath.Join(t.TempDir(), "activator"))
	logFile, err := os.Create(filepath.Join(t.TempDir(), "activator.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	cmd.WaitDelay = 20 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	a := &standaloneActivator{url: "http://" + addr, pid: cmd.Process.Pid, log: logFile.Name(), exited: make(chan struct{})}
	go func() {
		a.exitErr = cmd.Wait()
		close(a.exited)
	}()
	t.Cleanup(func() {
		cancel()
		<-a.exited
		logFile.Close()
		if t.Failed() {
			b, _ := os.ReadFile(a.log)
			t.Logf("infer activator log:\n%s", lastLines(string(b), 60))
		}
	})
	waitFor(t, 60*time.Second, "infer activator healthy", func() bool {
		resp, err := http.Get(a.url + "/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	return a
}

// openStreamTo posts a completion stream to base and returns the response
// once its headers are in.
func (p *platform) openStreamTo(base, body string) *http.Response {
	t := p.t
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, base+"/v1/completions", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+p.key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := (&http.Client{Timeout: 2 * time.Minute}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("stream through %s: %d %s", base, resp.StatusCode, b)
	}
	return resp
}

// sseEnd is how a stream ended after SIGTERM to its activator.
type sseEnd struct {
	rest string
	err  error
	at   time.Time
}

func readToEnd(r io.Reader) <-chan sseEnd {
	c := make(chan sseEnd, 1)
	go func() {
		b, err := io.ReadAll(r)
		c <- sseEnd{string(b), err, time.Now()}
	}()
	return c
}

// TestActivatorRestart: SIGTERM to one of two activators (a standalone
// `infer activator` next to `infer dev`) while it holds a stream that is
// generating, a stream still queued behind it and an async job. The
// queued stream ends at once with an activator_shutting_down error event,
// the generating one completes or gets that event when --shutdown-grace is
// over (never a bare cut), the process exits 0 soon after, and the async
// job, which waited in B's fair gate and is recorded in JetStream, is
// queued by the other activator, completes and is read from it.
func TestActivatorRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and starts MinIO")
	}
	p := startPlatform(t)
	// One slot, one runner: the second request queues behind the first,
	// and a context this long keeps the first generating past the grace.
	// stories260K was trained on 2048 tokens, too few (a longer context
	// is refused); llama3-tiny has 8192 and never ends on its own.
	tiny := filepath.Join(filepath.Dir(testenv.ModelPath(t)), "llama3-tiny.gguf")
	if out, err := p.cli("deploy", "stories", "--weights", tiny, "--parallel", "1", "--max-runners", "1", "--context", "8192", "--idle-timeout", "60s"); err != nil {
		t.Fatalf("infer deploy: %v\n%s", err, out)
	}
	const grace = 3 * time.Second
	b := p.startActivator("--shutdown-grace", grace.String())

	generating := p.openStreamTo(b.url, `{"model":"stories","prompt":"Once upon a time","temperature":1.5,"seed":3,"stream":true}`)
	br := testenv.UntilFirstToken(t, generating.Body)
	generatingEnd := readToEnd(br)
	// Through B as well: a stream queued behind it, and an async job.
	queuedStream := p.openStreamTo(b.url, `{"model":"stories","prompt":"Queued","max_tokens":8,"stream":true}`)
	queuedEnd := readToEnd(queuedStream.Body)
	req, _ := http.NewRequest(http.MethodPost, b.url+"/v1/async/completions", strings.NewReader(`{"model":"stories","prompt":"Async","max_tokens":8}`))
	req.Header.Set("Authorization", "Bearer "+p.key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var job struct {
		ID string `json:"id"`
	}
	if resp.StatusCode != 200 && resp.StatusCode != 202 || json.Unmarshal(body, &job) != nil || job.ID == "" {
		t.Fatalf("async job through B: %d %s", resp.StatusCode, body)
	}
	// The stream is queued behind the generating one; the async job waits
	// in B's fair-sharing gate (a window of 2 places, both taken),
	// recorded but not yet queued: B hands it over as it stops, and the
	// other activator queues it.
	waitFor(t, 30*time.Second, "a request queued", func() bool {
		_, _, b := p.do(http.MethodGet, "/v1/deployments/stories", p.key, "")
		var d struct {
			Queued int `json:"queued"`
		}
		json.Unmarshal(b, &d)
		return d.Queued >= 1
	})

	if err := syscall.Kill(b.pid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	sent := time.Now()

	select {
	case r := <-queuedEnd:
		if r.err != nil || !strings.Contains(r.rest, "event: error") || !strings.Contains(r.rest, "activator_shutting_down") || !strings.HasSuffix(r.rest, "data: [DONE]\n\n") {
			t.Errorf("queued stream after SIGTERM (read error %v): %q; want an activator_shutting_down error event, then [DONE]", r.err, lastLines(r.rest, 4))
		}
		if d := r.at.Sub(sent); d > grace {
			t.Errorf("the queued stream ended %s after SIGTERM; want it at once, not after the %s grace", d, grace)
		}
		t.Logf("queued stream ended %s after SIGTERM", r.at.Sub(sent).Round(time.Millisecond))
	case <-time.After(grace + 10*time.Second):
		t.Fatal("the queued stream is still open after SIGTERM")
	}
	select {
	case r := <-generatingEnd:
		finished := strings.Contains(r.rest, `"finish_reason":"`) && !strings.Contains(r.rest, "event: error")
		shutDown := strings.Contains(r.rest, "event: error") && strings.Contains(r.rest, "activator_shutting_down")
		if r.err != nil || !(finished || shutDown) || !strings.HasSuffix(r.rest, "data: [DONE]\n\n") {
			t.Errorf("generating stream after SIGTERM (read error %v): %q; want it finished, or an activator_shutting_down error event, then [DONE]", r.err, lastLines(r.rest, 4))
		}
		t.Logf("generating stream ended %s after SIGTERM (finished normally: %v)", r.at.Sub(sent).Round(time.Millisecond), finished)
	case <-time.After(grace + 10*time.Second):
		t.Fatal("the generating stream is still open well after the grace")
	}
	select {
	case <-b.exited:
		if b.exitErr != nil {
			t.Errorf("infer activator exited with %v after SIGTERM; want status 0", b.exitErr)
		}
		t.Logf("infer activator exited %s after SIGTERM (grace %s)", time.Since(sent).Round(time.Millisecond), grace)
	case <-time.After(grace + 15*time.Second):
		t.Fatal("infer activator still running well after the grace")
	}

	// The async job survives its activator: infer dev's activator answers.
	deadline := time.Now().Add(90 * time.Second)
	for {
		code, _, body := p.do(http.MethodGet, "/v1/async/"+job.ID, p.key, "")
		var st struct {
			Status string `json:"status"`
		}
		json.Unmarshal(body, &st)
		if code != 200 {
			t.Fatalf("GET /v1/async/%s from the other activator: %d %s", job.ID, code, body)
		}
		if st.Status == "succeeded" {
			break
		}
		if st.Status == "failed" || time.Now().After(deadline) {
			t.Fatalf("async job accepted by the stopped activator: %s", body)
		}
		time.Sleep(200 * time.Millisecond)
	}
	// And the deployment serves on.
	p.mustPost("request after the activator stopped", "/v1/completions", `{"model":"stories","prompt":"After","max_tokens":4}`)
}
