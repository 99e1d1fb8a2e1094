package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"github.com/infer-run/infer/internal/testenv"
)

// serverCommands run a component rather than talk to the API; their help
// needs no Example.
var serverCommands = map[string]bool{
	"infer": true, "infer dev": true, "infer activator": true, "infer controlplane": true, "infer runner": true,
}

// TestHelpEveryCommand runs `--help` on every command in process and checks
// that the help says something: a Short line, a usage line, and for the
// CLI commands an example. The table is the command tree itself, so a new
// command is covered the day it is added; want lists the commands that must
// exist so one cannot silently disappear.
func TestHelpEveryCommand(t *testing.T) {
	var paths [][]string
	var walk func(c *cobra.Command, path []string)
	walk = func(c *cobra.Command, path []string) {
		if c.Hidden || c.Name() == "help" {
			return
		}
		paths = append(paths, path)
		for _, sub := range c.Commands() {
			walk(sub, append(append([]string{}, path...), sub.Name()))
		}
	}
	walk(newRootCmd(), nil)

	seen := map[string]bool{}
	for _, path := range paths {
		name := strings.Join(append([]string{"infer"}, path...), " ")
		seen[name] = true
		t.Run(name, func(t *testing.T) {
			root := newRootCmd()
			var out bytes.Buffer
			root.SetOut(&out)
			root.SetErr(&out)
			root.SetArgs(append(append([]string{}, path...), "--help"))
			if err := root.Execute(); err != nil {
				t.Fatalf("%s --help: %v", name, err)
			}
			cmd, _, err := newRootCmd().Find(path)
			if err != nil {
				t.Fatal(err)
			}
			help := out.String()
			if strings.TrimSpace(cmd.Short) == "" {
				t.Errorf("%s has no Short description", name)
			}
			// Help shows Long when there is one, else Short.
			desc := cmd.Long
			if desc == "" {
				desc = cmd.Short
			}
			if !strings.Contains(help, "Usage:") || !strings.Contains(help, strings.TrimSpace(desc)) {
				t.Errorf("%s --help lacks the usage line or the description:\n%s", name, help)
			}
			if !serverCommands[name] && cmd.Example == "" {
				t.Errorf("%s has no Example", name)
			}
			if cmd.Runnable() && printsData[name] && cmd.Flags().Lookup("json") == nil {
				t.Errorf("%s prints data but has no --json flag", name)
			}
		})
	}
	for want := range printsData {
		if !seen[want] {
			t.Errorf("command %q is gone", want)
		}
	}
}

// printsData are the commands whose output scripts parse; each must offer
// --json.
var printsData = map[string]bool{
	"infer deploy": true, "infer apply": true, "infer ls": true, "infer show": true, "infer rm": true, "infer usage": true, "infer bench": true,
	"infer keys create": true, "infer keys ls": true, "infer keys revoke": true,
}

// TestExitCodes checks the exit statuses scripts rely on, both for errors
// the commands raise and for cobra's own complaints.
func TestExitCodes(t *testing.T) {
	mapped := []struct {
		name string
		err  error
		want int
	}{
		{"nil", nil, exitOK},
		{"usage", usageError{errors.New("no API key")}, exitUsage},
		{"api 404", fmt.Errorf("deleting: %w", &apiErr{Status: 404}), exitRefused},
		{"api 403", &apiErr{Status: 403}, exitRefused},
		{"api 503", &apiErr{Status: 503}, exitError},
		{"refused", fmt.Errorf("calling: %w", &net.OpError{Op: "dial", Err: errors.New("connection refused")}), exitUnreachable},
		{"other", errors.New("reading weights: EOF"), exitError},
	}
	for _, tt := range mapped {
		if got := exitCode(tt.err); got != tt.want {
			t.Errorf("%s: exitCode(%v) = %d, want %d", tt.name, tt.err, got, tt.want)
		}
	}

	// Whole commands, in process: nothing listens on port 1.
	t.Setenv("INFER_URL", "http://127.0.0.1:1")
	t.Setenv("INFER_API_KEY", "sk-nothing-listens")
	run := []struct {
		args []string
		want int
	}{
		{[]string{"ls", "extra"}, exitUsage},
		{[]string{"ls", "--no-such-flag"}, exitUsage},
		{[]string{"rm"}, exitUsage},
		{[]string{"keys", "create"}, exitUsage},
		{[]string{"ls"}, exitUnreachable},
		{[]string{"ls", "--help"}, exitOK},
	}
	for _, tt := range run {
		root := newRootCmd()
		root.SetOut(io.Discard)
		root.SetErr(io.Discard)
		root.SetArgs(tt.args)
		if got := exitCode(root.Execute()); got != tt.want {
			t.Errorf("infer %s: exit status %d, want %d", strings.Join(tt.args, " "), got, tt.want)
		}
	}
}

