package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// runnerID reads the --id a runner process was started with.
func runnerID(t *testing.T, pid string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("/proc", pid, "cmdline"))
	if err != nil {
		t.Fatal(err)
	}
	args := strings.Split(string(b), "\x00")
	for i, a := range args[:len(args)-1] {
		if a == "--id" {
			return args[i+1]
		}
	}
	t.Fatalf("runner %s has no --id: %q", pid, args)
	return ""
}

// TestRedeliveryAfterRunnerDeath kills a runner that has taken a job but
// not yet answered it: the job must be redelivered, run to completion on
// a new runner, and be billed once.
//
// To catch the runner between taking the job and its first token (a few
// milliseconds on stories260K), the test freezes the idle runner with
// SIGSTOP first: its pull request is still registered with JetStream,
// which hands it the next job although the process cannot run. Then the
// runner is killed, as a crashed host would be.
func TestRedeliveryAfterRunnerDeath(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and starts MinIO")
	}
	p := startPlatform(t)
	p.deployStories("--idle-timeout", "60s", "--parallel", "2")
	warm, err := p.post("/v1/completions", p.key, `{"model":"stories","prompt":"Once","max_tokens":3}`)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, warm.Body)
	warm.Body.Close()
	pids := p.runnerPIDs("stories")
	if warm.StatusCode != 200 || len(pids) != 1 {
		t.Fatalf("warm-up: status %d, runners %v", warm.StatusCode, pids)
	}
	victim := runnerID(t, pids[0])
	if err := exec.Command("kill", "-STOP", pids[0]).Run(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { exec.Command("kill", "-KILL", pids[0]).Run() })

	type result struct {
		status int
		body   []byte
		err    error
	}
	done := make(chan result, 1)
	go func() {
		resp, err := p.post("/v1/completions", p.key, `{"model":"stories","prompt":"Once upon a time","max_tokens":20,"temperature":0}`)
		if err != nil {
			done <- result{err: err}
			return
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		done <- result{resp.StatusCode, b, err}
	}()

	// The job is in flight on the frozen runner: delivered, not acked.
	deadline := time.Now().Add(20 * time.Second)
	for {
		out, err := p.cli("ls", "--json")
		if err == nil && strings.Contains(strings.ReplaceAll(out, " ", ""), `"in_flight":1`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the job never reached the frozen runner: %v\n%s", err, out)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := exec.Command("kill", "-KILL", pids[0]).Run(); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()

	var r result
	select {
	case r = <-done:
		// At most the ack wait (queue.AckWait) after the runner last
		// reported progress, plus a cold start if it was the only runner.
		t.Logf("answered %s after the runner was killed", time.Since(killed).Round(100*time.Millisecond))
	case <-time.After(3 * time.Minute):
		t.Fatal("the request never completed after its runner died")
	}
	if r.err != nil || r.status != 200 {
		t.Fatalf("request whose runner died: %d %v %s", r.status, r.err, r.body)
	}
	var body struct {
		ID      string `json:"id"`
		Choices []struct {
			Text string `json:"text"`
		} `json:"choices"`
		Usage struct {
			CompletionTokens int `json:"completion_tokens"`
		} `json:"usage"`
	}
	if err := json.Unmarshal(r.body, &body); err != nil || len(body.Choices) != 1 || !looksLikeEnglish(body.Choices[0].Text) {
		t.Fatalf("redelivered answer %s: %v", r.body, err)
	}

	// Billed once, by the runner that answered. Usage travels through
	// JetStream into Postgres, so wait for it.
	conn, err := pgx.Connect(context.Background(), p.dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	deadline = time.Now().Add(30 * time.Second)
	for {
		var n int
		var runners []string
		err := conn.QueryRow(context.Background(),
			`SELECT count(*), coalesce(array_agg(runner_id), '{}') FROM usage WHERE deployment = 'stories' AND completion_tokens = $1 AND prompt_tokens > 1`,
			body.Usage.CompletionTokens).Scan(&n, &runners)
		if err != nil {
			t.Fatal(err)
		}
		if n == 1 {
			if runners[0] == victim {
				t.Errorf("usage names the killed runner %s", victim)
			}
			break
		}
		if n > 1 {
			t.Fatalf("the redelivered request was billed %d times (runners %v)", n, runners)
		}
		if time.Now().After(deadline) {
			t.Fatal("no usage record for the redelivered request")
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// depth is a deployment's queue as GET /v1/deployments/{name} shows it:
// jobs waiting, and jobs a runner has taken but not finished (JetStream's
// count, so it moves even while the runner cannot run).
func (p *platform) depth(deployment string) (queued, inFlight int) {
	p.t.Helper()
	code, _, b := p.do(http.MethodGet, "/v1/deployments/"+deployment, p.key, "")
	var st struct {
		Queued   int `json:"queued"`
		InFlight int `json:"in_flight"`
	}
	if err := json.Unmarshal(b, &st); code != 200 || err != nil {
		p.t.Fatalf("GET /v1/deployments/%s: %d %s", deployment, code, b)
	}
	return st.Queued, st.InFlight
}

// TestRunnerKilledMidGeneration: SIGKILL to a runner that, at that
// moment, streams tokens to some clients and holds jobs it has taken but
// not started for others. Every stream that had text ends with an SSE
// error event (runner_lost) and [DONE] within a bound, never hangs; every
// job without text is redelivered and completes, 200, on a replacement
// runner (a stream among them streams normally, from its first token);
// and the deployment goes on serving.
//
// Taking a job and sending its first token are milliseconds apart on
// stories260K, so, as in TestRedeliveryAfterRunnerDeath, the runner is
// held between the two with SIGSTOP: its pull request for its free slots
// is still registered with JetStream, which hands it the next jobs although
// the process cannot run. Its death is then a SIGKILL, before the
// activator could give it up for frozen (5 s without heartbeats).
func TestRunnerKilledMidGeneration(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and starts MinIO")
	}
	p := startPlatform(t)
	const (
		slots    = 4
		streamed = 2 // streams with text when the runner dies
		taken    = slots - streamed
	)
	p.deployStories("--idle-timeout", "60s", "--parallel", strconv.Itoa(slots))
	var streams []*bufio.Reader
	for range streamed {
		streams = append(streams, p.streamToFirstToken(endlessCall))
	}
	pids := p.runnerPIDs("stories")
	if len(pids) != 1 {
		t.Fatalf("runners %v; want one", pids)
	}
	victim, _ := strconv.Atoi(pids[0])
	t.Cleanup(func() { syscall.Kill(victim, syscall.SIGKILL) })

	type result struct {
		what   string
		status int
		body   []byte
		err    error
	}
	var results chan result
	for attempt := 1; ; attempt++ {
		if err := syscall.Kill(victim, syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		results = make(chan result, taken)
		for i := range taken {
			// One plain request and one stream: neither has any text
			// when its runner dies.
			body := fmt.Sprintf(`{"model":"stories","prompt":"Taken %d","max_tokens":20,"stream":%v}`, i, i%2 == 1)
			go func() {
				resp, err := p.post("/v1/completions", p.key, body)
				if err != nil {
					results <- result{body, 0, nil, err}
					return
				}
				defer resp.Body.Close()
				b, err := io.ReadAll(resp.Body)
				results <- result{body, resp.StatusCode, b, err}
			}()
		}
		delivered := false
		for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
			if _, inFlight := p.depth("stories"); inFlight == slots {
				delivered = true
				break
			}
		}
		if delivered {
			break
		}
		// The runner's pull request (it polls for half a second at a
		// time) expired before the jobs came, so they wait in the
		// queue. Let it serve them and try again.
		if attempt == 3 {
			t.Fatalf("in %d attempts, the jobs never reached the frozen runner", attempt)
		}
		t.Logf("attempt %d: the jobs did not reach the frozen runner; again", attempt)
		syscall.Kill(victim, syscall.SIGCONT)
		for range taken {
			if r := <-results; r.status != 200 {
				t.Fatalf("%s, served normally: %d %v %s", r.what, r.status, r.err, r.body)
			}
		}
	}
	if err := syscall.Kill(victim, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()

	// The streams with text end at once with runner_lost, then [DONE].
	var wg sync.WaitGroup
	for i, br := range streams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rest, _ := io.ReadAll(br)
			took := time.Since(killed)
			tail := strings.TrimSpace(string(rest))
			if !strings.Contains(tail, "event: error") || !strings.Contains(tail, "runner_lost") || !strings.HasSuffix(tail, "data: [DONE]") {
				t.Errorf("stream %d after its runner was killed ended with %q; want an error event naming runner_lost, then [DONE]", i, lastLines(tail, 4))
			}
			if took > 20*time.Second {
				t.Errorf("stream %d learned of the killed runner only after %s", i, took)
			}
		}()
	}
	wg.Wait()
	t.Logf("streams with text ended %s after the kill", time.Since(killed).Round(100*time.Millisecond))
	if _, err := os.Stat(filepath.Join("/proc", pids[0], "status")); err == nil {
		if b, _ := os.ReadFile(filepath.Join("/proc", pids[0], "stat")); !strings.Contains(string(b), ") Z ") {
			t.Errorf("runner %d still alive after SIGKILL", victim)
		}
	}

	// The jobs without text complete on a new runner.
	for range taken {
		r := <-results
		if r.err != nil || r.status != 200 {
			t.Fatalf("%s, taken by the killed runner: %d %v %s", r.what, r.status, r.err, r.body)
		}
		text := ""
		if strings.Contains(r.what, `"stream":true`) {
			// readSSE fails the test on an error event or a missing [DONE].
			chunks, _ := readSSE(t, bytes.NewReader(r.body))
			for _, c := range chunks {
				for _, ch := range c.Choices {
					text += ch.Text
				}
			}
		} else {
			var body struct {
				Choices []struct {
					Text string `json:"text"`
				} `json:"choices"`
			}
			if err := json.Unmarshal(r.body, &body); err != nil || len(body.Choices) != 1 {
				t.Fatalf("%s: answer %s: %v", r.what, r.body, err)
			}
			text = body.Choices[0].Text
		}
		if text == "" {
			t.Errorf("%s: answered without text: %s", r.what, r.body)
		}
	}
	t.Logf("jobs without text answered %s after the kill", time.Since(killed).Round(100*time.Millisecond))
	if pids := p.runnerPIDs("stories"); len(pids) != 1 || pids[0] == strconv.Itoa(victim) {
		t.Errorf("runners %v after the kill; want one replacement for %d", pids, victim)
	}

	// And the deployment keeps draining its queue: a burst as large as
	// its slots twice over is served in full.
	var burst sync.WaitGroup
	for i := range 2 * slots {
		burst.Add(1)
		go func() {
			defer burst.Done()
			resp, err := p.post("/v1/completions", p.key, fmt.Sprintf(`{"model":"stories","prompt":"After %d","max_tokens":8}`, i))
			if err != nil {
				t.Errorf("request %d after the kill: %v", i, err)
				return
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				t.Errorf("request %d after the kill: %d %s", i, resp.StatusCode, b)
			}
		}()
	}
	burst.Wait()
}
