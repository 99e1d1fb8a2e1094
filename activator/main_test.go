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
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/infer-run/infer/internal/blob"
	"github.com/infer-run/infer/internal/queue"
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
	NATS         string          `json:"nats"`
	Model        string          `json:"model"`
	Deployment   string          `json:"deployment"`
	DeploymentID string          `json:"deployment_id"`
	Artifact     runner.Artifact `json:"artifact"`
	// Engine is the runner's engine configuration (without ModelPath).
	Engine  runner.EngineConfig `json:"engine"`
	Dir     string              `json:"dir"`
	Verbose bool                `json:"verbose"`
	// Instant replaces the runner with one that answers each job at once
	// with one token and no model: the activator path's own cost.
	Instant bool `json:"instant"`
}

// startRunnerProcess runs a runner for a deployment in a child process, as
// in production: its decode threads and Go scheduler are its own, not the
// activator's. It stops when the test ends. It returns the process's ID.
func (h *harness) startRunnerProcess(deployment string, engine runner.EngineConfig) int {
	return h.startRunnerProcessSpec(runnerProcessSpec{Deployment: deployment, Engine: engine})
}

// startRunnerProcessSpec starts a runner process for spec.Deployment with
// spec's settings; the harness fills in the rest.
func (h *harness) startRunnerProcessSpec(s runnerProcessSpec) int {
	h.t.Helper()
	spec, _ := json.Marshal(runnerProcessSpec{
		Instant:      s.Instant,
		NATS:         h.nc.ConnectedUrl(),
		Model:        testenv.ModelPath(h.t),
		Deployment:   s.Deployment,
		DeploymentID: h.depID(s.Deployment),
		Artifact:     runner.Artifact{SHA256: h.art.SHA256, ObjectKey: h.art.ObjectKey, Size: h.art.Size},
		Engine:       s.Engine,
		Dir:          h.t.TempDir(),
		Verbose:      testing.Verbose(),
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
	return cmd.Process.Pid
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

	if spec.Instant {
		return runInstantRunner(ctx, spec)
	}
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
		ID:           wire.NewID(4),
		DeploymentID: spec.DeploymentID,
		Deployment:   spec.Deployment,
		Artifact:     spec.Artifact,
		Cache:        &runner.Cache{Dir: spec.Dir + "/cache", Blobs: blobs},
		Engine:       spec.Engine,
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

// runInstantRunner answers every job of the deployment's queue as a runner
// does (start, one delta, an acknowledged done, then the job's ack), at
// once and without a model.
func runInstantRunner(ctx context.Context, spec runnerProcessSpec) error {
	nc, err := nats.Connect(spec.NATS)
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	// As runner.consumer does: a deployment's queue is made when it first
	// has work, and a runner may come first.
	stream, err := queue.Create(ctx, js, spec.DeploymentID, 1)
	if err != nil {
		return fmt.Errorf("opening the request stream: %w", err)
	}
	cons, err := queue.EnsureConsumer(ctx, stream)
	if err != nil {
		return err
	}
	msgs, err := cons.Messages(jetstream.PullMaxMessages(max(1, spec.Engine.Parallel)))
	if err != nil {
		return err
	}
	go func() { <-ctx.Done(); msgs.Stop() }()
	id := wire.NewID(4)
	for {
		msg, err := msgs.Next()
		if err != nil {
			return nil // stopped
		}
		go func() {
			var job wire.Job
			if err := json.Unmarshal(msg.Data(), &job); err != nil {
				msg.Term()
				return
			}
			subject := wire.RunnerReplySubject(job.ReplyTo, id)
			events := []*wire.Event{
				{Type: wire.EventStart, Runner: id, Usage: &wire.Usage{PromptTokens: 1}},
				{Type: wire.EventDelta, Text: " Once"},
				{Type: wire.EventDone, FinishReason: "length", Usage: &wire.Usage{PromptTokens: 1, CompletionTokens: 1}},
			}
			if job.Kind == wire.KindEmbedding {
				// One vector of one value, 1.0, per input.
				events = events[:1]
				for i := range max(len(job.Inputs), len(job.InputTokens)) {
					events = append(events, &wire.Event{Type: wire.EventEmbedding, Embedding: &wire.Embedding{Index: i, Vector: []byte{0, 0, 0x80, 0x3f}}})
				}
				events = append(events, &wire.Event{Type: wire.EventDone, FinishReason: "stop", Usage: &wire.Usage{PromptTokens: 1}})
			}
			for i, ev := range events {
				ev.Seq = uint32(i)
				data, err := wire.AppendEvent(nil, ev)
				if err != nil {
					panic(err)
				}
				if i < len(events)-1 {
					nc.Publish(subject, data)
				} else {
					nc.Request(subject, data, 5*time.Second)
				}
			}
			msg.Ack()
		}()
	}
}
