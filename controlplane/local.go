package controlplane

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/infer-run/infer/internal/hugepages"
)

// LocalDriver runs runners as child processes of this one: `infer runner
// …` on the same host. A runner dies with its control plane (Pdeathsig),
// so a crashed control plane leaves no orphans holding memory.
type LocalDriver struct {
	// Command is the infer binary and the arguments before the runner's
	// own, e.g. ["/usr/local/bin/infer", "runner"].
	Command []string
	// ExtraArgs are appended to every runner's command line: connection
	// settings such as --nats, --cache-dir, --blob-dir.
	ExtraArgs []string
	// Env is added to the inherited environment.
	Env []string
	// LogDir receives one log file per runner; empty sends runner logs to
	// this process's stderr.
	LogDir string
	Log    *slog.Logger
	// Spares is how many runner processes are kept started, waiting for
	// a deployment (`infer runner --standby`): Start hands the next one
	// its arguments instead of starting a process, and starts another
	// spare. A process start is what remained of a small model's cold
	// start (stories260K, a burst of 16 at zero: ~107 ms of ~270 ms on a
	// loaded 2-vCPU host); a spare costs its memory (~70 MiB) and no CPU.
	Spares int
	// GPUs is the host's GPU inventory (NvidiaSMI); nil: no GPUs. A
	// deployment's runners get resources.gpus of them each (localgpu.go).
	GPUs GPUInventory
	// Waiting, when set, hears why a runner could not start: no GPU has
	// room now (*NoCapacityError; Start is tried again at the control
	// plane's next tick) or never will (*TooFewGPUsError).
	Waiting func(spec RunnerSpec, err error)

	mu      sync.Mutex
	placeMu sync.Mutex // one placement at a time: read GPUs, then claim
	claims  map[string]GPUClaim
	running map[string]*localRunner
	spares  []*localRunner
	nSpare  int // numbers spare log files
}

type localRunner struct {
	ref  RunnerRef // zero while a spare
	cmd  *exec.Cmd
	done chan struct{}
	// stdin takes a spare's arguments; log is its log file.
	stdin io.WriteCloser
	log   *os.File
}

// spareDelay is how long after a spare took a deployment the next one
// starts.
const spareDelay = 2 * time.Second

// standbyFlag starts a runner that waits for its arguments on stdin (one
// JSON array of strings) before it does anything else.
const standbyFlag = "--standby"

func (d *LocalDriver) Start(ctx context.Context, spec RunnerSpec) error {
	args := append(append([]string{}, spec.Args()...), d.ExtraArgs...)
	gpuEnv, err := d.placeRunner(ctx, spec)
	if err != nil {
		return err
	}
	for spec.Resources.GPUs == 0 {
		r := d.takeSpare()
		if r == nil {
			break
		}
		err := d.assign(r, spec, args)
		if err == nil {
			// Not at once: starting a process takes CPU the runner
			// just handed its deployment is loading with.
			time.AfterFunc(spareDelay, d.Prestart)
			return nil
		}
		d.logger().Warn("a spare runner could not take a deployment; trying another", "err", err)
	}
	// The pool is empty (or off): refill it later, as after a spare took
	// a deployment, not while this runner loads.
	defer time.AfterFunc(spareDelay, d.Prestart)
	args = append(append([]string{}, d.Command[1:]...), args...)
	cmd := exec.Command(d.Command[0], args...)
	// Huge pages from the first exec: a runner started without them
	// starts itself a second time to get them (internal/hugepages).
	cmd.Env, _ = hugepages.Env(append(append(os.Environ(), d.Env...), gpuEnv...))
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM, Setpgid: true}
	var logFile io.WriteCloser
	if d.LogDir != "" {
		if err := os.MkdirAll(d.LogDir, 0o755); err != nil {
			d.release(spec.ID)
			return fmt.Errorf("creating runner log dir: %w", err)
		}
		f, err := os.Create(filepath.Join(d.LogDir, "runner-"+spec.Deployment+"-"+spec.ID+".log"))
		if err != nil {
			d.release(spec.ID)
			return fmt.Errorf("creating runner log: %w", err)
		}
		logFile = f
		cmd.Stdout, cmd.Stderr = f, f
	} else {
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	}
	if err := cmd.Start(); err != nil {
		if logFile != nil {
			logFile.Close()
		}
		d.release(spec.ID)
		return fmt.Errorf("starting runner for %s: %w", spec.Deployment, err)
	}
	r := &localRunner{
		ref:  RunnerRef{ID: spec.ID, DeploymentID: spec.DeploymentID, Deployment: spec.Deployment, Artifact: spec.Artifact, StartedAt: time.Now()},
		cmd:  cmd,
		done: make(chan struct{}),
	}
	d.mu.Lock()
	if d.running == nil {
		d.running = map[string]*localRunner{}
	}
	d.running[spec.ID] = r
	d.mu.Unlock()
	d.logger().Info("runner process started", "runner", spec.ID, "deployment", spec.Deployment, "pid", cmd.Process.Pid)

	go func() {
		err := cmd.Wait()
		if logFile != nil {
			logFile.Close()
		}
		d.mu.Lock()
		delete(d.running, spec.ID)
		d.releaseLocked(spec.ID)
		d.mu.Unlock()
		close(r.done)
		d.logger().Info("runner process exited", "runner", spec.ID, "deployment", spec.Deployment, "status", exitStatus(err))
	}()
	return nil
}

// Prestart starts spare runner processes until Spares wait.
func (d *LocalDriver) Prestart() {
	for {
		d.mu.Lock()
		if len(d.spares) >= d.Spares {
			d.mu.Unlock()
			return
		}
		d.nSpare++
		n := d.nSpare
		d.mu.Unlock()
		if err := d.startSpare(n); err != nil {
			d.logger().Warn("starting a spare runner", "err", err)
			return
		}
	}
}

