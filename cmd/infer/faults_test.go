package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"

	"github.com/infer-run/infer/internal/testenv"
)

// The test NATS server requires a user and password, as production's
// should.
const (
	natsUser     = "infer"
	natsPassword = "nats-secret-3f9c1a"
)

// restartableNATS is an external NATS server with JetStream that a test
// can stop and start again (testenv.RestartableNATS).
type restartableNATS struct{ *testenv.RestartableNATS }

func startRestartableNATS(t *testing.T) restartableNATS {
	t.Helper()
	return restartableNATS{testenv.StartRestartableNATS(t, natsserver.Options{JetStream: true, Username: natsUser, Password: natsPassword})}
}

// url carries the credentials, as INFER_NATS_URL does in production.
func (n restartableNATS) url() string {
	return fmt.Sprintf("nats://%s:%s@127.0.0.1:%d", natsUser, natsPassword, n.Port())
}

// TestNATSRestart: requests queued on a deployment at zero survive a
// restart of an external NATS server (JetStream keeps them on disk), and
// the activator, the control plane and the cold-started runner reconnect
// by themselves, so every request completes. The server requires a
// password, which must never reach a log.
func TestNATSRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and starts MinIO")
	}
	n := startRestartableNATS(t)
	// The object store is cut while the requests queue, so no runner can
	// start and take them: across the restart they exist only in
	// JetStream's file store.
	var s3 *cuttableProxy
	p := startPlatformWith(t, platformOptions{nats: n.url(), s3Addr: func(direct string) string {
		s3 = newCuttableProxy(t, direct)
		return s3.addr
	}})
	p.deployStories("--idle-timeout", "30s", "--queue-timeout", "3m")

	s3.Cut()
	const requests = 4
	var wg sync.WaitGroup
	results := make([]string, requests)
	for i := range requests {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = storyResult(p, i)
		}()
	}
	// Restart NATS while the requests wait for the cold start.
	waitFor(t, 30*time.Second, "requests queued", func() bool { return queued(p, "stories") >= requests })
	n.Stop()
	time.Sleep(2 * time.Second)
	n.Start()
	s3.Restore()
	wg.Wait()
	for i, r := range results {
		if !strings.HasPrefix(r, "200 ") {
			t.Errorf("request %d after the NATS restart: %s", i, r)
		}
	}

	// Everything reconnected: a new request is served too.
	p.mustPost("request after the restart", "/v1/completions", `{"model":"stories","prompt":"After","max_tokens":4}`)
	assertNoSecretsLogged(t, p, natsPassword)
	// Nor is it on a runner's command line, which every local user can read.
	for _, pid := range p.runnerPIDs("stories") {
		if b, _ := os.ReadFile(filepath.Join("/proc", pid, "cmdline")); strings.Contains(string(b), natsPassword) {
			t.Errorf("runner %s has the NATS password on its command line", pid)
		}
	}
}

