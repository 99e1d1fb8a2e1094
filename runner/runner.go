// Package runner serves one deployment's model: it fetches the weights
// into a local cache, loads them with llama.cpp, takes jobs from the
// deployment's JetStream queue only as fast as it has free slots, runs them
// with continuous batching and streams tokens back over NATS. It listens on
// no port. It stops taking work and exits when told to drain (SIGTERM) and,
// if configured, after an idle timeout.
package runner

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
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
	// ChatTemplate overrides the template family detected from the GGUF.
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

	engine   *Engine
	template string
	stops    []string
	readyAt  time.Time
	started  time.Time

	mu          sync.Mutex
	phase       wire.Phase
	detail      string
	retry       bool // with PhaseFailed: the failure may pass (Heartbeat.Retry)
	inFlight    int
	lastRequest time.Time
	coldStart   wire.ColdStart
	running     map[string]context.CancelFunc // job ID → cancel
	cancelled   map[string]time.Time          // job IDs cancelled before they ran → until
	swept       time.Time                     // when expired cancelled IDs were last dropped
	// sinks are the sync jobs' reply sinks by job ID, for resend requests:
	// running (zero time), or ended and kept until the time given.
	sinks      map[string]sinkEntry
	sinksSwept time.Time

	// holds records which runner holds each redelivered job, and gate
	// runs a suspect one alone (redelivery.go).
	holds jetstream.KeyValue
	gate  gate
}