// cliJSON runs the CLI with --json against p and decodes its stdout (only:
// progress and logs go to stderr).
func (p *platform) cliJSON(t *testing.T, out any, args ...string) {
	t.Helper()
	cmd := exec.Command(p.bin, append(args, "--json")...)
	cmd.Env = p.env
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("infer %s --json: %v\n%s%s", strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	if err := json.Unmarshal(stdout.Bytes(), out); err != nil {
		t.Fatalf("infer %s --json printed no JSON: %v\n%s", strings.Join(args, " "), err, stdout.String())
	}
}

// TestJSONOutput runs the data-printing commands with --json against a real
// `infer dev` and checks scripts get parseable JSON with the fields they
// need, and the exit status for a refused request.
func TestJSONOutput(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and starts the platform")
	}
	p := startPlatform(t)

	var d map[string]any
	p.cliJSON(t, &d, "deploy", "stories", "--weights", testenv.ModelPath(t), "--idle-timeout", "5s")
	// --json is the API's whole object, not the fields the table shows.
	whole := func(what string, m map[string]any) {
		t.Helper()
		for _, f := range []string{"name", "artifact_sha256", "queue_limit", "queue_timeout", "prices", "resources"} {
			if _, ok := m[f]; !ok {
				t.Errorf("%s --json lacks %q: %v", what, f, m)
			}
		}
	}
	if d["name"] != "stories" {
		t.Errorf("deploy --json = %v, want the deployment stories", d)
	}
	whole("deploy", d)

	var ls []map[string]any
	p.cliJSON(t, &ls, "ls")
	if len(ls) != 1 || ls[0]["name"] != "stories" {
		t.Fatalf("ls --json = %v, want one deployment named stories", ls)
	}
	whole("ls", ls[0])

	file := filepath.Join(t.TempDir(), "deployments.json")
	os.WriteFile(file, []byte(`{"deployments":[{"name":"applied-1","artifact":"`+fmt.Sprint(d["artifact_sha256"])+`"},{"name":"stories","parallel":2}]}`), 0o600)
	var applied []map[string]any
	p.cliJSON(t, &applied, "apply", file)
	if len(applied) != 2 || applied[0]["name"] != "applied-1" || applied[1]["parallel"] != float64(2) {
		t.Fatalf("apply --json = %v, want applied-1 and stories with parallel 2", applied)
	}
	whole("apply", applied[0])
	p.cliJSON(t, &ls, "ls")
	if len(ls) != 2 {
		t.Fatalf("ls --json after apply: %d deployments, want 2", len(ls))
	}

	var created map[string]any
	p.cliJSON(t, &created, "keys", "create", "script-key")
	if k, _ := created["key"].(string); k == "" || created["name"] != "script-key" || created["id"] == "" {
		t.Errorf("keys create --json = %v, want the key, its name and id", created)
	}
	var keys []map[string]any
	p.cliJSON(t, &keys, "keys", "ls")
	found := false
	for _, k := range keys {
		if k["id"] == created["id"] {
			found = true
			if _, leaked := k["key"]; leaked {
				t.Errorf("keys ls --json shows a secret: %v", k)
			}
		}
	}
	if !found {
		t.Errorf("keys ls --json = %v, lacks the created key %v", keys, created["id"])
	}

	// One request, so usage has a record. Records are written after the
	// response, so poll.
	p.mustPost("completion", "/v1/completions", `{"model":"stories","prompt":"Once upon a time","max_tokens":8}`)
	deadline := time.Now().Add(60 * time.Second)
	for {
		var usage []map[string]any
		p.cliJSON(t, &usage, "usage")
		if len(usage) > 0 {
			if usage[0]["deployment"] != "stories" || usage[0]["completion_tokens"] == nil {
				t.Errorf("usage --json record = %v, want deployment stories and token counts", usage[0])
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("usage --json shows no record a minute after a request")
		}
		time.Sleep(250 * time.Millisecond)
	}

	var revoked map[string]any
	p.cliJSON(t, &revoked, "keys", "revoke", created["id"].(string))
	if revoked["revoked"] != true {
		t.Errorf("keys revoke --json = %v, want revoked: true", revoked)
	}
	var removed map[string]any
	p.cliJSON(t, &removed, "rm", "stories")
	if removed["deleted"] != true {
		t.Errorf("rm --json = %v, want deleted: true", removed)
	}

	// A refused request exits 3, distinct from failures and usage errors.
	cmd := exec.Command(p.bin, "rm", "no-such-deployment")
	cmd.Env = p.env
	err := cmd.Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != exitRefused {
		t.Errorf("infer rm no-such-deployment: %v, want exit status %d", err, exitRefused)
	}

	// Revoking the key the CLI itself uses takes --allow-self; last, as
	// it locks this platform's CLI out.
	var self string
	for _, k := range keys {
		if k["name"] == "INFER_ADMIN_KEY" {
			self, _ = k["id"].(string)
		}
	}
	if self == "" {
		t.Fatalf("keys ls --json = %v: no INFER_ADMIN_KEY key", keys)
	}
	if out, err := p.cli("keys", "revoke", self); err == nil || !strings.Contains(out, "--allow-self") {
		t.Errorf("infer keys revoke <own key>: %v\n%s; want a refusal naming --allow-self", err, out)
	}
	if out, err := p.cli("keys", "ls"); err != nil {
		t.Errorf("the key stopped working after a refused self-revocation: %v\n%s", err, out)
	}
	if out, err := p.cli("keys", "revoke", "--allow-self", self); err != nil {
		t.Errorf("infer keys revoke --allow-self <own key>: %v\n%s", err, out)
	}
	if out, err := p.cli("keys", "ls"); err == nil {
		t.Errorf("the revoked key still works:\n%s", out)
	}
}

// TestActivatorOnlyBuild checks the -tags activatoronly binary: it has the
// activator and the client commands, none of the commands that run runners,
// serves the API against real NATS and Postgres, and refuses to embed NATS.
func TestActivatorOnlyBuild(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	bin := buildInfer(t, "-tags", "activatoronly")
	out, err := exec.Command(bin, "--help").CombinedOutput()
	if err != nil {
		t.Fatalf("--help: %v\n%s", err, out)
	}
	for _, want := range []string{"activator", "deploy", "keys", "bench"} {
		if !strings.Contains(string(out), "  "+want+" ") {
			t.Errorf("help lacks %q:\n%s", want, out)
		}
	}
	for _, absent := range []string{"dev", "controlplane", "runner"} {
		if strings.Contains(string(out), "  "+absent+" ") {
			t.Errorf("the activator-only build has %q:\n%s", absent, out)
		}
	}

	// Without --nats it says why it cannot start.
	cmd := exec.Command(bin, "activator", "--addr", "127.0.0.1:0")
	cmd.Env = append(os.Environ(), "INFER_NATS_URL=", "INFER_HOME="+t.TempDir())
	out, err = cmd.CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != exitUsage || !strings.Contains(string(out), "--nats") {
		t.Errorf("activator without NATS: %v\n%s", err, out)
	}

	// With NATS and Postgres it serves.
	addr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	metricsAddr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	ctx, cancel := context.WithCancel(context.Background())
	cmd = exec.CommandContext(ctx, bin, "activator", "--addr", addr, "--metrics-addr", metricsAddr)
	cmd.Env = append(os.Environ(), "INFER_NATS_URL="+testenv.NATS(t), "DATABASE_URL="+testenv.Postgres(t),
		"INFER_HOME="+t.TempDir(), "INFER_S3_ENDPOINT=")
	var logs strings.Builder
	cmd.Stdout, cmd.Stderr = &logs, &logs
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); cmd.Wait() })
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get("http://" + addr + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the activator-only build never became healthy: %v\n%s", err, logs.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	// Its metrics are on --metrics-addr, not on the public port.
	if code, body := get(t, "http://"+addr+"/metrics"); code != 404 {
		t.Errorf("GET /metrics on the API port: %d %.200s; want 404", code, body)
	}
	if code, body := get(t, "http://"+metricsAddr+"/metrics"); code != 200 || !strings.Contains(body, "go_goroutines") {
		t.Errorf("GET /metrics on --metrics-addr: %d %.200s", code, body)
	}
}

// get fetches a URL and returns its status and body.
func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}