// TestNATSRestartWarmRunner: a runner that is up and serving when an
// external NATS server restarts reconnects by itself and serves the
// requests sent while NATS was down and after it came back: every one is
// answered 200, by the same runner process (same PID and runner ID, and
// no other runner ever appears), so it was not replaced. The control plane
// reconnects too: it records the requests' usage, and a second deployment
// cold-starts after the restart. JetStream's file store (the test server
// keeps its store directory across the restart) holds the jobs queued
// meanwhile. TestNATSRestart covers a runner that cold-starts after the
// restart.
func TestNATSRestartWarmRunner(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and starts MinIO")
	}
	n := startRestartableNATS(t)
	p := startPlatformWith(t, platformOptions{nats: n.url()})
	p.deployStories("--min-runners", "1", "--max-runners", "1", "--idle-timeout", "10m", "--queue-timeout", "3m")
	p.mustPost("request before the restart", "/v1/completions", `{"model":"stories","prompt":"Before","max_tokens":4}`)
	pids := p.runnerPIDs("stories")
	if len(pids) != 1 {
		t.Fatalf("runners before the restart: %v; want one", pids)
	}
	pid, id := pids[0], runnerID(t, pids[0])

	// Any other runner process, however briefly, would mean a replacement.
	others := make(chan []string, 1)
	stopWatch := make(chan struct{})
	go func() {
		seen := map[string]bool{}
		for {
			for _, q := range p.runnerPIDs("stories") {
				if q != pid {
					seen[q] = true
				}
			}
			select {
			case <-stopWatch:
				var l []string
				for q := range seen {
					l = append(l, q)
				}
				others <- l
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()

	const requests = 6
	var wg sync.WaitGroup
	results := make([]string, requests)
	send := func(i int) {
		defer wg.Done()
		t0 := time.Now()
		results[i] = storyResult(p, i)
		t.Logf("request %d answered after %s", i, time.Since(t0).Round(time.Millisecond))
	}
	n.Stop()
	// Half the requests arrive while NATS is down, half once it is back.
	// The outage outlasts two JetStream publish timeouts (5 s each): the
	// activator holds the requests until it can queue them.
	for i := range requests / 2 {
		wg.Add(1)
		go send(i)
	}
	time.Sleep(12 * time.Second)
	n.Start()
	for i := requests / 2; i < requests; i++ {
		wg.Add(1)
		go send(i)
	}
	wg.Wait()
	for i, r := range results {
		if !strings.HasPrefix(r, "200 ") {
			t.Errorf("request %d across the NATS restart: %.300s", i, r)
		}
	}
	p.mustPost("request after the restart", "/v1/completions", `{"model":"stories","prompt":"After","max_tokens":4}`)
	close(stopWatch)
	if l := <-others; len(l) > 0 {
		t.Errorf("runner processes %v appeared besides %s across the NATS restart; want the warm runner to reconnect, not be replaced", l, pid)
	}
	if now := p.runnerPIDs("stories"); len(now) != 1 || now[0] != pid {
		t.Errorf("runners after the restart: %v; want the same process %s", now, pid)
	}
	// The activators' view dropped the runner during the outage and
	// shows it again at its next heartbeat.
	var rs []lsRunner
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		if rs = lsRunners(t, p); len(rs) > 0 || time.Now().After(deadline) {
			break
		}
	}
	if len(rs) != 1 || rs[0].RunnerID != id {
		t.Errorf("infer ls after the restart: %+v; want only runner %s", rs, id)
	}
	// The control plane's usage recorder reconnected: every request is
	// recorded, each served by the warm runner.
	var records []struct {
		RequestID string `json:"request_id"`
		RunnerID  string `json:"runner_id"`
	}
	waitFor(t, 30*time.Second, "usage of every request recorded", func() bool {
		out, err := p.cli("usage", "--deployment", "stories", "--json")
		if err != nil {
			return false
		}
		records = records[:0]
		if json.Unmarshal([]byte(out), &records) != nil {
			return false
		}
		return len(records) >= requests+2
	})
	for _, r := range records {
		if r.RunnerID != id {
			t.Errorf("request %s was served by runner %q; want the warm runner %s", r.RequestID, r.RunnerID, id)
		}
	}

	// The control plane still scales: a second deployment cold-starts.
	if out, err := p.cli("deploy", "other", "--weights", testenv.ModelPath(t)); err != nil {
		t.Fatalf("infer deploy other: %v\n%s", err, out)
	}
	p.mustPost("cold start after the restart", "/v1/completions", `{"model":"other","prompt":"Cold","max_tokens":4}`)
	if len(p.runnerPIDs("other")) != 1 {
		t.Errorf("runners of other: %v; want the one that cold-started", p.runnerPIDs("other"))
	}
}

// queued reads infer_queue_depth-like numbers from /metrics: the requests
// of a deployment the activator has put on its queue so far.
func queued(p *platform, deployment string) int {
	return int(metric(p, `infer_requests_queued_total{deployment="`+deployment+`"}`))
}

// metric reads one series (name and labels, as /metrics prints them) from
// infer dev's /metrics; 0 if it is absent.
func metric(p *platform, series string) float64 {
	resp, err := http.Get(p.metrics + "/metrics")
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	return 0
}

func waitFor(t testing.TB, timeout time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not after %s", what, timeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// assertNoSecretsLogged checks infer dev's log and its runners' logs for
// the admin key, the S3 secret key and any other secret given.
func assertNoSecretsLogged(t *testing.T, p *platform, more ...string) {
	t.Helper()
	logs, _ := filepath.Glob(filepath.Join(p.home, "logs", "*.log"))
	logs = append(logs, p.log)
	secrets := append([]string{p.key, p.s3.SecretKey}, more...)
	for _, l := range logs {
		b, err := os.ReadFile(l)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range secrets {
			if strings.Contains(string(b), s) {
				t.Errorf("%s contains the secret %q", filepath.Base(l), s)
			}
		}
	}
	if len(logs) < 2 {
		t.Errorf("checked only %v; want infer dev's and a runner's log", logs)
	}
}

// rssBytes is a process's resident set size from /proc.
func rssBytes(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatalf("no VmRSS in /proc/%d/status", pid)
	return 0
}

// liveHeapAfterGC lets infer dev settle, then returns the heap goal set by
// a garbage collection that ran with nothing in flight: the goal is the
// heap found live (plus stacks and globals) times 1+GOGC/100, so it moves
// with what the process keeps, not with garbage. Nothing can ask the
// process to collect, so this makes it: each /metrics scrape allocates,
// and once three collections have finished since the call (sync.Pool's
// victim cache is dropped after two) the goal reflects only what is kept.
func liveHeapAfterGC(t *testing.T, p *platform) float64 {
	t.Helper()
	gcs := metric(p, "go_gc_duration_seconds_count")
	deadline := time.Now().Add(time.Minute)
	for metric(p, "go_gc_duration_seconds_count") < gcs+3 {
		if time.Now().After(deadline) {
			t.Fatalf("infer dev ran fewer than 3 garbage collections in a minute of /metrics scrapes")
		}
	}
	return metric(p, "go_memstats_next_gc_bytes")
}

// TestOverload: waves of bursts of ten times what a deployment can hold
// (running plus queued) get 200s and 429s with Retry-After, never a 5xx;
// the server stays up, and what it keeps in memory does not grow from wave
// to wave (a leak of a few KiB per request would, over hundreds).
func TestOverload(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and starts MinIO")
	}
	p := startPlatform(t)
	const (
		parallel   = 2
		queueLimit = 4
		burst      = 10 * (parallel + queueLimit)
		waves      = 20
		// leakBound is the growth of the heap goal allowed from the
		// first wave to the last. The goal is twice the live heap
		// (GOGC=100), so this is 2 MiB kept over the (waves-1)*burst =
		// 1,140 requests in between: a leak of 2 KiB a request exceeds
		// it. Between quiet collections the goal varies by about 1 MiB.
		leakBound = 4 << 20
	)
	p.deployStories("--idle-timeout", "5m",
		"--parallel", strconv.Itoa(parallel), "--queue-limit", strconv.Itoa(queueLimit), "--max-runners", "1")
	const call = `{"model":"stories","prompt":"Once upon a time","max_tokens":32}`
	// Warm up, so the bursts meet a running runner and the baseline
	// memory includes what serving needs.
	p.mustPost("warm-up", "/v1/completions", call)

	type result struct {
		status     int
		retryAfter string
		err        error
	}
	client := &http.Client{Timeout: time.Minute}
	wave := func() map[int]int {
		results := make(chan result, burst)
		start := make(chan struct{})
		for range burst {
			go func() {
				<-start
				req, _ := http.NewRequest(http.MethodPost, p.url+"/v1/completions", strings.NewReader(call))
				req.Header.Set("Authorization", "Bearer "+p.key)
				resp, err := client.Do(req)
				if err != nil {
					results <- result{err: err}
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				results <- result{status: resp.StatusCode, retryAfter: resp.Header.Get("Retry-After")}
			}()
		}
		close(start)
		counts := map[int]int{}
		for range burst {
			r := <-results
			if r.err != nil {
				t.Errorf("request failed: %v", r.err)
				continue
			}
			counts[r.status]++
			switch r.status {
			case 200:
			case 429:
				if s, err := strconv.Atoi(r.retryAfter); err != nil || s < 1 {
					t.Errorf("429 with Retry-After %q; want whole seconds", r.retryAfter)
				}
			default:
				t.Errorf("status %d under overload; want only 200 and 429", r.status)
			}
		}
		if counts[200] < parallel || counts[429] == 0 {
			t.Errorf("statuses %v: want at least %d served and some refused", counts, parallel)
		}
		// Idle connections would be kept, and counted, by infer dev.
		client.CloseIdleConnections()
		return counts
	}

	began := time.Now()
	var heap []float64
	rssBefore := rssBytes(t, p.pid)
	for i := range waves {
		counts := wave()
		heap = append(heap, liveHeapAfterGC(t, p))
		t.Logf("wave %d of %d requests: %v; heap goal after GC %.1f MiB, RSS %d MiB", i+1, burst, counts, heap[i]/(1<<20), rssBytes(t, p.pid)>>20)
		if t.Failed() {
			break
		}
	}
	t.Logf("%d requests in %d waves took %s", waves*burst, waves, time.Since(began).Round(100*time.Millisecond))
	if grown := heap[len(heap)-1] - heap[0]; grown > leakBound {
		t.Errorf("infer dev's live heap grew by %.1f MiB from the first wave to the last (%d requests); want at most %.1f MiB",
			grown/(1<<20), (len(heap)-1)*burst, float64(leakBound)/(1<<20))
	}
	// RSS follows the heap loosely (the runtime returns memory lazily);
	// only gross growth means something.
	if after := rssBytes(t, p.pid); after-rssBefore > 64<<20 {
		t.Errorf("infer dev grew from %d MiB to %d MiB RSS over %d requests", rssBefore>>20, after>>20, waves*burst)
	}
	if r, err := http.Get(p.url + "/healthz"); err != nil || r.StatusCode != 200 {
		t.Fatalf("unhealthy after the bursts: %v", err)
	} else {
		r.Body.Close()
	}
	p.mustPost("a request after the bursts", "/v1/completions", call)
	assertNoSecretsLogged(t, p)
}

// shutdownDeadline bounds how long infer dev may take to drain on SIGTERM
// (the activator gives open requests 30 s, then the runners get theirs).
const shutdownDeadline = 90 * time.Second

// TestGracefulShutdown: SIGTERM to infer dev while a stream is in flight
// lets that stream finish normally, refuses new connections, and exits 0
// within shutdownDeadline, its runners with it.
func TestGracefulShutdown(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and starts MinIO")
	}
	p := startPlatform(t)
	br, runner := p.endlessStream("60s")
	if err := syscall.Kill(p.pid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	rest, _ := io.ReadAll(br)
	if strings.Contains(string(rest), "event: error") || !strings.Contains(string(rest), `"finish_reason":"`) || !strings.HasSuffix(strings.TrimSpace(string(rest)), "data: [DONE]") {
		t.Errorf("in-flight stream after SIGTERM ended with %q; want a normal finish and [DONE]", lastLines(string(rest), 3))
	}

	// New requests are refused cleanly (the listener is closed), not
	// accepted and dropped.
	waitFor(t, 30*time.Second, "listener closed", func() bool {
		r, err := (&http.Client{Timeout: 5 * time.Second}).Get(p.url + "/healthz")
		if err == nil {
			r.Body.Close()
		}
		return err != nil
	})

	select {
	case <-p.exited:
	case <-time.After(shutdownDeadline):
		t.Fatalf("infer dev still running %s after SIGTERM", shutdownDeadline)
	}
	t.Logf("infer dev exited %s after SIGTERM", time.Since(start).Round(time.Millisecond))
	if p.exitErr != nil {
		t.Errorf("infer dev exited with %v; want status 0", p.exitErr)
	}
	if _, err := os.Stat(filepath.Join("/proc", runner)); err == nil {
		if b, _ := os.ReadFile(filepath.Join("/proc", runner, "stat")); !strings.Contains(string(b), ") Z ") {
			t.Errorf("runner %s outlived infer dev", runner)
		}
	}
}

// TestRunnerSIGTERMDrains: a runner told to stop (SIGTERM, as Kubernetes
// does when it deletes a pod) finishes the stream it is generating, then
// exits; the deployment keeps serving from a new runner.
func TestRunnerSIGTERMDrains(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and starts MinIO")
	}
	p := startPlatform(t)
	br, runner := p.endlessStream("60s")
	pid, _ := strconv.Atoi(runner)
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	rest, _ := io.ReadAll(br)
	if strings.Contains(string(rest), "event: error") || !strings.Contains(string(rest), `"finish_reason":"`) || !strings.HasSuffix(strings.TrimSpace(string(rest)), "data: [DONE]") {
		t.Errorf("stream after SIGTERM to its runner ended with %q; want a normal finish and [DONE]", lastLines(string(rest), 3))
	}
	waitFor(t, shutdownDeadline, "the drained runner exits", func() bool {
		for _, p := range p.runnerPIDs("stories") {
			if p == runner {
				return false
			}
		}
		return true
	})

	p.mustPost("request after the runner drained", "/v1/completions", `{"model":"stories","prompt":"The cat","max_tokens":5}`)
}

// storyResult sends story request i with the admin key, waiting as long as
// a request queued through an outage may, and returns "status body", or
// the error.
func storyResult(p *platform, i int) string {
	req, _ := http.NewRequest(http.MethodPost, p.url+"/v1/completions",
		strings.NewReader(fmt.Sprintf(`{"model":"stories","prompt":"Story %d:","max_tokens":8}`, i)))
	req.Header.Set("Authorization", "Bearer "+p.key)
	resp, err := (&http.Client{Timeout: 4 * time.Minute}).Do(req)
	if err != nil {
		return err.Error()
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return strconv.Itoa(resp.StatusCode) + " " + string(b)
}

// TestNATSRestartWhileGenerating: clients keep sending the same greedy
// completion, streaming and not, while the NATS server restarts under a
// warm runner. Output a runner sent during the outage may be lost on the
// way (core NATS drops what reaches a subject before its subscriber is
// back); the activator asks the runner for it again, so no answer comes
// back with text missing or added, or ends in output_lost, and none
// hangs. An answer may still fail with another retryable error (the
// queue unreachable while the job was submitted). One slot keeps each
// generation alone in its batch, so greedy text is the same every time.
func TestNATSRestartWhileGenerating(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and starts MinIO")
	}
	n := startRestartableNATS(t)
	p := startPlatformWith(t, platformOptions{nats: n.url()})
	p.deployStories("--min-runners", "1", "--max-runners", "1", "--parallel", "1", "--idle-timeout", "10m", "--queue-timeout", "3m")
	const body = `{"model":"stories","prompt":"Once upon a time","max_tokens":400,"temperature":0,"stream":%t}`
	var ref struct{ Choices []struct{ Text string } }
	if err := json.Unmarshal(p.mustPost("reference answer", "/v1/completions", fmt.Sprintf(body, false)), &ref); err != nil || len(ref.Choices) != 1 {
		t.Fatalf("reference answer: %v %+v", err, ref)
	}
	want := ref.Choices[0].Text

	outcomes := make(chan string, 10000)
	stop := clientLoops(2, func(c int) { outcomes <- answerOutcome(p, fmt.Sprintf(body, c == 1), want) })
	// Each outage catches a generation in flight more often than not;
	// whether its output is lost depends on which side reconnects first.
	for range 3 {
		time.Sleep(time.Second)
		n.Stop()
		time.Sleep(2 * time.Second)
		n.Start()
	}
	time.Sleep(2 * time.Second)
	stop()
	close(outcomes)
	counts := map[string]int{}
	for o := range outcomes {
		counts[o]++
		if strings.HasPrefix(o, "bad") {
			t.Error(o)
		}
	}
	// How often events were lost and asked for again (the activator's
	// metric), and resent (the runner's log).
	runnerLogs, _ := filepath.Glob(filepath.Join(p.home, "logs", "runner-*.log"))
	resent := 0
	for _, f := range runnerLogs {
		b, _ := os.ReadFile(f)
		resent += bytes.Count(b, []byte("resent events lost on the way"))
	}
	t.Logf("outcomes: %v; resend requests %v, resends %d", counts, metric(p, `infer_event_resends_total{deployment="stories"}`), resent)
	if counts["ok"] == 0 {
		t.Error("no request was answered in full")
	}
	// Everything works again.
	var after struct{ Choices []struct{ Text string } }
	if err := json.Unmarshal(p.mustPost("request after the restart", "/v1/completions", fmt.Sprintf(body, false)), &after); err != nil || len(after.Choices) != 1 || after.Choices[0].Text != want {
		t.Errorf("after the restart: %+v (%v); want the reference text", after, err)
	}
}

// clientLoops runs f in clients goroutines, each calling it again and
// again with its client number, until the returned stop is called; stop
// waits for the calls in progress.
func clientLoops(clients int, f func(client int)) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	for c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-done:
					return
				default:
				}
				f(c)
			}
		}()
	}
	return func() { close(done); wg.Wait() }
}