func (d *LocalDriver) startSpare(n int) error {
	args := append(append([]string{}, d.Command[1:]...), standbyFlag)
	cmd := exec.Command(d.Command[0], args...)
	cmd.Env, _ = hugepages.Env(append(append(os.Environ(), d.Env...), d.cpuEnv()...))
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM, Setpgid: true}
	r := &localRunner{cmd: cmd, done: make(chan struct{})}
	if d.LogDir != "" {
		if err := os.MkdirAll(d.LogDir, 0o755); err != nil {
			return fmt.Errorf("creating runner log dir: %w", err)
		}
		f, err := os.Create(filepath.Join(d.LogDir, fmt.Sprintf("runner-spare-%d.log", n)))
		if err != nil {
			return fmt.Errorf("creating runner log: %w", err)
		}
		r.log = f
		cmd.Stdout, cmd.Stderr = f, f
	} else {
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return err
	}
	r.stdin = stdin
	if err := cmd.Start(); err != nil {
		if r.log != nil {
			r.log.Close()
		}
		return fmt.Errorf("starting a spare runner: %w", err)
	}
	d.mu.Lock()
	d.spares = append(d.spares, r)
	d.mu.Unlock()
	go func() {
		err := cmd.Wait()
		if r.log != nil {
			r.log.Close()
		}
		d.mu.Lock()
		id := r.ref.ID
		if id != "" {
			delete(d.running, id)
		} else if i := slices.Index(d.spares, r); i >= 0 {
			d.spares = slices.Delete(d.spares, i, i+1)
		}
		close(r.done)
		d.mu.Unlock()
		if id != "" {
			d.logger().Info("runner process exited", "runner", id, "deployment", r.ref.Deployment, "status", exitStatus(err))
		}
	}()
	return nil
}

// takeSpare removes a waiting spare from the pool, or returns nil.
func (d *LocalDriver) takeSpare() *localRunner {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.spares) == 0 {
		return nil
	}
	r := d.spares[0]
	d.spares = d.spares[1:]
	return r
}

// assign hands a spare its deployment: its arguments on stdin, its log
// file renamed to the runner's.
func (d *LocalDriver) assign(r *localRunner, spec RunnerSpec, args []string) error {
	line, err := json.Marshal(args)
	if err != nil {
		return err
	}
	d.mu.Lock()
	select {
	case <-r.done:
		d.mu.Unlock()
		return errors.New("the spare exited")
	default:
	}
	r.ref = RunnerRef{ID: spec.ID, DeploymentID: spec.DeploymentID, Deployment: spec.Deployment, Artifact: spec.Artifact, StartedAt: time.Now()}
	if d.running == nil {
		d.running = map[string]*localRunner{}
	}
	d.running[spec.ID] = r
	d.mu.Unlock()
	_, err = r.stdin.Write(append(line, '\n'))
	r.stdin.Close()
	if err != nil {
		// It died on the way; its wait goroutine removes it from running.
		r.cmd.Process.Kill()
		return fmt.Errorf("handing a spare runner its deployment: %w", err)
	}
	if r.log != nil {
		name := filepath.Join(d.LogDir, "runner-"+spec.Deployment+"-"+spec.ID+".log")
		if err := os.Rename(r.log.Name(), name); err != nil {
			d.logger().Warn("renaming a spare runner's log", "err", err)
		}
	}
	d.logger().Info("runner process started", "runner", spec.ID, "deployment", spec.Deployment, "pid", r.cmd.Process.Pid, "spare", true)
	return nil
}

func exitStatus(err error) string {
	if err == nil {
		return "0"
	}
	return err.Error()
}

func (d *LocalDriver) logger() *slog.Logger {
	if d.Log == nil {
		return slog.Default()
	}
	return d.Log
}

// Stop sends SIGTERM, which a runner takes as "drain and exit".
func (d *LocalDriver) Stop(ctx context.Context, id string) error {
	return d.signal(id, syscall.SIGTERM)
}

// Kill sends SIGKILL.
func (d *LocalDriver) Kill(ctx context.Context, id string) error {
	return d.signal(id, syscall.SIGKILL)
}

func (d *LocalDriver) signal(id string, sig syscall.Signal) error {
	d.mu.Lock()
	r := d.running[id]
	if r != nil && sig == syscall.SIGTERM {
		r.ref.Stopping = true
	}
	d.mu.Unlock()
	if r == nil {
		return nil
	}
	if err := r.cmd.Process.Signal(sig); err != nil && err != os.ErrProcessDone {
		return fmt.Errorf("signalling runner %s: %w", id, err)
	}
	return nil
}

func (d *LocalDriver) Runners(ctx context.Context) ([]RunnerRef, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]RunnerRef, 0, len(d.running))
	for _, r := range d.running {
		out = append(out, r.ref)
	}
	return out, nil
}

// Shutdown stops every runner and waits for them to exit, killing those
// still running when ctx ends.
func (d *LocalDriver) Shutdown(ctx context.Context) {
	d.mu.Lock()
	d.Spares = 0 // none started again
	rs := make([]*localRunner, 0, len(d.running)+len(d.spares))
	for _, r := range d.running {
		rs = append(rs, r)
	}
	rs = append(rs, d.spares...)
	d.mu.Unlock()
	for _, r := range rs {
		r.cmd.Process.Signal(syscall.SIGTERM)
	}
	for _, r := range rs {
		select {
		case <-r.done:
		case <-ctx.Done():
			r.cmd.Process.Kill()
			<-r.done
		}
	}
}
