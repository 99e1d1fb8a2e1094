package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/infer-run/infer/internal/testenv"
	"github.com/infer-run/infer/registry"
)

// run runs the CLI with env and returns stdout, stderr and the exit status.
func (p *platform) run(env []string, args ...string) (stdout, stderr string, status int) {
	p.t.Helper()
	cmd := exec.Command(p.bin, args...)
	cmd.Env = env
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		status = ee.ExitCode()
	case err != nil:
		p.t.Fatalf("infer %s: %v", strings.Join(args, " "), err)
	}
	return o.String(), e.String(), status
}

// TestCLIFixes checks, against one real `infer dev`, what a newcomer hit:
// paging in ls and usage, usage filters without --group-by, the time and
// key columns, --since 7d, aliases and exit statuses, --version, a
// directory given as weights, a benchmark in which every request fails,
// settings the platform cannot honour, max_tokens beyond the context,
// X-Request-Id and x-ratelimit-* headers, and a second infer dev on taken
// ports.
func TestCLIFixes(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and starts the platform")
	}
	p := startPlatformWith(t, platformOptions{localBlobs: true})
	cli := func(args ...string) (string, string, int) { t.Helper(); return p.run(p.env, args...) }
	want := func(what string, status, wantStatus int, out string, wantText ...string) {
		t.Helper()
		if status != wantStatus {
			t.Errorf("%s: exit status %d, want %d\n%s", what, status, wantStatus, out)
		}
		for _, w := range wantText {
			if !strings.Contains(out, w) {
				t.Errorf("%s: output lacks %q:\n%s", what, w, out)
			}
		}
	}

	// Commands and exit statuses.
	_, e, st := cli("no-such-command")
	want("infer no-such-command", st, exitUsage, e, "unknown command")
	_, e, st = cli("keys", "no-such-command")
	want("infer keys no-such-command", st, exitUsage, e, "unknown command")
	o, _, st := cli("--version")
	want("infer --version", st, exitOK, o, "infer version")

	// A directory as weights is a usage error that says so.
	_, e, st = cli("deploy", "stories", "--weights", t.TempDir())
	want("deploy --weights DIR", st, exitUsage, e, "is a directory")
	if strings.Contains(e, "unreachable") {
		t.Errorf("deploy --weights DIR blames the network: %s", e)
	}

	// Durations in seconds.
	var d map[string]any
	p.cliJSON(t, &d, "deploy", "stories", "--weights", testenv.ModelPath(t), "--idle-timeout", "5s", "--queue-timeout", "1m")
	if d["idle_timeout"] != 5.0 || d["queue_timeout"] != 60.0 {
		t.Errorf("deploy --json: idle_timeout %v, queue_timeout %v; want 5 and 60 (seconds)", d["idle_timeout"], d["queue_timeout"])
	}
	tenant, sha := d["tenant_id"].(string), d["artifact_sha256"].(string)
	for _, name := range []string{"tales", "fables"} {
		if code, _, b := p.do(http.MethodPut, "/v1/deployments/"+name, p.key, `{"artifact":"`+sha+`"}`); code != 200 {
			t.Fatalf("PUT %s: %d %s", name, code, b)
		}
	}

	// Settings the platform cannot honour are refused (4xx: exit 3).
	_, e, st = cli("deploy", "stories", "--gpus", "1")
	want("deploy --gpus 1 on the local driver", st, exitRefused, e, "local processes")
	_, e, st = cli("deploy", "stories", "--context", "4096")
	want("deploy --context beyond the trained length", st, exitRefused, e, "trained on 2048")

	// ls pages: --limit cuts the list and says how to go on.
	o, e, st = cli("ls", "--limit", "2")
	want("ls --limit 2", st, exitOK, o+e, "fables", "stories", "more deployments follow: add --after stories")
	if strings.Contains(o, "tales") {
		t.Errorf("ls --limit 2 shows a third deployment:\n%s", o)
	}
	var all, rest []map[string]any
	p.cliJSON(t, &all, "list", "--limit", "0")
	p.cliJSON(t, &rest, "ls", "--after", "stories")
	if len(all) != 3 || len(rest) != 1 || rest[0]["name"] != "tales" {
		t.Errorf("list --limit 0: %d deployments; ls --after stories: %v; want 3 and tales", len(all), rest)
	}

	// Usage: records of two keys at known times, written as the control
	// plane writes them.
	var app map[string]any
	p.cliJSON(t, &app, "keys", "create", "app", "--rpm", "5", "--tpm", "100000")
	var keys []map[string]any
	p.cliJSON(t, &keys, "keys", "list")
	if len(keys) < 2 {
		t.Errorf("keys list --json: %v", keys)
	}
	store, err := registry.Open(t.Context(), p.dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	now := time.Now()
	for _, r := range []struct {
		id, key string
		age     time.Duration
	}{{"u-1h", app["id"].(string), time.Hour}, {"u-2d", app["id"].(string), 48 * time.Hour}, {"u-10d", app["id"].(string), 240 * time.Hour}, {"u-other", "key_other", 30 * time.Minute}} {
		if _, err := store.RecordUsage(t.Context(), registry.UsageRecord{RequestID: r.id, Deployment: "stories", TenantID: tenant, KeyID: r.key, Status: "ok", CreatedAt: now.Add(-r.age)}); err != nil {
			t.Fatal(err)
		}
	}
	ids := func(args ...string) string {
		t.Helper()
		var recs []map[string]any
		p.cliJSON(t, &recs, append([]string{"usage"}, args...)...)
		var out []string
		for _, r := range recs {
			out = append(out, r["request_id"].(string))
		}
		return strings.Join(out, ",")
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--key", app["id"].(string)}, "u-1h,u-2d,u-10d"},
		{[]string{"--key", app["id"].(string), "--since", "7d"}, "u-1h,u-2d"},
		{[]string{"--until", "1d"}, "u-2d,u-10d"},
		{[]string{"--since", "3d", "--until", now.Add(-90 * time.Minute).UTC().Format(time.RFC3339)}, "u-2d"},
		{[]string{"--limit", "2"}, "u-other,u-1h"},
		{[]string{"--limit", "0"}, "u-other,u-1h,u-2d,u-10d"},
		{[]string{"--after", "u-1h"}, "u-2d,u-10d"},
	} {
		if got := ids(tc.args...); got != tc.want {
			t.Errorf("usage %s: %s, want %s", strings.Join(tc.args, " "), got, tc.want)
		}
	}
	o, e, st = cli("usage", "--limit", "3")
	want("usage --limit 3", st, exitOK, o+e, "TIME", "KEY", " app ", "key_other", "more usage records follow: add --after u-2d")
	_, e, st = cli("usage", "--since", "7x")
	want("usage --since 7x", st, exitUsage, e, "--since")

	// Every request failing is a failure, said once.
	o, e, st = cli("bench", "--model", "no-such-model", "--concurrency", "1", "--requests", "2", "--json")
	want("bench with every request failing", st, exitError, e, "every request failed (2 of 2")
	if !json.Valid([]byte(o)) {
		t.Errorf("bench --json printed no JSON: %s", o)
	}

	// max_tokens beyond the context is refused; replies name their request;
	// a key with limits hears them.
	status, _, body := p.do(http.MethodPost, "/v1/completions", p.key, `{"model":"stories","prompt":"Once upon a time","max_tokens":3000}`)
	var apiErr struct {
		Error struct {
			Param string `json:"param"`
		} `json:"error"`
	}
	json.Unmarshal(body, &apiErr)
	if status != 400 || apiErr.Error.Param != "max_tokens" {
		t.Errorf("max_tokens 3000 with a context of 2048: %d %s; want 400 naming max_tokens", status, body)
	}
	status, h, body := p.do(http.MethodPost, "/v1/completions", app["key"].(string), `{"model":"stories","prompt":"Once upon a time","max_tokens":4}`)
	var reply struct {
		ID string `json:"id"`
	}
	json.Unmarshal(body, &reply)
	if status != 200 || h.Get("X-Request-Id") == "" || h.Get("X-Request-Id") != reply.ID {
		t.Errorf("non-streaming reply: %d, X-Request-Id %q, id %q; want the reply's id", status, h.Get("X-Request-Id"), reply.ID)
	}
	if h.Get("x-ratelimit-limit-requests") != "5" || h.Get("x-ratelimit-remaining-requests") != "4" || h.Get("x-ratelimit-limit-tokens") != "100000" || h.Get("x-ratelimit-reset-requests") == "" {
		t.Errorf("rate limit headers of a key with --rpm 5 --tpm 100000: %v", h)
	}

	// show: the model as its GGUF says, and the settings.
	o, _, st = cli("show", "stories")
	want("infer show stories", st, exitOK, o, "architecture", "llama", "parameters", "quantisation", "2048 tokens per request (the trained 2048", "detected from the weights", "idle timeout", "5s")
	_, e, st = cli("show", "no-such-deployment")
	want("infer show no-such-deployment", st, exitRefused, e)

	// chat: a line in, a streamed answer out; /bye ends it.
	chat := exec.Command(p.bin, "chat", "stories", "--max-tokens", "8")
	chat.Env = p.env
	chat.Stdin = strings.NewReader("Once upon a time\n\n/bye\nnot sent\n")
	out, err := chat.CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) == 0 {
		t.Errorf("infer chat stories: %v, %q; want an answer", err, out)
	}

	// A second infer dev on the same ports fails before it creates (and
	// prints) an admin key.
	for _, tc := range []struct{ flag, addr, env string }{
		{"--addr", strings.TrimPrefix(p.url, "http://"), "INFER_ADDR"},
		{"--metrics-addr", strings.TrimPrefix(p.metrics, "http://"), "INFER_METRICS_ADDR"},
	} {
		home := t.TempDir()
		var env []string
		for _, kv := range p.env {
			if !strings.HasPrefix(kv, "INFER_ADMIN_KEY=") && !strings.HasPrefix(kv, "INFER_HOME=") {
				env = append(env, kv)
			}
		}
		env = append(env, "INFER_HOME="+home)
		args := []string{"dev", "--addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0"}
		if tc.flag == "--addr" {
			args[2] = tc.addr
		} else {
			args[4] = tc.addr
		}
		o, e, st := p.run(env, args...)
		want("a second infer dev on "+tc.flag, st, exitError, o+e, tc.addr, "already in use", tc.flag, "$"+tc.env)
		if strings.Contains(o+e, "Created an admin API key") {
			t.Errorf("a second infer dev on a taken %s printed an admin key:\n%s", tc.flag, o+e)
		}
		if _, err := os.Stat(filepath.Join(home, "admin-key")); err == nil {
			t.Errorf("a second infer dev on a taken %s saved an admin key", tc.flag)
		}
	}
}