// sinkEntry is a sync job's reply sink and, once the job ended, until when
// it can still resend.
type sinkEntry struct {
	sink  *replySink
	until time.Time
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
	return &Runner{
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
	hbCtx, stopHB := context.WithCancel(context.Background())
	defer stopHB()
	go r.heartbeats(hbCtx)
	err := r.run(ctx, drain)
	if err != nil && ctx.Err() == nil {
		// Say why, so the control plane backs off and waiting clients
		// learn what is wrong — and whether it may pass, so that they
		// know to keep waiting.
		r.mu.Lock()
		r.retry = retryable(err)
		r.mu.Unlock()
		r.setPhase(wire.PhaseFailed, err.Error())
	} else {
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
	cfg.ModelPath = path
	eng, err := LoadEngine(r.log, cfg, nil)
	if err != nil {
		// The error names the cache path, and llama.cpp's reason is only
		// in its own log: clients hear which artifact, operators read why.
		r.log.Error("llama.cpp could not load the model", "artifact", r.cfg.Artifact.SHA256, "err", err)
		return fmt.Errorf("llama.cpp could not load the weights of artifact %s; the runner's log says why", r.cfg.Artifact.SHA256)
	}
	r.engine = eng
	r.template = r.cfg.ChatTemplate
	if r.template == "" {
		r.template = DetectTemplate(eng.Info().ChatTemplate)
	}
	r.stops = templateStops(r.template)
	r.log.Info("model ready", "took", time.Since(t0), "template", r.template)
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

// handle runs one job from the queue to its acknowledgement.
func (r *Runner) handle(ctx context.Context, msg jetstream.Msg) {
	var job wire.Job
	if err := json.Unmarshal(msg.Data(), &job); err != nil {
		r.log.Error("dropping undecodable job", "err", err)
		msg.Term()
		return
	}
	enqueued := time.Now()
	delivered := uint64(1)
	if md, err := msg.Metadata(); err == nil {
		enqueued, delivered = md.Timestamp, md.NumDelivered
	}
	log := r.log.With("request", job.ID)
	if r.takeCancelled(job.ID, time.Now()) {
		log.Info("skipping job cancelled while queued")
		msg.Ack()
		return
	}
	if !job.Deadline.IsZero() && time.Now().After(job.Deadline) {
		// The activator has answered 504 already; nobody waits.
		log.Info("skipping job past its queue deadline")
		if job.Async {
			// Nobody waits, but the job's record does.
			werr := &wire.Error{Status: 504, Code: "queue_timeout",
				Message: fmt.Sprintf("the job waited in the queue of %s past its deadline without starting", job.Deployment)}
			if delivered > 1 {
				// It did start: the runners it reached stopped first.
				werr = &wire.Error{Status: 502, Code: "runner_lost", Message: fmt.Sprintf(
					"the job was handed to a runner of %s %d times and none finished it before its deadline; submit it again", job.Deployment, delivered-1)}
			}
			r.publishAsync(ctx, job, &wire.Event{Type: wire.EventError, Error: werr})
		}
		msg.Ack()
		return
	}

	jobCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	r.begin(job.ID, cancel)
	defer r.end(job.ID)

	replyTo := job.ReplyTo
	if !job.Async {
		replyTo = wire.RunnerReplySubject(job.ReplyTo, r.cfg.ID)
	}
	if delivered > 1 && !job.Async {
		// Another runner had it. If that one was only frozen and is
		// back, or the client is gone, the job is not ours to run. (No
		// responders is no proof here: right after a NATS reconnect the
		// activator may not have resubscribed yet. watchClient decides.)
		if answer := r.ping(ctx, replyTo); answer == wire.PingSuperseded || answer == wire.PingGone {
			log.Info("skipping redelivered job", "answer", answer)
			if answer == wire.PingGone {
				msg.Ack()
			}
			return
		}
	}
	sink := newReplySink(r.nc, replyTo)
	sink.runner = r.cfg.ID
	sink.async = job.Async
	if !job.Async {
		r.keepSink(job.ID, sink)
		defer r.dropSink(job.ID, sink)
	}
	adm, holdRev := r.admitJob(ctx, job.ID, delivered, log)
	handedBack := false // left unacknowledged, to be delivered again
	defer func() { r.releaseHold(job.ID, holdRev, adm, !handedBack) }()
	if adm.refuse {
		log.Error("refusing a job that stopped the runners holding it", "deaths", adm.deaths, "deliveries", delivered)
		werr := errCrashedRunner(adm)
		if job.Async {
			r.publishAsync(ctx, job, &wire.Event{Type: wire.EventError, Error: werr})
		} else {
			sink.sendLast(&wire.Event{Type: wire.EventError, Error: werr})
		}
		msg.Ack()
		r.recordUsage(job, enqueued, time.Now(), sink, wire.Usage{}, "error", "")
		return
	}
	if adm.alone {
		log.Warn("running a redelivered job alone: the runner that last held it died", "deaths", adm.deaths)
	}
	if err := r.gate.enter(jobCtx, adm.alone, func() { msg.InProgress() }); err != nil {
		// Stopped while waiting for its turn.
		switch {
		case job.Async:
			msg.Nak() // this runner is being stopped: another runs it
			handedBack = true
		case ctx.Err() == nil:
			msg.Ack() // its client went away
		default:
			handedBack = true // this runner is being stopped
		}
		return
	}
	defer r.gate.leave(adm.alone)
	if adm.alone {
		holdRev = r.markAlone(job.ID, adm, holdRev)
	}

	req := Request{MaxTokens: job.MaxTokens, Stop: job.Stop, Sampling: job.Sampling}
	if job.Kind == wire.KindChat {
		req.Parts = RenderChat(r.template, job.Messages)
		req.Stop = append(req.Stop, r.stops...)
	} else {
		req.Prompt = job.Prompt
	}
	var superseded atomic.Bool
	if !job.Async {
		go r.watchClient(jobCtx, replyTo, cancel, &superseded, log)
	}
	start := time.Now()
	promptTokens, err := r.engine.Submit(jobCtx, req, sink)
	if err != nil {
		werr := &wire.Error{Status: 500, Code: "internal_error", Message: err.Error()}
		switch {
		case errors.Is(err, ErrContextLength):
			// The parameter the client sent the text in.
			param := "messages"
			if job.Kind == wire.KindCompletion {
				param = "prompt"
			}
			werr = &wire.Error{Status: 400, Code: "context_length_exceeded", Param: param, Message: err.Error()}
		case errors.Is(err, ErrBadSchema):
			werr = &wire.Error{Status: 400, Code: "invalid_schema", Param: "response_format", Message: err.Error()}
		}
		if job.Async {
			r.publishAsync(ctx, job, &wire.Event{Type: wire.EventError, Error: werr})
		} else {
			sink.sendLast(&wire.Event{Type: wire.EventError, Error: werr})
		}
		msg.Ack()
		r.recordUsage(job, enqueued, start, sink, wire.Usage{PromptTokens: promptTokens}, "error", "")
		return
	}

	// Keep the job ours while it generates: only a dead runner's jobs are
	// redelivered.
	tick := time.NewTicker(queue.AckWait / 3)
	defer tick.Stop()
	for done := false; !done; {
		select {
		case <-sink.done:
			done = true
		case <-tick.C:
			msg.InProgress()
		}
	}
	if job.Async {
		if sink.reason == "cancelled" {
			// Nobody cancels an async job: this runner is being stopped.
			// Hand the job back so another runner runs it.
			msg.Nak()
			handedBack = true
			return
		}
		// Stored before the job is acknowledged: if this runner dies
		// first, the job runs again elsewhere.
		r.publishAsync(ctx, job, sink.final())
	}
	if superseded.Load() {
		// The job is another runner's now: it acknowledges and bills it.
		handedBack = true
		return
	}
	if err := msg.Ack(); err != nil {
		log.Warn("acknowledging job", "err", err)
	}
	status := "ok"
	switch {
	case sink.err != nil:
		status = "error"
		log.Error("generation failed", "err", sink.err)
	case sink.reason == "cancelled":
		status = "cancelled"
	}
	r.recordUsage(job, enqueued, start, sink, sink.usage, status, sink.reason)
}

// watchClient cancels a streaming job nobody waits for any more. A client
// that hangs up is announced on the cancel subject, but an activator that
// crashes or restarts announces nothing, and the runner would generate up
// to max_tokens for nobody while queued jobs wait for the slot. So every
// ClientCheck the runner pings the job's reply subject (see
// wire.PingHeader). It gives up on the job after two answers in a row that
// nobody is there: for a moment after a NATS reconnect the runner may be
// subscribed again while the activator is not yet. A timeout is not an
// answer: a busy activator is not a gone one. "Superseded" stops the job
// at once and sets superseded.
func (r *Runner) watchClient(ctx context.Context, subject string, cancel context.CancelFunc, superseded *atomic.Bool, log *slog.Logger) {
	tick := time.NewTicker(r.cfg.ClientCheck)
	defer tick.Stop()
	for gone := 0; gone < 2; {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		switch r.ping(ctx, subject) {
		case wire.PingSuperseded:
			log.Info("stopping job: another runner owns it now")
			superseded.Store(true)
			cancel()
			return
		case wire.PingGone, noResponders:
			gone++
		case wire.PingAlive:
			gone = 0
		}
	}
	log.Info("stopping job: nobody waits for it any more (its activator is gone)")
	cancel()
}

// noResponders is ping's answer when no activator subscribes to the
// subject.
const noResponders = "no responders"

// ping asks a job's reply subject who waits for it: one of the wire.Ping
// answers, noResponders, or "" for no answer.
func (r *Runner) ping(ctx context.Context, subject string) string {
	msg := nats.NewMsg(subject)
	msg.Header.Set(wire.PingHeader, "1")
	pctx, cancel := context.WithTimeout(ctx, r.cfg.ClientCheck)
	defer cancel()
	reply, err := r.nc.RequestMsgWithContext(pctx, msg)
	switch {
	case errors.Is(err, nats.ErrNoResponders):
		return noResponders
	case err != nil:
		return ""
	}
	return string(reply.Data)
}

// publishAsync stores an async job's last event in the async event stream,
// retrying through a NATS outage: the job's record depends on it.
func (r *Runner) publishAsync(ctx context.Context, job wire.Job, ev *wire.Event) {
	data, err := wire.AppendEvent(nil, ev)
	if err != nil {
		r.log.Error("encoding async result", "request", job.ID, "err", err)
		return
	}
	if _, err := queue.PublishRetry(context.WithoutCancel(ctx), r.js, job.ReplyTo, job.ID+".end", data, durableRetry); err != nil {
		r.log.Error("publishing async result", "request", job.ID, "err", err)
	}
}

// durableRetry is how long a runner keeps trying to store what must not be
// lost (usage records, async results) through a NATS outage: well inside
// the duplicate windows of their streams, so the copies count once.
const durableRetry = 2 * time.Minute

func (r *Runner) recordUsage(job wire.Job, enqueued, start time.Time, sink *replySink, u wire.Usage, status, reason string) {
	now := time.Now()
	rec := wire.UsageRecord{
		RequestID:        job.ID,
		Deployment:       job.Deployment,
		DeploymentID:     r.cfg.DeploymentID,
		TenantID:         job.TenantID,
		KeyID:            job.KeyID,
		RunnerID:         r.cfg.ID,
		PromptTokens:     u.PromptTokens,
		CompletionTokens: u.CompletionTokens,
		QueueWaitMS:      ms(start.Sub(enqueued)),
		DurationMS:       ms(now.Sub(enqueued)),
		ColdStart:        enqueued.Before(r.readyAt),
		Status:           status,
		FinishReason:     reason,
		EnqueuedAt:       enqueued,
		FinishedAt:       now,
		Prices:           job.Prices,
	}
	if !sink.first.IsZero() {
		rec.TTFTMS = ms(sink.first.Sub(enqueued))
		r.mu.Lock()
		if r.coldStart.FirstToken.IsZero() {
			r.coldStart.FirstToken = sink.first
		}
		r.mu.Unlock()
	}
	data, err := json.Marshal(rec)
	if err != nil {
		r.log.Error("encoding usage record", "err", err)
		return
	}
	// The request ID is the message ID: a redelivered job, or a record
	// published again through an outage, is billed once.
	if _, err := queue.PublishRetry(context.Background(), r.js, wire.UsageSubject(r.cfg.DeploymentID), job.ID, data, durableRetry); err != nil {
		r.log.Error("publishing usage record", "request", job.ID, "err", err)
	}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func (r *Runner) begin(id string, cancel context.CancelFunc) {
	r.mu.Lock()
	r.inFlight++
	r.lastRequest = time.Now()
	r.running[id] = cancel
	r.mu.Unlock()
}

func (r *Runner) end(id string) {
	r.mu.Lock()
	r.inFlight--
	r.lastRequest = time.Now()
	delete(r.running, id)
	r.mu.Unlock()
}

// rememberCancelled is how long a runner remembers a job cancelled before
// it ran: longer than any job waits in a queue.
const rememberCancelled = time.Hour

// cancelledSweep is how often at most expired cancelled IDs are dropped.
// A sweep scans every remembered ID, so sweeping on every cancel would
// make a mass disconnect quadratic; once per interval costs each cancel
// O(1) amortized.
const cancelledSweep = time.Minute

// resendKeep is how long a sync job's events can still be resent after
// the job ended: its last event is acknowledged on arrival, and the
// activator may find the gap before it only then. What it keeps is the
// runner's output of the last resendKeep, bounded by its token rate (a
// few MB at ~10,000 tokens/s).
const resendKeep = 30 * time.Second

func (r *Runner) keepSink(id string, s *replySink) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.sinks[id] = sinkEntry{sink: s}
}

// dropSink starts the ended job's resendKeep (unless the job runs again
// here, redelivered, with a sink of its own), and drops the sinks whose
// time is up (at most once per resendKeep, so each job pays O(1)).
func (r *Runner) dropSink(id string, s *replySink) {
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	if e, ok := r.sinks[id]; ok && e.sink == s {
		e.until = now.Add(resendKeep)
		r.sinks[id] = e
	}
	if now.Sub(r.sinksSwept) < resendKeep {
		return
	}
	r.sinksSwept = now
	for id, e := range r.sinks {
		if !e.until.IsZero() && now.After(e.until) {
			delete(r.sinks, id)
		}
	}
}

// onResend publishes a sync job's events again from the sequence number
// asked for (see wire.ResendSubject).
func (r *Runner) onResend(m *nats.Msg) {
	id, from, err := wire.ParseResend(m.Data)
	if err != nil {
		r.log.Warn("bad resend request", "err", err)
		m.Respond([]byte(wire.ResendGone))
		return
	}
	r.mu.Lock()
	e, ok := r.sinks[id]
	r.mu.Unlock()
	if !ok || (!e.until.IsZero() && time.Now().After(e.until)) || !e.sink.resend(from) {
		m.Respond([]byte(wire.ResendGone))
		return
	}
	r.log.Info("resent events lost on the way", "request", id, "from", from)
	m.Respond([]byte(wire.ResendOK))
}

// onCancel stops a running job, or remembers the ID so the job is skipped
// if this runner takes it from the queue later.
func (r *Runner) onCancel(m *nats.Msg) { r.cancel(string(m.Data), time.Now()) }

func (r *Runner) cancel(id string, now time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if cancel, ok := r.running[id]; ok {
		cancel()
		return
	}
	if now.Sub(r.swept) >= cancelledSweep {
		for k, until := range r.cancelled {
			if now.After(until) {
				delete(r.cancelled, k)
			}
		}
		r.swept = now
	}
	r.cancelled[id] = now.Add(rememberCancelled)
}

// takeCancelled reports whether job id was cancelled (within
// rememberCancelled) and forgets it.
func (r *Runner) takeCancelled(id string, now time.Time) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	until, ok := r.cancelled[id]
	delete(r.cancelled, id)
	return ok && !now.After(until) // an expired ID may wait for its sweep
}

func (r *Runner) setPhase(p wire.Phase, detail string) {
	r.mu.Lock()
	changed := r.phase != p || r.detail != detail
	r.phase, r.detail = p, detail
	r.mu.Unlock()
	if changed {
		r.publishHeartbeat()
	}
}

func (r *Runner) heartbeats(ctx context.Context) {
	t := time.NewTicker(r.cfg.Heartbeat)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			r.publishHeartbeat()
		case <-ctx.Done():
			return
		}
	}
}

