package controlplane

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/sync/errgroup"

	"github.com/infer-run/infer/internal/queue"
	"github.com/infer-run/infer/internal/testenv"
	"github.com/infer-run/infer/registry"
)

// BenchmarkIdleDeployments measures what deployments at zero cost the
// control plane: N deployments (created in Postgres through the registry,
// their queues created in JetStream as the activator does on deploy), no
// runners, no requests. It runs the control plane as `infer serve` does
// (the registry in Postgres, the Postgres lease) and reports its CPU time
// per second idle, as a percentage of one core, over a window of
// $INFER_BENCH_IDLE_WINDOW (default 30 s: one sweep period, which
// includes one read of the deployment list) after a warm-up of 5 s plus
// 1 ms per deployment (the first pass looks at every one).
//
// NATS runs as a separate nats-server process when one is on $PATH, so
// the figure is the control plane's alone (the server's is reported as
// nats-cpu-%); otherwise it is embedded and counted in.
//
//	go test ./controlplane -run '^$' -bench BenchmarkIdleDeployments -benchtime 1x
func BenchmarkIdleDeployments(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		b.Run(strconv.Itoa(n), func(b *testing.B) { benchIdle(b, n) })
	}
}

func benchIdle(b *testing.B, n int) {
	window := 30 * time.Second
	if s := os.Getenv("INFER_BENCH_IDLE_WINDOW"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			b.Fatalf("INFER_BENCH_IDLE_WINDOW: %v", err)
		}
		window = d
	}
	ctx := b.Context()
	db := testenv.Postgres(b)
	store, err := registry.Open(ctx, db)
	if err != nil {
		b.Fatal(err)
	}
	defer store.Close()
	natsURL, natsPID := benchNATS(b)
	nc, err := nats.Connect(natsURL)
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		b.Fatal(err)
	}

	tenant, err := store.EnsureTenant(ctx, "bench")
	if err != nil {
		b.Fatal(err)
	}
	sum := sha256.Sum256([]byte("idle bench"))
	sha := hex.EncodeToString(sum[:])
	if _, _, err := store.PutArtifact(ctx, registry.Artifact{SHA256: sha, Size: 1, ObjectKey: "blobs/" + sha}); err != nil {
		b.Fatal(err)
	}
	created := time.Now()
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(16)
	for i := range n {
		g.Go(func() error {
			d := registry.DefaultDeployment()
			d.TenantID, d.Name, d.ArtifactSHA256 = tenant.ID, fmt.Sprintf("idle-%05d", i), sha
			d.ID = registry.NewDeploymentID()
			if _, err := queue.Ensure(gctx, js, d.ID, queue.DeploymentLimits(d.QueueLimit, d.QueueTimeout, 1)); err != nil {
				return err
			}
			_, err := store.PutDeployment(gctx, d)
			return err
		})
	}
	if err := g.Wait(); err != nil {
		b.Fatal(err)
	}
	b.Logf("%d deployments and queues created in %s", n, time.Since(created).Round(time.Millisecond))
	cpu0, t0 := cpuSelf(b), time.Now()
	if _, err := store.ListDeployments(ctx, ""); err != nil {
		b.Fatal(err)
	}
	b.Logf("reading the list of %d deployments: %s, %s of this process's CPU", n, time.Since(t0).Round(time.Millisecond), (cpuSelf(b) - cpu0).Round(time.Millisecond))

	cp, err := New(Config{
		Registry: store,
		Driver:   &noRunners{},
		NATS:     nc,
		Logger:   slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
		Lease:    &PostgresLease{ConnString: db, Grace: time.Millisecond},
	})
	if err != nil {
		b.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- cp.Run(runCtx) }()
	defer func() { cancel(); <-done }()

	time.Sleep(5*time.Second + time.Duration(n)*time.Millisecond) // the first full pass
	b.ResetTimer()
	for range b.N {
		self0, nats0 := cpuSelf(b), cpuOf(natsPID)
		time.Sleep(window)
		self1, nats1 := cpuSelf(b), cpuOf(natsPID)
		b.ReportMetric(100*float64(self1-self0)/float64(window), "cp-cpu-%")
		if natsPID > 0 {
			b.ReportMetric(100*float64(nats1-nats0)/float64(window), "nats-cpu-%")
		}
	}
	b.StopTimer()
}

// noRunners is a driver with nothing running; idle deployments start
// nothing.
type noRunners struct {
	mu     sync.Mutex
	starts int
}

func (d *noRunners) Start(context.Context, RunnerSpec) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.starts++
	return nil
}
func (d *noRunners) Stop(context.Context, string) error           { return nil }
func (d *noRunners) Kill(context.Context, string) error           { return nil }
func (d *noRunners) Runners(context.Context) ([]RunnerRef, error) { return nil, nil }

// benchNATS starts nats-server as its own process when there is one, so
// its CPU time is not the control plane's, and returns its URL and PID;
// else an embedded server and PID 0.
func benchNATS(b *testing.B) (string, int) {
	bin, err := exec.LookPath("nats-server")
	if err != nil {
		b.Log("no nats-server on $PATH: NATS is embedded and its CPU time counts as the control plane's")
		return testenv.NATS(b), 0
	}
	port := testenv.FreePort(b)
	cmd := exec.Command(bin, "-js", "-a", "127.0.0.1", "-p", strconv.Itoa(port), "-sd", filepath.Join(b.TempDir(), "js"))
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	url := fmt.Sprintf("nats://127.0.0.1:%d", port)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if nc, err := nats.Connect(url); err == nil {
			nc.Close()
			break
		}
		if time.Now().After(deadline) {
			b.Fatal("nats-server did not start")
		}
	}
	return url, cmd.Process.Pid
}

// cpuSelf is this process's user and system CPU time.
func cpuSelf(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// cpuOf is another process's user and system CPU time from /proc (0 for
// pid 0 or where there is no /proc).
func cpuOf(pid int) time.Duration {
	if pid <= 0 {
		return 0
	}
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command name, which is in parentheses: utime and
	// stime are the 14th and 15th fields of the whole line.
	rest := string(data)
	if i := strings.LastIndexByte(rest, ')'); i >= 0 {
		rest = rest[i+2:]
	}
	f := strings.Fields(rest)
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	const clkTck = 100 // USER_HZ on Linux
	return time.Duration(ut+st) * time.Second / clkTck
}
