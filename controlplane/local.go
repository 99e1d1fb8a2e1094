package controlplane

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"
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

	mu      sync.Mutex
	running map[string]*localRunner
}

type localRunner struct {
	ref  RunnerRef
	cmd  *exec.Cmd
	done chan struct{}
}

func (d *LocalDriver) Start(ctx context.Context, spec RunnerSpec) error {
	args := append(append(append([]string{}, d.Command[1:]...), spec.Args()...), d.ExtraArgs...)
	cmd := exec.Command(d.Command[0], args...)
	cmd.Env = append(os.Environ(), d.Env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM, Setpgid: true}
	var logFile io.WriteCloser
	if d.LogDir != "" {
		if err := os.MkdirAll(d.LogDir, 0o755); err != nil {
			return fmt.Errorf("creating runner log dir: %w", err)
		}
		f, err := os.Create(filepath.Join(d.LogDir, "runner-"+spec.Deployment+"-"+spec.ID+".log"))
		if err != nil {
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
		d.mu.Unlock()
		close(r.done)
		d.logger().Info("runner process exited", "runner", spec.ID, "deployment", spec.Deployment, "status", exitStatus(err))
	}()
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
	rs := make([]*localRunner, 0, len(d.running))
	for _, r := range d.running {
		rs = append(rs, r)
	}
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