func (r *Runner) publishHeartbeat() {
	r.mu.Lock()
	hb := wire.Heartbeat{
		RunnerID:     r.cfg.ID,
		Deployment:   r.cfg.Deployment,
		DeploymentID: r.cfg.DeploymentID,
		Artifact:     r.cfg.Artifact.SHA256,
		Host:         r.host,
		PID:          os.Getpid(),
		Phase:        r.phase,
		Detail:       r.detail,
		Retry:        r.retry,
		Slots:        r.cfg.Engine.Parallel,
		InFlight:     r.inFlight,
		LastRequest:  r.lastRequest,
		StartedAt:    r.started,
		Sent:         time.Now(),
		ColdStart:    r.coldStart,
	}
	r.mu.Unlock()
	data, err := json.Marshal(hb)
	if err != nil {
		return
	}
	if err := r.nc.Publish(wire.HeartbeatSubject(r.cfg.DeploymentID, r.cfg.ID), data); err != nil {
		r.log.Debug("publishing heartbeat", "err", err)
	}
	if hb.Phase == wire.PhaseStopped || hb.Phase == wire.PhaseFailed {
		r.nc.Flush()
	}
}

// replySink streams one job's output to the activator that holds its
// client. The engine calls Deliver and Finish from its decode loop;
// nats.Conn.Publish only appends to the connection's buffer, so the loop
// never waits on the network.
type replySink struct {
	runner  string
	nc      *nats.Conn
	subject string
	buf     []byte // a delta event being built: header, then text not yet sent
	sentAt  time.Time
	seq     uint32 // the next event's sequence number

	first  time.Time
	reason string
	usage  wire.Usage
	err    error
	done   chan struct{}

	// log holds every event sent, in order (event i starts at offs[i]), so
	// that events lost on the way can be sent again (resend, on a NATS
	// goroutine). mu guards it and seq. Events are sent at most every
	// coalesce interval, so logging costs no per-token work.
	mu   sync.Mutex
	log  []byte
	offs []int

	// async jobs collect their text and send it once, after Finish.
	async bool
	text  []byte
}

