// Package runner serves one deployment's model: it fetches the weights
// into a local cache, loads them with llama.cpp, takes jobs from the
// deployment's JetStream queue only as fast as it has free slots, runs them
// with continuous batching and streams tokens back over NATS. It listens on
// no port. It stops taking work and exits when told to drain (SIGTERM) and,
// if configured, after an idle timeout.
package runner

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/infer-run/infer/internal/blob"
	"github.com/infer-run/infer/internal/queue"
	"github.com/infer-run/infer/internal/wire"
)

// Config is everything one runner needs.
type Config struct {
	ID string
	// DeploymentID is the deployment's key: its queue and subjects (see
	// wire.RequestStream). Deployment is its name, for logs and records.
	DeploymentID string
	Deployment   string
	Artifact     Artifact
	Cache        *Cache
	Engine       EngineConfig
	// ChatTemplate overrides the template from the GGUF (chat.Names).
	ChatTemplate string
	// IdleTimeout makes the runner exit by itself after this long without
	// work; zero leaves scale-down to the control plane.
	IdleTimeout time.Duration
	Heartbeat   time.Duration
	// ClientCheck is how often the runner asks whether a streaming job's
	// activator still holds its client (default 2 s); see watchClient.
	ClientCheck time.Duration
	// QueueReplicas is the copies of the streams and buckets the runner
	// creates when they are missing (--queue-replicas).
	QueueReplicas int
}

// Runner is one model replica.
type Runner struct {
	cfg  Config
	log  *slog.Logger
	nc   *nats.Conn
	js   jetstream.JetStream
	host string

	engine *Engine
	// prompt renders chats with the template in use.
	prompt  *prompter
	readyAt time.Time
	started time.Time

	mu          sync.Mutex
	phase       wire.Phase
	detail      string
	retry       bool // with PhaseFailed: the failure may pass (Heartbeat.Retry)
	inFlight    int
	lastRequest time.Time
	coldStart   wire.ColdStart
	devices     []wire.Device // what ggml loaded (devices.go)
	gpuLayers   int
	running     map[string]context.CancelFunc // job ID → cancel
	cancelled   map[string]time.Time          // job IDs cancelled before they ran → until
	swept       time.Time                     // when expired cancelled IDs were last dropped
	// sinks are the sync jobs' reply sinks by job ID, for resend requests:
	// running (zero time), or ended and kept until the time given.
	sinks      map[string]sinkEntry
	sinksSwept time.Time

	// logs publishes the runner's log to NATS (logs.go); nil when the
	// runner's ID cannot be a subject token.
	logs *logPublisher

	// holds records which runner holds each redelivered job, and gate
	// runs a suspect one alone (redelivery.go).
	holds jetstream.KeyValue
	gate  gate
}

// New creates a runner on an open NATS connection.
func New(cfg Config, nc *nats.Conn, log *slog.Logger) (*Runner, error) {
	if !wire.ValidKey(cfg.DeploymentID) {
		return nil, fmt.Errorf("deployment ID %q: want 1 to 64 of a-z, 0-9, '_' and '-'", cfg.DeploymentID)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("opening JetStream: %w", err)
	}
	if cfg.Heartbeat <= 0 {
		cfg.Heartbeat = time.Second
	}
	if cfg.ClientCheck <= 0 {
		cfg.ClientCheck = 2 * time.Second
	}
	host, _ := os.Hostname()
	var logs *logPublisher
	if wire.ValidKey(cfg.ID) {
		// Everything the runner logs also goes to NATS, for the API.
		q := newLogRing(logQueueLines)
		logs = &logPublisher{q: q, subject: wire.LogSubject(cfg.DeploymentID, cfg.ID), publish: nc.Publish,
			ensure: func(ctx context.Context) error {
				ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				defer cancel()
				_, err := queue.EnsureLogs(ctx, js, cfg.QueueReplicas)
				return err
			},
			flush: func(d time.Duration) error { return nc.FlushTimeout(d) }}
		log = slog.New(&teeHandler{inner: log.Handler(), q: q})
	} else {
		log.Warn("runner ID is not a valid subject token; its log is not published to NATS", "id", cfg.ID)
	}
	return &Runner{
		logs:      logs,
		cfg:       cfg,
		log:       log.With("runner", cfg.ID, "deployment", cfg.Deployment, "deployment_id", cfg.DeploymentID),
		nc:        nc,
		js:        js,
		host:      host,
		started:   time.Now(),
		phase:     wire.PhaseStarting,
		running:   map[string]context.CancelFunc{},
		cancelled: map[string]time.Time{},
		sinks:     map[string]sinkEntry{},
	}, nil
}

