package main

import (
	"context"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
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