func newReplySink(nc *nats.Conn, subject string) *replySink {
	return &replySink{nc: nc, subject: subject, buf: make([]byte, 0, 256), done: make(chan struct{})}
}

// Start tells the activator the job was admitted; it always precedes the
// first delta.
func (s *replySink) Start(promptTokens int) {
	s.send(&wire.Event{Type: wire.EventStart, Runner: s.runner, Usage: &wire.Usage{PromptTokens: promptTokens}})
}

// coalesce is the longest a token waits to be sent with the ones after it.
// A fast model makes a token every ~0.15 ms; one message and one client
// flush per token would then cost more than decoding it. 2 ms is far below
// what a reader notices and still streams smoothly.
const coalesce = 2 * time.Millisecond

// Deliver sends the first token at once (time to first token is what
// clients wait on) and later ones at most every coalesce interval. Text
// held back is sent by the next Deliver or by Finish, so it waits at most
// one decode step.
func (s *replySink) Deliver(text []byte) {
	now := time.Now()
	if s.async {
		if s.first.IsZero() {
			s.first = now
		}
		s.text = append(s.text, text...)
		return
	}
	if len(s.buf) == 0 {
		s.buf = wire.AppendDelta(s.buf, 0, nil) // numbered when sent
	}
	s.buf = append(s.buf, text...)
	if s.first.IsZero() {
		s.first = now
	} else if now.Sub(s.sentAt) < coalesce {
		return
	}
	s.flush(now)
}

