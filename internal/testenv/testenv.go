// Package testenv starts the real services infer's tests run against:
// MinIO, Postgres and NATS with JetStream, plus the repository's test model.
// Tests use the real thing rather than fakes so that what passes here is
// what runs in production; each helper gives the calling test its own
// instance or database and removes it in t.Cleanup.
package testenv

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/infer-run/infer/internal/blob"
)

// Fixed MinIO credentials: each server is private to one test and listens
// on loopback only.
const (
	minioUser     = "infer-test"
	minioPassword = "infer-test-secret"
)

const minioInstallHint = "run `make minio` (which does `go install github.com/minio/minio@v0.0.0-20260212201848-7aac2a2c5b7c`, ~8 minutes once)"

// MinIO starts a MinIO server with an empty data directory for this test
// and returns how to reach it. The server is killed when the test ends.
func MinIO(t testing.TB) blob.S3Config {
	t.Helper()
	return startMinIO(t, "", "")
}

// MinIOTLS is MinIO serving HTTPS only, with the certificate in certFile
// and its key in keyFile (PEM); Secure is set in what it returns. Clients
// must be told to trust the certificate's issuer.
func MinIOTLS(t testing.TB, certFile, keyFile string) blob.S3Config {
	t.Helper()
	return startMinIO(t, certFile, keyFile)
}

func startMinIO(t testing.TB, certFile, keyFile string) blob.S3Config {
	t.Helper()
	bin := minioBinary(t)
	dataDir := t.TempDir()
	logPath := filepath.Join(t.TempDir(), "minio.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatalf("testenv: creating MinIO log: %v", err)
	}
	defer logFile.Close() // the child holds its own copy of the descriptor

	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(FreePort(t)))
	console := net.JoinHostPort("127.0.0.1", strconv.Itoa(FreePort(t)))
	args := []string{"server", "--address", addr, "--console-address", console}
	probe := &http.Client{Timeout: 2 * time.Second}
	scheme := "http"
	if certFile != "" {
		// MinIO serves TLS when its certs directory holds public.crt and
		// private.key; an explicit directory keeps ~/.minio out of it.
		certsDir := t.TempDir()
		copyFile(t, certFile, filepath.Join(certsDir, "public.crt"))
		copyFile(t, keyFile, filepath.Join(certsDir, "private.key"))
		args = append(args, "--certs-dir", certsDir)
		// The readiness probe trusts exactly the certificate MinIO was
		// given, whatever issued it.
		pem, err := os.ReadFile(certFile)
		if err != nil {
			t.Fatalf("testenv: reading MinIO certificate: %v", err)
		}
		roots := x509.NewCertPool()
		if !roots.AppendCertsFromPEM(pem) {
			t.Fatalf("testenv: no certificate in %s", certFile)
		}
		probe.Transport = &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}
		scheme = "https"
	}
	cmd := exec.Command(bin, append(args, dataDir)...)
	cmd.Env = append(os.Environ(),
		"MINIO_ROOT_USER="+minioUser,
		"MINIO_ROOT_PASSWORD="+minioPassword,
		"MINIO_BROWSER=off",
	)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		t.Fatalf("testenv: starting MinIO %s: %v", bin, err)
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
	})

	if err := waitReady(probe, exited, scheme+"://"+addr+"/minio/health/ready", 60*time.Second); err != nil {
		out, _ := os.ReadFile(logPath)
		t.Fatalf("testenv: MinIO at %s: %v\n%s", addr, err, out)
	}
	return blob.S3Config{
		Endpoint:  addr,
		AccessKey: minioUser,
		SecretKey: minioPassword,
		Bucket:    "infer-test",
		Secure:    certFile != "",
	}
}

func copyFile(t testing.TB, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	if err := os.WriteFile(to, b, 0o600); err != nil {
		t.Fatalf("testenv: %v", err)
	}
}

