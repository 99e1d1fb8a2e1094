package activator_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"syscall"
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/infer-run/infer/internal/blob"
	"github.com/infer-run/infer/internal/testenv"
	"github.com/infer-run/infer/internal/wire"
	"github.com/infer-run/infer/runner"
)

// runnerProcessEnv, when set, makes the test binary a runner process (see
// startRunnerProcess) instead of running tests.
const runnerProcessEnv = "INFER_TEST_RUNNER_PROCESS"

func TestMain(m *testing.M) {
	if spec := os.Getenv(runnerProcessEnv); spec != "" {
		if err := runRunnerProcess(spec); err != nil {
			fmt.Fprintln(os.Stderr, "runner process:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// runnerProcessSpec is what a runner process is told through the
// environment.
type runnerProcessSpec struct {
	NATS       string          `json:"nats"`
	Model      string          `json:"model"`
	Deployment string          `json:"deployment"`
	Artifact   runner.Artifact `json:"artifact"`
	// Engine is the runner's engine configuration (without ModelPath).
	Engine  runner.EngineConfig `json:"engine"`
	Dir     string              `json:"dir"`
	Verbose bool                `json:"verbose"`
}

// startRunnerProcess runs a runner for a deployment in a child process, as
// in production: its decode threads and Go scheduler are its own, not the
// activator's. It stops when the test ends.
func (h *harness) startRunnerProcess(deployment string, engine runner.EngineConfig) {
	h.t.Helper()
	spec, _ := json.Marshal(runnerProcessSpec{
		NATS:       h.nc.ConnectedUrl(),
		Model:      testenv.ModelPath(h.t),
		Deployment: deployment,
		Artifact:   runner.Artifact{SHA256: h.art.SHA256, ObjectKey: h.art.ObjectKey, Size: h.art.Size},
		Engine:     engine,
		Dir:        h.t.TempDir(),
		Verbose:    testing.Verbose(),
	})
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), runnerProcessEnv+"="+string(spec))
	cmd.Stderr = io.Discard
	if testing.Verbose() {
		cmd.Stderr = os.Stderr
	}
	// The child exits when its stdin closes, so it never outlives the
	// test binary.
	stdin, err := cmd.StdinPipe()
	if err != nil {
		h.t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		stdin.Close()
		cmd.Wait()
	})
}

func runRunnerProcess(specJSON string) error {
	var spec runnerProcessSpec
	if err := json.Unmarshal([]byte(specJSON), &spec); err != nil {
		return fmt.Errorf("decoding spec: %w", err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		io.Copy(io.Discard, os.Stdin)
		cancel()
	}()

	blobs, err := blob.NewDir(spec.Dir + "/blobs")
	if err != nil {
		return err
	}
	f, err := os.Open(spec.Model)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := blobs.Put(ctx, spec.Artifact.ObjectKey, f, -1); err != nil {
		return fmt.Errorf("storing weights: %w", err)
	}
	nc, err := nats.Connect(spec.NATS)
	if err != nil {
		return err
	}
	defer nc.Close()
	log := slog.New(slog.DiscardHandler)
	if spec.Verbose {
		log = slog.Default()
	}
	r, err := runner.New(runner.Config{
		ID:         wire.NewID(4),
		Deployment: spec.Deployment,
		Artifact:   spec.Artifact,
		Cache:      &runner.Cache{Dir: spec.Dir + "/cache", Blobs: blobs},
		Engine:     spec.Engine,
	}, nc, log)
	if err != nil {
		return err
	}
	// As `infer runner` does (cmd/infer/runner.go).
	runtime.GOMAXPROCS(runtime.GOMAXPROCS(0) + spec.Engine.Parallel)
	if err := r.Run(ctx, nil); err != nil && ctx.Err() == nil {
		return err
	}
	return nil
}
