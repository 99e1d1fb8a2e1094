package main

import (
	"bufio"
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/infer-run/infer/internal/wire"
)

// TestLogsCLI reads a real runner's log with `infer logs` against a real
// `infer dev`: its start lines after a cold start, as JSON lines too; with
// -f, the runner's stop lines as they are written when it scales to zero;
// and refusals for another tenant (404) and a user key (403).
func TestLogsCLI(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and starts the platform")
	}
	p := startPlatform(t)
	p.deployStories("--idle-timeout", "4s")
	if err := p.complete(4); err != nil {
		t.Fatal(err)
	}
	out, stderr, status := p.run(p.env, "logs", "stories")
	if status != 0 || !strings.Contains(out, " INFO  runner starting ") || !strings.Contains(out, " INFO  model ready ") {
		t.Fatalf("infer logs stories: exit %d, want the runner's start lines\n%s%s", status, out, stderr)
	}
	var runnerID string
	out, _, status = p.run(p.env, "logs", "stories", "--json", "--tail", "3")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if status != 0 || len(lines) != 3 {
		t.Fatalf("infer logs --json --tail 3: exit %d, %d lines\n%s", status, len(lines), out)
	}
	for _, l := range lines {
		var ll wire.LogLine
		if err := json.Unmarshal([]byte(l), &ll); err != nil || ll.Runner == "" || ll.Time.IsZero() {
			t.Errorf("--json line %q: %v", l, err)
		}
		runnerID = ll.Runner
	}
	if out, _, _ := p.run(p.env, "logs", "stories", "--runner", runnerID, "--since", "10m"); !strings.Contains(out, " "+runnerID+" INFO  model ready") {
		t.Errorf("--runner %s --since 10m:\n%s", runnerID, out)
	}

	// -f shows the runner's last lines live as it scales to zero.
	cmd := exec.Command(p.bin, "logs", "stories", "-f", "--tail", "0")
	cmd.Env = p.env
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	followed := make(chan string, 100)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			followed <- sc.Text()
		}
		close(followed)
	}()
	timeout := time.After(90 * time.Second)
	var seen []string
	for done := false; !done; {
		select {
		case l, ok := <-followed:
			if !ok {
				t.Fatalf("infer logs -f ended; printed %q", seen)
			}
			seen = append(seen, l)
			if strings.Contains(l, "runner starting") {
				t.Errorf("--tail 0 printed an old line: %s", l)
			}
			done = strings.Contains(l, " "+runnerID+" INFO  runner stopped")
		case <-timeout:
			t.Fatalf("infer logs -f showed no \"runner stopped\" within 90 s of the runner's idle timeout; printed %q", seen)
		}
	}

	// Another tenant's admin: no such deployment. A user key: admins only.
	var other struct {
		AdminKey struct{ Key string } `json:"admin_key"`
	}
	p.cliJSON(t, &other, "tenants", "create", "other")
	waitKey(t, p, other.AdminKey.Key)
	otherEnv := append(append([]string{}, p.env...), "INFER_API_KEY="+other.AdminKey.Key)
	if out, errOut, status := p.run(otherEnv, "logs", "stories"); status != exitRefused || out != "" || !strings.Contains(errOut, `"stories" does not exist`) {
		t.Errorf("another tenant's infer logs stories: exit %d, want %d and not found\n%s%s", status, exitRefused, out, errOut)
	}
	var user struct{ Key string }
	p.cliJSON(t, &user, "keys", "create", "app")
	waitKey(t, p, user.Key)
	userEnv := append(append([]string{}, p.env...), "INFER_API_KEY="+user.Key)
	if out, errOut, status := p.run(userEnv, "logs", "stories"); status != exitRefused || out != "" || !strings.Contains(errOut, "admin key") {
		t.Errorf("a user key's infer logs stories: exit %d, want %d and a refusal\n%s%s", status, exitRefused, out, errOut)
	}
	if _, errOut, status := p.run(p.env, "logs", "stories", "--since", "yesterday"); status != exitUsage || !strings.Contains(errOut, "--since") {
		t.Errorf("--since yesterday: exit %d\n%s", status, errOut)
	}
}
