//go:build !activatoronly

package main

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/infer-run/infer/internal/testenv"
)

// TestFindPostgres checks where a private cluster's binaries are looked
// for (the newest version under the globs, else PATH) and the install
// command named when there are none.
func TestFindPostgres(t *testing.T) {
	root := t.TempDir()
	mk := func(dir string, progs ...string) {
		os.MkdirAll(dir, 0o755)
		for _, p := range progs {
			os.WriteFile(filepath.Join(dir, p), []byte("#!/bin/sh\n"), 0o755)
		}
	}
	mk(filepath.Join(root, "lib/postgresql/9/bin"), "initdb", "pg_ctl")
	mk(filepath.Join(root, "lib/postgresql/16/bin"), "initdb", "pg_ctl")
	mk(filepath.Join(root, "lib/postgresql/17/bin"), "initdb") // no pg_ctl: skipped
	mk(filepath.Join(root, "path"), "initdb", "pg_ctl")
	onPath := func(name string) (string, error) {
		if name == "initdb" {
			return filepath.Join(root, "path", name), nil
		}
		return "", exec.ErrNotFound
	}
	nothing := func(string) (string, error) { return "", exec.ErrNotFound }
	for _, tc := range []struct {
		name   string
		globs  []string
		path   func(string) (string, error)
		want   string
		wantOK bool
	}{
		{"newest complete version", []string{filepath.Join(root, "lib/postgresql/*/bin")}, nothing, filepath.Join(root, "lib/postgresql/16/bin"), true},
		{"PATH when the globs find none", []string{filepath.Join(root, "none/*/bin")}, onPath, filepath.Join(root, "path"), true},
		{"none", []string{filepath.Join(root, "none/*/bin")}, nothing, "", false},
	} {
		if got, ok := findPostgresBin(tc.globs, tc.path); got != tc.want || ok != tc.wantOK {
			t.Errorf("%s: %q %v, want %q %v", tc.name, got, ok, tc.want, tc.wantOK)
		}
	}
	has := func(bins ...string) func(string) (string, error) {
		return func(name string) (string, error) {
			for _, b := range bins {
				if b == name {
					return "/usr/bin/" + b, nil
				}
			}
			return "", exec.ErrNotFound
		}
	}
	for _, tc := range []struct {
		bins []string
		want string
	}{
		{[]string{"apt-get", "brew"}, "sudo apt-get install postgresql"},
		{[]string{"dnf"}, "sudo dnf install postgresql-server"},
		{[]string{"brew"}, "brew install postgresql@16"},
		{nil, "https://www.postgresql.org/download/"},
	} {
		if got := installHint(has(tc.bins...)); !strings.Contains(got, tc.want) {
			t.Errorf("with %v: %q, want %q", tc.bins, got, tc.want)
		}
	}
}

// TestDevPrivatePostgres runs `infer dev` without DATABASE_URL and with
// INFER_DEV_POSTGRES=private, as on a machine where PostgreSQL is installed
// but not running: it creates a cluster of the machine's PostgreSQL under
// INFER_HOME (as the postgres user when the test runs as root: initdb
// refuses root), serves the API on it, and stops the cluster when it
// exits.
func TestDevPrivatePostgres(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and creates a PostgreSQL cluster")
	}
	if _, ok := findPostgresBin(postgresGlobs, exec.LookPath); !ok {
		t.Skip("PostgreSQL is not installed here (" + installHint(exec.LookPath) + ")")
	}
	bin := buildInfer(t)
	tmp := t.TempDir()
	// As root, the cluster runs as the postgres user, which must reach
	// it: t.TempDir's directories are 0700.
	os.Chmod(tmp, 0o755)
	os.Chmod(filepath.Dir(tmp), 0o755)
	home := filepath.Join(tmp, "home")
	addr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "DATABASE_URL=") && !strings.HasPrefix(kv, "INFER_ADMIN_KEY=") && !strings.HasPrefix(kv, "INFER_S3_") {
			env = append(env, kv)
		}
	}
	env = append(env, "INFER_DEV_POSTGRES=private", "INFER_HOME="+home, "INFER_NATS_URL="+testenv.NATS(t), "INFER_WARM_RUNNERS=0")
	// devRun is one run of infer dev; logs is its output file.
	type devRun struct {
		cmd    *exec.Cmd
		logs   string
		exited chan struct{}
	}
	logsOf := func(r devRun) string { b, _ := os.ReadFile(r.logs); return string(b) }
	start := func() devRun {
		cmd := exec.Command(bin, "dev", "--addr", addr, "--metrics-addr", "")
		cmd.Env = env
		f, err := os.CreateTemp(t.TempDir(), "dev-*.log")
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		cmd.Stdout, cmd.Stderr = f, f
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		r := devRun{cmd: cmd, logs: f.Name(), exited: make(chan struct{})}
		go func() { cmd.Wait(); close(r.exited) }()
		t.Cleanup(func() { cmd.Process.Kill(); <-r.exited })
		waitFor(t, 120*time.Second, "infer dev on a private cluster healthy", func() bool {
			select {
			case <-r.exited:
				t.Fatalf("infer dev exited while starting:\n%s", logsOf(r))
			default:
			}
			resp, err := http.Get("http://" + addr + "/healthz")
			if err != nil {
				return false
			}
			resp.Body.Close()
			return resp.StatusCode == 200
		})
		return r
	}
	models := func() int {
		key, err := os.ReadFile(filepath.Join(home, "admin-key"))
		if err != nil {
			t.Fatal(err)
		}
		req, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/v1/models", nil)
		req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(key)))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	postmaster := func() int {
		b, err := os.ReadFile(filepath.Join(home, "postgres", "postmaster.pid"))
		if err != nil {
			return 0
		}
		pid, _ := strconv.Atoi(strings.SplitN(string(b), "\n", 2)[0])
		return pid
	}
	stop := func(r devRun) {
		r.cmd.Process.Signal(os.Interrupt)
		select {
		case <-r.exited:
		case <-time.After(60 * time.Second):
			t.Fatalf("infer dev did not exit after SIGINT:\n%s", logsOf(r))
		}
	}

	r := start()
	if !strings.Contains(logsOf(r), "started a private PostgreSQL") {
		t.Errorf("infer dev does not say it started a private cluster:\n%s", logsOf(r))
	}
	if code := models(); code != 200 {
		t.Fatalf("GET /v1/models on the private cluster: %d\n%s", code, logsOf(r))
	}
	pid := postmaster()
	if pid == 0 {
		t.Fatalf("no PostgreSQL server runs in %s", filepath.Join(home, "postgres"))
	}
	stop(r)
	// pg_ctl stop returns once the server removed its pid file; the
	// process itself ends a moment later.
	alive := func(pid int) bool {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return false
		}
		f := strings.Fields(string(b))
		return len(f) > 2 && f[2] != "Z"
	}
	if postmaster() != 0 {
		t.Errorf("the private cluster (postmaster %d) still runs after infer dev exited:\n%s", pid, logsOf(r))
	}
	waitFor(t, 10*time.Second, "the private cluster's server gone", func() bool { return !alive(pid) })

	// The next start reuses the cluster: the saved admin key still works.
	r = start()
	if code := models(); code != 200 {
		t.Errorf("GET /v1/models with the saved key after a restart: %d\n%s", code, logsOf(r))
	}
	stop(r)
}