func (s *replySink) flush(now time.Time) {
	if len(s.buf) > wire.EventHeaderLen {
		s.record(s.buf)
		s.nc.Publish(s.subject, s.buf)
		s.sentAt = now
	}
	s.buf = s.buf[:0]
}

// record numbers an encoded event as the sink's next and logs it.
func (s *replySink) record(event []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	wire.SetSeq(event, s.seq)
	s.seq++
	s.offs = append(s.offs, len(s.log))
	s.log = append(s.log, event...)
}

// resend publishes the events from sequence number from on again; false
// if from is past the last event sent. A last event is published too, as
// a plain message: its first copy was acknowledged or is still repeated.
func (s *replySink) resend(from uint32) bool {
	// The log only grows, and appending never writes over bytes already
	// in it: what the slices hold now stays valid without the lock, which
	// the decode loop needs for its next event.
	s.mu.Lock()
	log, offs := s.log, s.offs
	s.mu.Unlock()
	if int64(from) > int64(len(offs)) {
		return false
	}
	for i := int(from); i < len(offs); i++ {
		end := len(log)
		if i+1 < len(offs) {
			end = offs[i+1]
		}
		s.nc.Publish(s.subject, log[offs[i]:end])
	}
	return true
}

func (s *replySink) Finish(reason string, u wire.Usage, err error) {
	s.flush(time.Now())
	s.reason, s.usage, s.err = reason, u, err
	var last *wire.Event
	switch {
	case s.async:
		// The runner publishes final() through JetStream, off the decode
		// loop.
	case err != nil:
		last = &wire.Event{Type: wire.EventError, Error: &wire.Error{Status: 500, Code: "internal_error", Message: err.Error()}}
	case reason != "cancelled":
		last = &wire.Event{Type: wire.EventDone, FinishReason: reason, Usage: &u}
	}
	if last == nil {
		close(s.done)
		return
	}
	// Off the decode loop: it waits for the activator.
	go func() {
		s.sendLast(last)
		close(s.done)
	}()
}