// Run fetches and loads the model, then serves until drain is closed (stop
// taking work, finish what runs, return) or ctx is cancelled (abandon
// everything; JetStream redelivers unacknowledged jobs to another runner).
func (r *Runner) Run(ctx context.Context, drain <-chan struct{}) error {
	if r.logs != nil {
		// Stopped last, so the runner's last words (why it stopped) are
		// published too.
		logCtx, stopLogs := context.WithCancel(context.Background())
		logsDone := make(chan struct{})
		go func() {
			defer close(logsDone)
			r.logs.run(logCtx)
		}()
		defer func() {
			stopLogs()
			<-logsDone
		}()
		restore := captureLlamaLog(&llamaLogSink{stderr: os.Stderr, enabled: enabledByDefault, q: r.logs.q})
		defer restore()
	}
	hbCtx, stopHB := context.WithCancel(context.Background())
	defer stopHB()
	go r.heartbeats(hbCtx)
	r.log.Info("runner starting", "artifact", r.cfg.Artifact.SHA256, "host", r.host, "pid", os.Getpid(),
		"parallel", r.cfg.Engine.Parallel)
	err := r.run(ctx, drain)
	if err != nil && ctx.Err() == nil {
		r.log.Error("runner failed", "err", err)
		// Say why, so the control plane backs off and waiting clients
		// learn what is wrong — and whether it may pass, so that they
		// know to keep waiting.
		r.mu.Lock()
		r.retry = retryable(err)
		r.mu.Unlock()
		r.setPhase(wire.PhaseFailed, err.Error())
	} else {
		r.log.Info("runner stopped")
		r.setPhase(wire.PhaseStopped, "")
	}
	return err
}

// retryable reports whether a failed start may succeed if tried again
// unchanged: the object store was unreachable or failed on its side. Weights
// that are missing or do not match their digest, or a model that llama.cpp
// cannot load, fail the same way every time.
func retryable(err error) bool {
	return errors.Is(err, blob.ErrUnavailable)
}

func (r *Runner) run(ctx context.Context, drain <-chan struct{}) error {
	devs := r.cfg.Engine.Devices
	if devs == nil {
		devs = Devices()
	}
	for _, d := range devs {
		r.log.Info("device", "name", d.Name, "kind", d.Kind, "description", d.Description,
			"total", FormatBytes(d.TotalBytes), "free", FormatBytes(d.FreeBytes))
	}
	r.mu.Lock()
	r.devices = devs
	r.mu.Unlock()

	t0 := time.Now()
	r.mu.Lock()
	r.coldStart.FetchStarted = t0
	r.mu.Unlock()
	r.setPhase(wire.PhaseFetching, "fetching weights")
	path, downloaded, err := r.cfg.Cache.Fetch(ctx, r.cfg.Artifact, func(done, total int64) {
		if total > 0 {
			r.setPhase(wire.PhaseFetching, fmt.Sprintf("fetching weights %d%%", done*100/total))
		}
	})
	if err != nil {
		return err
	}
	r.log.Info("weights ready", "path", path, "downloaded", downloaded, "took", time.Since(t0))
	r.mu.Lock()
	r.coldStart.FetchDone = time.Now()
	if downloaded {
		r.coldStart.FetchedBytes = r.cfg.Artifact.Size
	}
	r.mu.Unlock()

	r.setPhase(wire.PhaseLoading, "loading model")
	t0 = time.Now()
	cfg := r.cfg.Engine
	// cfg.Devices stays as configured (normally nil): LoadEngine reads
	// the GPUs' free memory again, as it is after the fetch.
	cfg.ModelPath = path
	eng, err := LoadEngine(r.log, cfg, nil)
	var fit *FitError
	if errors.As(err, &fit) {
		// Our own estimate, before llama.cpp touched the GPU: the
		// reason is the client's to read, and fails the same way again.
		r.log.Error("the model does not fit the GPUs", "artifact", r.cfg.Artifact.SHA256, "err", err)
		return err
	}
	if err != nil {
		// The error names the cache path, and llama.cpp's reason is only
		// in its own log: clients hear which artifact, operators read why.
		r.log.Error("llama.cpp could not load the model", "artifact", r.cfg.Artifact.SHA256, "err", err)
		return fmt.Errorf("llama.cpp could not load the weights of artifact %s; the runner's log says why", r.cfg.Artifact.SHA256)
	}
	r.engine = eng
	r.mu.Lock()
	r.gpuLayers = eng.GPULayers()
	r.mu.Unlock()
	r.prompt = eng.newPrompter(r.cfg.ChatTemplate, time.Now, r.log)
	r.log.Info("model ready", "took", time.Since(t0), "template", r.prompt.name)
	r.mu.Lock()
	r.coldStart.LoadDone = time.Now()
	r.mu.Unlock()

	engCtx, stopEngine := context.WithCancel(context.Background())
	engDone := make(chan error, 1)
	go func() { engDone <- eng.Run(engCtx) }()
	defer func() {
		stopEngine()
		<-engDone
		eng.Close()
	}()

	sub, err := r.nc.Subscribe(wire.CancelSubject(r.cfg.DeploymentID), r.onCancel)
	if err != nil {
		return fmt.Errorf("subscribing to cancellations: %w", err)
	}
	defer sub.Unsubscribe()
	resends, err := r.nc.Subscribe(wire.ResendSubject(r.cfg.ID), r.onResend)
	if err != nil {
		return fmt.Errorf("subscribing to resend requests: %w", err)
	}
	defer resends.Unsubscribe()
	holdSub, err := r.nc.Subscribe(wire.HoldSubject(r.cfg.ID), r.onHold)
	if err != nil {
		return fmt.Errorf("subscribing to hold questions: %w", err)
	}
	defer holdSub.Unsubscribe()

	cons, err := r.consumer(ctx)
	if err != nil {
		return err
	}
	// Usage records must have somewhere durable to go before the first
	// request finishes.
	if _, err := queue.EnsureUsage(ctx, r.js, r.cfg.QueueReplicas); err != nil {
		return err
	}
	if r.holds, err = queue.EnsureHolds(ctx, r.js, r.cfg.QueueReplicas); err != nil {
		return err
	}
	r.readyAt = time.Now()
	r.mu.Lock()
	r.coldStart.Ready = r.readyAt
	r.mu.Unlock()
	r.setPhase(wire.PhaseReady, "")
	return r.serve(ctx, drain, cons)
}

