//go:build !activatoronly

package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// `infer dev` needs PostgreSQL. When DATABASE_URL is unset and nothing
// answers on 127.0.0.1:5432, it runs a private cluster of the PostgreSQL
// installed on the machine under --home (initdb once, then pg_ctl start),
// reachable only on a unix socket, and stops it when it exits. Where none
// is installed, it says the one command that installs it.

// postgresGlobs are where PostgreSQL's server binaries live off PATH:
// Debian and Ubuntu keep each major version in /usr/lib/postgresql/N/bin,
// Red Hat in /usr/pgsql-N/bin, Homebrew in opt/postgresql@N/bin.
var postgresGlobs = []string{
	"/usr/lib/postgresql/*/bin",
	"/usr/pgsql-*/bin",
	"/opt/homebrew/opt/postgresql@*/bin",
	"/usr/local/opt/postgresql@*/bin",
}

// findPostgresBin returns the directory holding initdb and pg_ctl: the
// newest major version under globs, else the one on PATH (lookPath).
func findPostgresBin(globs []string, lookPath func(string) (string, error)) (string, bool) {
	var dirs []string
	for _, g := range globs {
		m, _ := filepath.Glob(g)
		for _, d := range m {
			if isExecutable(filepath.Join(d, "initdb")) && isExecutable(filepath.Join(d, "pg_ctl")) {
				dirs = append(dirs, d)
			}
		}
	}
	if len(dirs) > 0 {
		// The newest major version.
		slices.SortFunc(dirs, func(a, b string) int { return majorVersion(a) - majorVersion(b) })
		return dirs[len(dirs)-1], true
	}
	initdb, err := lookPath("initdb")
	if err != nil {
		return "", false
	}
	dir := filepath.Dir(initdb)
	if !isExecutable(filepath.Join(dir, "pg_ctl")) {
		return "", false
	}
	return dir, true
}

func isExecutable(path string) bool {
	st, err := os.Stat(path)
	return err == nil && !st.IsDir() && st.Mode()&0o111 != 0
}

// majorVersion is the version in a binaries directory's parent's name
// ("/usr/lib/postgresql/15/bin", "/usr/pgsql-15/bin": 15), or 0.
func majorVersion(binDir string) int {
	path := filepath.Base(filepath.Dir(binDir))
	start := strings.IndexAny(path, "0123456789")
	if start < 0 {
		return 0
	}
	end := start
	for end < len(path) && path[end] >= '0' && path[end] <= '9' {
		end++
	}
	n, _ := strconv.Atoi(path[start:end])
	return n
}

// installHint is the one command that installs PostgreSQL with the
// package manager found on PATH.
func installHint(lookPath func(string) (string, error)) string {
	for _, pm := range []struct{ bin, cmd string }{
		{"apt-get", "sudo apt-get install postgresql"},
		{"dnf", "sudo dnf install postgresql-server"},
		{"yum", "sudo yum install postgresql-server"},
		{"apk", "sudo apk add postgresql"},
		{"pacman", "sudo pacman -S postgresql"},
		{"brew", "brew install postgresql@16"},
	} {
		if _, err := lookPath(pm.bin); err == nil {
			return pm.cmd
		}
	}
	return "install PostgreSQL 14 or later (https://www.postgresql.org/download/)"
}

// devPostgresMode is $INFER_DEV_POSTGRES: "auto" (the default) uses a
// server on 127.0.0.1:5432 when one answers and a private cluster
// otherwise; "private" always runs the private cluster, for a `infer dev`
// whose records stay apart from the machine's server.
func devPostgresMode() (private bool, err error) {
	switch v := os.Getenv("INFER_DEV_POSTGRES"); v {
	case "", "auto":
		return false, nil
	case "private":
		return true, nil
	default:
		return false, usageError{fmt.Errorf("$INFER_DEV_POSTGRES is %q; use auto or private", v)}
	}
}

// devDatabase decides the database of `infer dev` when no DATABASE_URL was
// given: the server on 127.0.0.1:5432 if one answers (and the mode is
// auto), else a private cluster under home. stop stops what it started.
func devDatabase(ctx context.Context, home string) (dsn string, stop func(), err error) {
	private, err := devPostgresMode()
	if err != nil {
		return "", nil, err
	}
	if !private {
		if c, err := net.DialTimeout("tcp", "127.0.0.1:5432", time.Second); err == nil {
			c.Close()
			return defaultDatabaseURL, func() {}, nil
		}
	}
	bin, ok := findPostgresBin(postgresGlobs, exec.LookPath)
	if !ok {
		return "", nil, fmt.Errorf("PostgreSQL is not running on 127.0.0.1:5432 and is not installed, so infer dev cannot start a private cluster either: run '%s' (or set DATABASE_URL)", installHint(exec.LookPath))
	}
	pc := &privateCluster{bin: bin, dir: filepath.Join(home, "postgres")}
	dsn, err = pc.start(ctx)
	if err != nil {
		return "", nil, err
	}
	fmt.Fprintf(os.Stderr, "infer dev: started a private PostgreSQL %d cluster in %s (unix socket in %s, no TCP); it stops when infer dev exits\n",
		majorVersion(bin), pc.dir, pc.socketDir)
	return dsn, pc.stop, nil
}