// minioBinary finds MinIO where `make minio` puts it, or where the user
// says it is.
func minioBinary(t testing.TB) string {
	t.Helper()
	if bin := os.Getenv("INFER_MINIO_BIN"); bin != "" {
		if _, err := os.Stat(bin); err == nil {
			return bin
		}
	}
	if bin, err := exec.LookPath("minio"); err == nil {
		return bin
	}
	bin := filepath.Join(goPath(), "bin", "minio")
	if _, err := os.Stat(bin); err == nil {
		return bin
	}
	t.Fatalf("testenv: no MinIO binary ($INFER_MINIO_BIN, minio on $PATH, %s): %s", bin, minioInstallHint)
	return ""
}

// goPath is the first GOPATH entry, where `go install` puts binaries.
func goPath() string {
	gp := ""
	if out, err := exec.Command("go", "env", "GOPATH").Output(); err == nil {
		gp = strings.TrimSpace(string(out))
	}
	if gp == "" {
		gp = os.Getenv("GOPATH")
	}
	if gp == "" {
		home, _ := os.UserHomeDir()
		return filepath.Join(home, "go")
	}
	return filepath.SplitList(gp)[0]
}

// waitReady polls url until it answers 200, the process exits or timeout
// passes.
func waitReady(client *http.Client, exited <-chan struct{}, url string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		resp, err := client.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("status %s", resp.Status)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready after %v: %w", timeout, err)
		}
		select {
		case <-exited:
			return errors.New("server exited before it was ready")
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Postgres creates an empty database for this test on the local Postgres
// and returns its connection string. The database is dropped when the test
// ends. The server is found through $INFER_TEST_DATABASE_URL, then
// $DATABASE_URL, then 127.0.0.1:5432 as the current OS user.
func Postgres(t testing.TB) string {
	t.Helper()
	admin := os.Getenv("INFER_TEST_DATABASE_URL")
	if admin == "" {
		admin = os.Getenv("DATABASE_URL")
	}
	if admin == "" {
		admin = "postgres://127.0.0.1:5432/postgres?sslmode=disable"
	}
	u, err := url.Parse(admin)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		t.Fatalf("testenv: admin database %q must be a postgres:// URL", admin)
	}
	if _, err := pgx.ParseConfig(admin); err != nil {
		t.Fatalf("testenv: admin database URL: %v", err)
	}

	name := "infer_test_" + randomHex(8)
	ident := pgx.Identifier{name}.Sanitize()
	if err := adminExec(t.Context(), admin, "CREATE DATABASE "+ident); err != nil {
		t.Fatalf("testenv: creating database on %s: %v\n"+
			"Postgres 14+ must be running and reachable without a password "+
			"(Debian/Ubuntu: `apt-get install postgresql && pg_ctlcluster 15 main start`), "+
			"or set INFER_TEST_DATABASE_URL to an admin connection URL.", u.Redacted(), err)
	}
	t.Cleanup(func() {
		// t.Context is already canceled when cleanups run. FORCE ends the
		// connections the code under test may have left open.
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := adminExec(ctx, admin, "DROP DATABASE IF EXISTS "+ident+" WITH (FORCE)"); err != nil {
			t.Errorf("testenv: dropping database %s: %v", name, err)
		}
	})

	u.Path = "/" + name
	q := u.Query()
	// pgx lets these query parameters override the path's database.
	q.Del("dbname")
	q.Del("database")
	u.RawQuery = q.Encode()
	return u.String()
}

func adminExec(ctx context.Context, connString, sql string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, connString)
	if err != nil {
		return fmt.Errorf("connecting: %w", err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, sql); err != nil {
		return fmt.Errorf("%s: %w", sql, err)
	}
	return nil
}

// NATS starts an embedded NATS server with JetStream for this test and
// returns its client URL; it shuts down when the test ends. If
// $INFER_TEST_NATS_URL is set, that server is used instead.
func NATS(t testing.TB) string {
	t.Helper()
	if u := os.Getenv("INFER_TEST_NATS_URL"); u != "" {
		return u
	}
	return StartNATS(t, &server.Options{}).ClientURL()
}