func (r *Runner) consumer(ctx context.Context) (jetstream.Consumer, error) {
	c, err := r.js.Consumer(ctx, wire.RequestStream(r.cfg.DeploymentID), wire.RequestConsumer)
	if errors.Is(err, jetstream.ErrStreamNotFound) || errors.Is(err, jetstream.ErrConsumerNotFound) {
		// The queue is normally created at deploy time; a runner started
		// by hand may come first, or NATS may have lost it. The runner
		// does not know the deployment's limits, so it creates what is
		// missing and never changes a stream that exists.
		var s jetstream.Stream
		if s, err = queue.Create(ctx, r.js, r.cfg.DeploymentID, r.cfg.QueueReplicas); err == nil {
			c, err = queue.EnsureConsumer(ctx, s)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("opening queue of %s: %w", r.cfg.Deployment, err)
	}
	return c, nil
}

// serve pulls jobs only as fast as slots free up, so other runners of the
// deployment get the rest of the queue.
func (r *Runner) serve(ctx context.Context, drain <-chan struct{}, cons jetstream.Consumer) error {
	slots := make(chan struct{}, r.engine.Parallel())
	var wg sync.WaitGroup
	defer wg.Wait()
	var fails fetchFailures
	for {
		// Wait for one free slot, then take every other free one.
		select {
		case slots <- struct{}{}:
		case <-drain:
			return r.drain(&wg)
		case <-ctx.Done():
			return ctx.Err()
		}
		free := 1
		for free < cap(slots) {
			select {
			case slots <- struct{}{}:
				free++
				continue
			default:
			}
			break
		}
		if r.idleExpired() {
			r.log.Info("idle timeout reached, exiting", "idle_timeout", r.cfg.IdleTimeout)
			for range free {
				<-slots
			}
			return r.drain(&wg)
		}
		// A long poll: it returns as soon as jobs arrive, or empty after
		// the wait so drain and idle checks run.
		fetchCtx, cancelFetch := context.WithTimeout(ctx, 500*time.Millisecond)
		batch, err := cons.Fetch(free, jetstream.FetchContext(fetchCtx))
		if err != nil {
			cancelFetch()
			for range free {
				<-slots
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if r.fetchFailed(ctx, &fails, err) {
				return r.queueGone(&wg)
			}
			continue
		}
		got := 0
		for msg := range batch.Messages() {
			got++
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { <-slots }()
				r.handle(ctx, msg)
			}()
		}
		cancelFetch()
		for range free - got {
			<-slots
		}
		if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) && !errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
			if r.fetchFailed(ctx, &fails, err) {
				return r.queueGone(&wg)
			}
		} else {
			fails = fetchFailures{}
		}
	}
}

func (r *Runner) drain(wg *sync.WaitGroup) error {
	r.setPhase(wire.PhaseDraining, "")
	r.log.Info("draining: finishing in-flight requests")
	wg.Wait()
	return nil
}

func (r *Runner) idleExpired() bool {
	if r.cfg.IdleTimeout <= 0 {
		return false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	last := r.lastRequest
	if last.IsZero() {
		last = r.readyAt
	}
	return r.inFlight == 0 && time.Since(last) >= r.cfg.IdleTimeout
}