// final is an async job's last event: the whole text, or the error.
func (s *replySink) final() *wire.Event {
	if s.err != nil {
		return &wire.Event{Type: wire.EventError, Error: &wire.Error{Status: 500, Code: "internal_error", Message: s.err.Error()}}
	}
	u := s.usage
	return &wire.Event{Type: wire.EventDone, FinishReason: s.reason, Usage: &u, Text: string(s.text)}
}

func (s *replySink) send(ev *wire.Event) {
	if data, err := s.encode(ev); err == nil {
		s.nc.Publish(s.subject, data)
	}
}

// encode encodes ev as the sink's next event, numbered and logged.
func (s *replySink) encode(ev *wire.Event) ([]byte, error) {
	data, err := wire.AppendEvent(nil, ev)
	if err != nil {
		return nil, err
	}
	s.record(data)
	return data, nil
}

// How a job's last event is repeated until the activator acknowledges it.
const (
	lastAckWait = 2 * time.Second
	lastEvery   = 250 * time.Millisecond
	// lastFor bounds the repeats through a NATS outage.
	lastFor = time.Minute
	// lastNoResponders is how many "no responders" in a row mean that the
	// activator is gone: for a moment after a reconnect it may not have
	// subscribed again yet.
	lastNoResponders = 8
)

// sendLast sends a job's last event (done or error) and repeats it until
// the activator acknowledges it. Deltas lost across a NATS reconnect show
// as a gap in the sequence numbers once a later event arrives; a lost last
// event would leave the client waiting with nothing to arrive after it.
// The activator drops repeats by their sequence number.
func (s *replySink) sendLast(ev *wire.Event) {
	data, err := s.encode(ev)
	if err != nil {
		return
	}
	deadline := time.Now().Add(lastFor)
	for noResponders := 0; ; {
		_, err := s.nc.Request(s.subject, data, lastAckWait)
		if err == nil {
			return
		}
		if errors.Is(err, nats.ErrNoResponders) {
			if noResponders++; noResponders >= lastNoResponders {
				return
			}
			time.Sleep(lastEvery) // it may be subscribing again
		} else {
			noResponders = 0
		}
		// Through an outage, one copy waits in the reconnect buffer.
		if !queue.WaitConnected(context.Background(), s.nc, deadline) {
			return
		}
	}
}
