package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/infer-run/infer/internal/testenv"
)

// TestTLSEverywhere runs the platform as docs/operations.md ("Security")
// says to run it with TLS to all three backing services: NATS through a
// tls:// URL with a password, Postgres with sslmode=verify-full and
// sslrootcert, S3 through an https:// endpoint, and SSL_CERT_FILE naming
// the private CA that NATS and S3 are checked against. A deployment
// cold-starts a runner, which connects to NATS and fetches its weights
// from S3 over TLS itself. Each server is also shown to refuse plaintext,
// and the CA is shown to be needed, so the test fails if TLS is not
// really in use.
func TestTLSEverywhere(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test builds the binary and starts NATS, Postgres and MinIO")
	}
	certs := testenv.TLSCerts(t)
	ca, err := os.ReadFile(certs.CA)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(ca) {
		t.Fatal("no certificate in the CA file")
	}

	dbURL, dbPort := startTLSPostgres(t, certs)
	const natsUser, natsPass = "infer", "s3cret-nats"
	ns := startTLSNATS(t, certs, natsUser, natsPass)
	natsAddr := ns.Addr().String()
	s3 := testenv.MinIOTLS(t, certs.Cert, certs.Key)

	// Each server refuses a client that does not speak TLS.
	t.Run("plaintext refused", func(t *testing.T) {
		if err := natsPlaintextPing(natsAddr, natsUser, natsPass); err == nil {
			t.Error("NATS answered PING on a plaintext connection")
		} else {
			t.Logf("plaintext NATS: %v", err)
		}

		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		plainDB := fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", dbPort)
		if conn, err := pgx.Connect(ctx, plainDB); err == nil {
			conn.Close(ctx)
			t.Error("Postgres accepted a connection with sslmode=disable")
		} else if !strings.Contains(err.Error(), "no encryption") {
			t.Errorf("Postgres with sslmode=disable: %v; want pg_hba.conf's rejection of an unencrypted connection", err)
		}

		health := "://" + s3.Endpoint + "/minio/health/ready"
		client := &http.Client{Timeout: 5 * time.Second}
		if resp, err := client.Get("http" + health); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				t.Error("MinIO answered 200 over plain http://")
			}
		}
		client.Transport = &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}
		resp, err := client.Get("https" + health)
		if err != nil {
			t.Fatalf("MinIO over https:// with the CA: %v", err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("MinIO over https:// with the CA: %s", resp.Status)
		}
	})

	// Without the CA (no SSL_CERT_FILE, and this process was given none)
	// the server certificate is not trusted; with it, it is.
	t.Run("CA needed", func(t *testing.T) {
		tlsURL := fmt.Sprintf("tls://%s:%s@%s", natsUser, natsPass, natsAddr)
		nc, err := nats.Connect(tlsURL, nats.Timeout(5*time.Second))
		if err == nil {
			nc.Close()
			t.Fatal("NATS over TLS without the private CA: connected; the certificate must not be trusted")
		}
		var unknown x509.UnknownAuthorityError
		if !errors.As(err, &unknown) && !strings.Contains(err.Error(), "certificate signed by unknown authority") {
			t.Errorf("NATS over TLS without the private CA: %v; want an unknown-authority error", err)
		}
		nc, err = nats.Connect(tlsURL, nats.Timeout(5*time.Second), nats.RootCAs(certs.CA))
		if err != nil {
			t.Fatalf("NATS over TLS with the private CA: %v", err)
		}
		nc.Close()
	})
	if t.Failed() {
		t.FailNow()
	}

	p := startPlatformWith(t, platformOptions{
		nats:  fmt.Sprintf("tls://%s:%s@%s", natsUser, natsPass, natsAddr),
		dbURL: dbURL,
		s3:    &s3,
		env:   []string{"SSL_CERT_FILE=" + certs.CA},
	})
	p.deployStories()
	if pids := p.runnerPIDs("stories"); len(pids) != 0 {
		t.Fatalf("runners %v before the first request", pids)
	}
	body := p.mustPost("completion through TLS everywhere", "/v1/completions", `{"model":"stories","prompt":"Once upon a time","max_tokens":20,"temperature":0}`)
	var completion struct {
		Choices []struct {
			Text string `json:"text"`
		} `json:"choices"`
	}
	if err := json.Unmarshal(body, &completion); err != nil || len(completion.Choices) != 1 || strings.TrimSpace(completion.Choices[0].Text) == "" {
		t.Fatalf("completion %s: want one choice with text (%v)", body, err)
	}
	if pids := p.runnerPIDs("stories"); len(pids) != 1 {
		t.Fatalf("want the one cold-started runner, have %v", pids)
	}

	// The runner that answered is a client of this NATS server, over TLS.
	connz, err := ns.Connz(&server.ConnzOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	runners := 0
	for _, c := range connz.Conns {
		names = append(names, c.Name+" "+c.TLSVersion)
		if c.TLSVersion == "" {
			t.Errorf("NATS client %q is not using TLS", c.Name)
		}
		if strings.HasPrefix(c.Name, "infer-runner-") {
			runners++
		}
	}
	if runners != 1 {
		t.Errorf("NATS clients %v: want one infer-runner-*", names)
	}
}

// startTLSNATS starts an embedded NATS server with JetStream that requires
// TLS with the given certificate and a user and password.
func startTLSNATS(t *testing.T, certs testenv.TLSFiles, user, pass string) *server.Server {
	t.Helper()
	tc, err := server.GenTLSConfig(&server.TLSConfigOpts{CertFile: certs.Cert, KeyFile: certs.Key})
	if err != nil {
		t.Fatalf("NATS TLS config: %v", err)
	}
	return testenv.StartNATS(t, &server.Options{
		TLS:        true,
		TLSConfig:  tc,
		TLSTimeout: 5,
		Username:   user,
		Password:   pass,
	})
}