// answerOutcome sends one completion and sorts its answer: "ok" (the whole
// text, properly ended), "retryable CODE" (an error a client retries, other
// than output_lost), or "bad: …" (anything else, including output_lost and
// no answer within a minute).
func answerOutcome(p *platform, body, want string) string {
	req, _ := http.NewRequest(http.MethodPost, p.url+"/v1/completions", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+p.key)
	resp, err := (&http.Client{Timeout: time.Minute}).Do(req)
	if err != nil {
		return "bad: no answer: " + err.Error()
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "bad: reading the answer: " + err.Error()
	}
	retryable := func(code string) string {
		switch code {
		case "runner_lost", "queue_unavailable":
			return "retryable " + code
		}
		return "bad: error " + code + ": " + string(b)
	}
	var e struct{ Error struct{ Code string } }
	if resp.StatusCode != http.StatusOK {
		json.Unmarshal(b, &e)
		return retryable(e.Error.Code)
	}
	var text strings.Builder
	finished := false
	if resp.Header.Get("Content-Type") == "text/event-stream" {
		events := strings.Split(string(b), "\n\n")
		for _, ev := range events {
			switch {
			case strings.HasPrefix(ev, "event: error\ndata: "):
				json.Unmarshal([]byte(strings.TrimPrefix(ev, "event: error\ndata: ")), &e)
				return retryable(e.Error.Code)
			case ev == "data: [DONE]", ev == "", strings.HasPrefix(ev, ":"):
			case strings.HasPrefix(ev, "data: "):
				var c struct {
					Choices []struct {
						Text         string
						FinishReason *string `json:"finish_reason"`
					}
				}
				if err := json.Unmarshal([]byte(ev[6:]), &c); err != nil || len(c.Choices) != 1 {
					return fmt.Sprintf("bad: chunk %q", ev)
				}
				text.WriteString(c.Choices[0].Text)
				finished = finished || c.Choices[0].FinishReason != nil
			default:
				return fmt.Sprintf("bad: SSE event %q", ev)
			}
		}
		if !strings.HasSuffix(string(b), "data: [DONE]\n\n") {
			return "bad: stream without [DONE]"
		}
	} else {
		var c struct{ Choices []struct{ Text string } }
		if err := json.Unmarshal(b, &c); err != nil || len(c.Choices) != 1 {
			return "bad: body " + string(b)
		}
		text.WriteString(c.Choices[0].Text)
		finished = true
	}
	if !finished || text.String() != want {
		return fmt.Sprintf("bad: 200 with text %q (finished %v), want %q", text.String(), finished, want)
	}
	return "ok"
}