// JetStream connects to NATS(t) and returns the connection, closed when
// the test ends, and its JetStream context.
func JetStream(t testing.TB) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, err := nats.Connect(NATS(t))
	if err != nil {
		t.Fatalf("testenv: connecting to NATS: %v", err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatalf("testenv: JetStream: %v", err)
	}
	return nc, js
}

// StartNATS starts an embedded NATS server with JetStream and opts (TLS
// or users, say) for this test, on a random loopback port, with its store
// in a temporary directory; it shuts down when the test ends.
func StartNATS(t testing.TB, opts *server.Options) *server.Server {
	t.Helper()
	opts.Host, opts.Port = "127.0.0.1", -1 // a random port
	opts.JetStream, opts.StoreDir = true, t.TempDir()
	opts.NoLog, opts.NoSigs = true, true
	ns, err := server.NewServer(opts)
	if err != nil {
		t.Fatalf("testenv: creating NATS server: %v", err)
	}
	go ns.Start()
	t.Cleanup(func() {
		ns.Shutdown()
		ns.WaitForShutdown()
	})
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatalf("testenv: NATS server not ready after 10s")
	}
	return ns
}

// RestartableNATS is an embedded NATS server on a fixed loopback port
// (and, with JetStream, a fixed store directory), so that a test can stop
// it and start it again as an operator restarting NATS would. It is
// started, and stopped when the test ends.
type RestartableNATS struct {
	t    testing.TB
	opts server.Options
	srv  *server.Server
}

// StartRestartableNATS starts one with opts, whose host, port and store
// directory it sets.
func StartRestartableNATS(t testing.TB, opts server.Options) *RestartableNATS {
	t.Helper()
	opts.Host, opts.Port = "127.0.0.1", FreePort(t)
	opts.StoreDir = t.TempDir()
	opts.NoLog, opts.NoSigs = true, true
	n := &RestartableNATS{t: t, opts: opts}
	n.Start()
	t.Cleanup(n.Stop)
	return n
}

// Port is the server's client port.
func (n *RestartableNATS) Port() int { return n.opts.Port }

// Start starts the server again after Stop.
func (n *RestartableNATS) Start() {
	n.t.Helper()
	opts := n.opts
	srv, err := server.NewServer(&opts)
	if err != nil {
		n.t.Fatalf("testenv: creating NATS server: %v", err)
	}
	go srv.Start()
	if !srv.ReadyForConnections(30 * time.Second) {
		n.t.Fatal("testenv: NATS server not ready after 30s")
	}
	n.srv = srv
}

// Stop shuts the server down; clients see it gone.
func (n *RestartableNATS) Stop() {
	if n.srv != nil {
		n.srv.Shutdown()
		n.srv.WaitForShutdown()
		n.srv = nil
	}
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
// Another process may take it before the caller binds it, which is rare
// enough for tests.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("testenv: finding a free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// RepoRoot returns the repository root: the nearest directory at or above
// the test's working directory (its package directory) holding go.mod.
func RepoRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatalf("testenv: no go.mod above the working directory")
		}
		dir = parent
	}
}

// ModelPath returns the absolute path of the tiny test model,
// ../shared/models/stories260K.gguf next to the repository.
func ModelPath(t testing.TB) string {
	t.Helper()
	path := filepath.Join(filepath.Dir(RepoRoot(t)), "shared", "models", "stories260K.gguf")
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("testenv: test model missing: %v (it is expected at ../shared/models/stories260K.gguf relative to the repository root)", err)
	}
	return path
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b) // never fails, per crypto/rand
	return hex.EncodeToString(b)
}

// UntilFirstToken reads a completion stream up to its first chunk with
// text and returns the reader, positioned after it.
func UntilFirstToken(t testing.TB, stream io.Reader) *bufio.Reader {
	t.Helper()
	br := bufio.NewReader(stream)
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("stream ended before any token: %v", err)
		}
		if strings.Contains(line, `"text":"`) && !strings.Contains(line, `"text":""`) {
			return br
		}
	}
}