// natsPlaintextPing speaks the NATS protocol without TLS, as a nats://
// client that is not upgraded would, and returns nil only if the server
// answers PING with PONG. (nats.go itself switches to TLS when the server
// asks for it, so it cannot show this.)
func natsPlaintextPing(addr, user, pass string) error {
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	r := bufio.NewReader(conn)
	info, err := r.ReadString('\n')
	if err != nil {
		return fmt.Errorf("reading INFO: %w", err)
	}
	connect, _ := json.Marshal(map[string]any{"user": user, "pass": pass, "verbose": false, "pedantic": false})
	if _, err := fmt.Fprintf(conn, "CONNECT %s\r\nPING\r\n", connect); err != nil {
		return fmt.Errorf("writing CONNECT: %w", err)
	}
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return fmt.Errorf("after INFO (tls_required %t), the server ended the connection: %w", strings.Contains(info, `"tls_required":true`), err)
		}
		if strings.HasPrefix(line, "PONG") {
			return nil
		}
		if strings.HasPrefix(line, "-ERR") {
			return errors.New(strings.TrimSpace(line))
		}
	}
}

// startTLSPostgres runs a private Postgres for this test that accepts
// only TLS connections (hostssl, and a reject for everything else) with
// the given certificate, and returns its verify-full URL and its port.
// The machine's own Postgres cannot be reconfigured for this.
func startTLSPostgres(t *testing.T, certs testenv.TLSFiles) (dbURL string, port int) {
	t.Helper()
	bin := postgresBinDir(t)
	// Postgres will not run as root: as root, run it as the postgres user
	// in a directory of its own (t.TempDir's parents are private to root).
	var prefix []string
	uid, gid := -1, -1
	dir := ""
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			t.Skipf("running as root and there is no postgres user to run a private Postgres as: %v", err)
		}
		runuser, err := exec.LookPath("runuser")
		if err != nil {
			t.Skipf("running as root and there is no runuser to run Postgres as %s: %v", u.Username, err)
		}
		uid, _ = strconv.Atoi(u.Uid)
		gid, _ = strconv.Atoi(u.Gid)
		prefix = []string{runuser, "-u", u.Username, "--"}
		dir, err = os.MkdirTemp("", "infer-tls-pg-")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
		if err := os.Chown(dir, uid, gid); err != nil {
			t.Fatal(err)
		}
	} else {
		dir = t.TempDir()
	}
	run := func(name string, args ...string) error {
		argv := append(append(append([]string(nil), prefix...), filepath.Join(bin, name)), args...)
		out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("%s: %w\n%s", strings.Join(argv, " "), err, out)
		}
		return nil
	}
	data := filepath.Join(dir, "data")
	if err := run("initdb", "-D", data, "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"); err != nil {
		t.Fatal(err)
	}
	// Postgres insists that its key belongs to it and is private.
	for from, to := range map[string]string{certs.Cert: "server.crt", certs.Key: "server.key"} {
		b, err := os.ReadFile(from)
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(data, to)
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		if uid >= 0 {
			if err := os.Chown(path, uid, gid); err != nil {
				t.Fatal(err)
			}
		}
	}
	port = testenv.FreePort(t)
	conf := fmt.Sprintf(`
listen_addresses = '127.0.0.1'
port = %d
unix_socket_directories = '%s'
ssl = on
ssl_cert_file = 'server.crt'
ssl_key_file = 'server.key'
fsync = off
`, port, dir)
	f, err := os.OpenFile(filepath.Join(data, "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.WriteString(conf)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}
	// The first matching line decides: TLS connections are trusted, any
	// other TCP connection is refused.
	hba := "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhost all all 0.0.0.0/0 reject\n"
	if err := os.WriteFile(filepath.Join(data, "pg_hba.conf"), []byte(hba), 0o600); err != nil {
		t.Fatal(err)
	}

	logPath := filepath.Join(dir, "postgres.log")
	if err := run("pg_ctl", "-D", data, "-l", logPath, "-w", "-t", "60", "start"); err != nil {
		b, _ := os.ReadFile(logPath)
		t.Fatalf("starting Postgres: %v\n%s", err, b)
	}
	t.Cleanup(func() {
		if err := run("pg_ctl", "-D", data, "-m", "immediate", "stop"); err != nil {
			t.Errorf("stopping Postgres: %v", err)
		}
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("postgres.log:\n%s", lastLines(string(b), 40))
		}
	})
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=verify-full&sslrootcert=%s", port, certs.CA), port
}

// postgresBinDir finds the directory of initdb and pg_ctl: on $PATH, or
// in Debian's /usr/lib/postgresql/VERSION/bin (the newest).
func postgresBinDir(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("initdb"); err == nil {
		return filepath.Dir(p)
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool {
		vi, _ := strconv.Atoi(filepath.Base(filepath.Dir(dirs[i])))
		vj, _ := strconv.Atoi(filepath.Base(filepath.Dir(dirs[j])))
		return vi > vj
	})
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "initdb")); err == nil {
			return d
		}
	}
	t.Skip("no PostgreSQL server binaries (initdb, pg_ctl on $PATH or in /usr/lib/postgresql/*/bin) to run a private Postgres with TLS; install the postgresql package")
	return ""
}