// privateCluster is a PostgreSQL cluster of infer dev's own.
type privateCluster struct {
	bin, dir, socketDir string
	// cred runs initdb, pg_ctl and the server as the postgres user when
	// infer dev runs as root, which they refuse.
	cred *syscall.Credential
	// startedHere is false when the cluster was already running (left by
	// an infer dev that was killed): it is still stopped at exit.
	startedHere bool
}

// superuser is the role initdb creates; the DSN logs in as it over the
// socket, where the cluster trusts every local connection.
const superuser = "postgres"

func (pc *privateCluster) start(ctx context.Context) (string, error) {
	// --home stays traversable (the postgres user must reach the cluster
	// when infer dev is root); the cluster's own directory is 0700.
	if err := os.MkdirAll(filepath.Dir(pc.dir), 0o755); err != nil {
		return "", fmt.Errorf("creating %s: %w", filepath.Dir(pc.dir), err)
	}
	if err := os.Mkdir(pc.dir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return "", fmt.Errorf("creating %s: %w", pc.dir, err)
	}
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			return "", errors.New("infer dev runs as root, and PostgreSQL's initdb refuses root; there is no 'postgres' user to run the private cluster as: run infer dev as a normal user, or set DATABASE_URL")
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		pc.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		if err := os.Chown(pc.dir, uid, gid); err != nil {
			return "", fmt.Errorf("giving %s to the postgres user: %w", pc.dir, err)
		}
	}
	// A unix socket's path is limited to 107 bytes; a deep --home gets a
	// socket directory under /tmp instead.
	pc.socketDir = pc.dir
	if len(pc.dir)+len("/.s.PGSQL.5432.lock") > 100 {
		d, err := os.MkdirTemp("", "infer-pg-")
		if err != nil {
			return "", err
		}
		if pc.cred != nil {
			os.Chown(d, int(pc.cred.Uid), int(pc.cred.Gid))
		}
		pc.socketDir = d
	}
	if _, err := os.Stat(filepath.Join(pc.dir, "PG_VERSION")); errors.Is(err, os.ErrNotExist) {
		// Trust on the socket only (no TCP listener): the cluster is
		// reachable by local users who can reach the socket directory,
		// which is mode 0700. C locale and no fsync of the initial
		// files: a throwaway development cluster, ready in seconds.
		out, err := pc.run(ctx, "initdb", "-D", pc.dir, "-U", superuser, "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync")
		if errors.Is(err, os.ErrPermission) && pc.cred != nil {
			return "", fmt.Errorf("the postgres user, which runs the private cluster when infer dev is root, cannot reach %s: a directory above it is not searchable by others; use a --home it can reach, run infer dev as a normal user, or set DATABASE_URL", pc.dir)
		}
		if err != nil {
			return "", fmt.Errorf("creating a private PostgreSQL cluster in %s (initdb): %w\n%s", pc.dir, err, out)
		}
	}
	if _, err := pc.run(ctx, "pg_ctl", "status", "-D", pc.dir); err != nil {
		opts := fmt.Sprintf("-c listen_addresses='' -k '%s' -p 5432", pc.socketDir)
		if out, err := pc.run(ctx, "pg_ctl", "start", "-w", "-t", "60", "-D", pc.dir, "-l", filepath.Join(pc.dir, "server.log"), "-o", opts); err != nil {
			return "", fmt.Errorf("starting the private PostgreSQL cluster in %s: %w\n%s(its log: %s)", pc.dir, err, out, filepath.Join(pc.dir, "server.log"))
		}
		pc.startedHere = true
	}
	q := url.Values{"host": {pc.socketDir}, "user": {superuser}, "sslmode": {"disable"}}
	return "postgres:///infer?" + q.Encode(), nil
}

// stop stops the cluster, letting connections finish for a few seconds.
func (pc *privateCluster) stop() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if out, err := pc.run(ctx, "pg_ctl", "stop", "-D", pc.dir, "-m", "fast", "-w"); err != nil {
		fmt.Fprintf(os.Stderr, "infer dev: stopping the private PostgreSQL cluster: %v\n%s", err, out)
	}
	if pc.socketDir != pc.dir {
		os.RemoveAll(pc.socketDir)
	}
}

// run runs one of the cluster's programs, as the postgres user when infer
// dev is root, in a process group of its own: Ctrl-C in the terminal
// stops infer dev, which then stops the cluster in order, rather than
// reaching the server directly.
func (pc *privateCluster) run(ctx context.Context, prog string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(pc.bin, prog), args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: pc.cred}
	cmd.Dir = pc.dir
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.Bytes(), err
}
